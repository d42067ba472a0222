"""Which ops can compute in int8, and why an op stayed float: the words an error or a report needs.

Measured with ai-edge-quantizer 0.10 and ai-edge-litert 2.3 (each op alone between two Dense layers, quantized by
edgemp, then forced onto int8 tensors in LiteRT): see docs/families.md.
"""

from __future__ import annotations

import functools

# LiteRT has no int8 kernel for these (the quantizer leaves them float, and forcing them fails to prepare).
NO_INT8_KERNEL = {
    "POW": "LiteRT's POW has float/int32 kernels only (an integer exponent can be written as MULs)",
    "SIN": "LiteRT has no int8 SIN (precompute rotary tables as constants)",
    "COS": "LiteRT has no int8 COS (precompute rotary tables as constants)",
    "CUMSUM": "LiteRT's CUMSUM has int32/int64/float kernels only",
    "SQUARE": "LiteRT has no int8 SQUARE",
    "WHILE": "a loop (recurrent layer) the quantizer cannot calibrate",
}
# Detection post-processing: float by design on every delegate; keep it out of the model or accept it as float.
POSTPROCESSING = {
    "NON_MAX_SUPPRESSION_V4": "non-maximum suppression", "NON_MAX_SUPPRESSION_V5": "non-maximum suppression",
    "TOPK_V2": "top-k", "WHERE": "where/boolean mask (data-dependent size)",
}


@functools.cache
def quantizable_ops() -> frozenset[str]:
    """Op names the AI Edge Quantizer can quantize (its TFLOperationName), in builtin-op spelling."""
    from ai_edge_quantizer import qtyping

    names = {m.value for m in qtyping.TFLOperationName} - {"*", "INPUT", "OUTPUT", "CUSTOM_OP", "STABLEHLO_COMPOSITE"}
    return frozenset((names | {"TRANSPOSE_CONV"}) - {"CONV_2D_TRANSPOSE"})


def why_float(op: str) -> str:
    """Why `op` computes in float in an int8 artifact."""
    if op in POSTPROCESSING:
        return f"{POSTPROCESSING[op]}: post-processing, float in LiteRT"
    if op in NO_INT8_KERNEL:
        return NO_INT8_KERNEL[op]
    if op not in quantizable_ops():
        return "the AI Edge Quantizer 0.10 has no int8 support for this op"
    return "the quantizer left it in float"
