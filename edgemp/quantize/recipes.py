"""Precisions as named AI Edge Quantizer recipes (JSON-able lists of rules; later rules override earlier ones).

The mixed-precision search (later) produces recipes too; it never patches the converter.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from edgemp.config import IODType

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


def recipe_for(precision: Any, io_dtype: IODType = IODType.QUANTIZED, float_census: Any = None) -> Recipe | None:
    """The recipe the precision's registry entry names (edgemp.precisions), or None: the float model is the artifact.
    `float_census`: the census of the float model the recipe is for (some recipes adapt to its weights)."""
    from edgemp.precisions import precision_spec

    return precision_spec(precision).recipe(io_dtype, float_census)


def no_recipe(_: IODType, __: Any = None) -> None:
    return None


def fp16_recipe(_: IODType, __: Any = None) -> Recipe:
    return [_rule({"weight_tensor_config": _weights(16, dtype="FLOAT"), "compute_precision": "FLOAT",
                   "explicit_dequantize": True, "skip_checks": False, "min_weight_elements": 0},
                  algorithm="float_casting")]


DYNAMIC_MIN_WEIGHTS = 1024  # as the TF converter: smaller weights stay float (hybrid kernels would cost more than they save)


def dynamic_int8_recipe(_: IODType, float_census: Any = None) -> Recipe:
    """int8 weights with hybrid kernels for weights of at least DYNAMIC_MIN_WEIGHTS elements: the TF converter's rule.
    With every weight int8, XNNPACK could not take the hybrid depthwise convs (3x slower than the TF converter's
    artifact on MobileNetV2, and 11 dB less SQNR: benchmarks/results/zoo.md). A model with no weight that large
    gets every weight int8 (else "dynamic-int8" would be a float model under another name)."""
    return [_rule({"weight_tensor_config": _weights(8), "compute_precision": "INTEGER",
                   "explicit_dequantize": False, "skip_checks": False,
                   "min_weight_elements": dynamic_threshold(float_census)})]


def dynamic_threshold(float_census: Any) -> int:
    """DYNAMIC_MIN_WEIGHTS, or 0 when no weight of the model reaches it (unknown model: DYNAMIC_MIN_WEIGHTS)."""
    if float_census is None:
        return DYNAMIC_MIN_WEIGHTS
    largest = max((int(np.prod(w.shape)) for _, w in float_census.weights()), default=0)
    return DYNAMIC_MIN_WEIGHTS if largest >= DYNAMIC_MIN_WEIGHTS else 0


def static_recipe(activation_bits: int) -> Callable[..., Recipe]:
    """Static quantization everywhere; float32 I/O kept on request."""

    def recipe(io_dtype: IODType, _: Any = None) -> Recipe:
        rules = [static_rule(activation_bits)]
        if io_dtype is IODType.FLOAT:
            rules += [float_rule(operation="INPUT"), float_rule(operation="OUTPUT")]
        return rules

    return recipe
