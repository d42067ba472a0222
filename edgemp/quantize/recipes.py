"""Precisions as named AI Edge Quantizer recipes (JSON-able lists of rules; later rules override earlier ones).

The mixed-precision search (later) produces recipes too; it never patches the converter.
"""

from __future__ import annotations

from typing import Any

from edgemp.config import IODType, Precision

Recipe = list[dict[str, Any]]

_MINMAX = "min_max_uniform_quantize"


def _weights(num_bits: int, dtype: str = "INT", granularity: str = "CHANNELWISE") -> dict[str, Any]:
    return {"num_bits": num_bits, "symmetric": True, "granularity": granularity, "dtype": dtype, "block_size": 0}


def _rule(op_config: dict[str, Any], regex: str = ".*", operation: str = "*", algorithm: str = _MINMAX) -> dict[str, Any]:
    return {"regex": regex, "operation": operation, "algorithm_key": algorithm, "op_config": op_config}


def static_rule(activation_bits: int, regex: str = ".*", operation: str = "*") -> dict[str, Any]:
    """Static quantization: int8 per-channel weights, int8 (asymmetric) or int16 (symmetric) activations."""
    return _rule(
        {
            "activation_tensor_config": {
                "num_bits": activation_bits,
                "symmetric": activation_bits == 16,  # int16x8 kernels require zero-point 0
                "granularity": "TENSORWISE",
                "dtype": "INT",
                "block_size": 0,
            },
            "weight_tensor_config": _weights(8),
            "compute_precision": "INTEGER",
            "explicit_dequantize": False,
            "skip_checks": False,
            "min_weight_elements": 0,
        },
        regex,
        operation,
    )


def float_rule(regex: str = ".*", operation: str = "*") -> dict[str, Any]:
    """Keep the matched ops (or graph INPUT/OUTPUT) in float32."""
    return _rule({"compute_precision": "FLOAT", "explicit_dequantize": False, "skip_checks": False,
                  "min_weight_elements": 0}, regex, operation, "no_quantize")


def recipe_for(precision: Precision, io_dtype: IODType = IODType.QUANTIZED) -> Recipe | None:
    """The recipe for a precision, or None for fp32 (the float model is the artifact)."""
    if precision is Precision.FP32:
        return None
    if precision is Precision.FP16:
        return [_rule({"weight_tensor_config": _weights(16, dtype="FLOAT"), "compute_precision": "FLOAT",
                       "explicit_dequantize": True, "skip_checks": False, "min_weight_elements": 0},
                      algorithm="float_casting")]
    if precision is Precision.DYNAMIC_INT8:
        return [_rule({"weight_tensor_config": _weights(8), "compute_precision": "INTEGER",
                       "explicit_dequantize": False, "skip_checks": False, "min_weight_elements": 0})]
    bits = 8 if precision is Precision.INT8 else 16
    rules = [static_rule(bits)]
    if io_dtype is IODType.FLOAT:
        rules += [float_rule(operation="INPUT"), float_rule(operation="OUTPUT")]
    return rules
