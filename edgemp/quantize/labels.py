"""The message for an artifact that is not what its label says: which op, in which of the user's layers, why it
stayed float, and the honest alternatives."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from edgemp.config import Precision
from edgemp.quantize.support import why_float


def label_error(prec: Precision, broken: Sequence[Any], art_census: Any, float_census: Any, source: Any) -> str:
    from edgemp.mixed.graph import LayerGraph

    graph = LayerGraph(float_census, source.layers(), aliases=source.scope_aliases())
    floats = [o for o in art_census.ops if o.compute in ("float32", "float16", "hybrid-int8") and o.outputs]
    head = f"the {prec.value} artifact is not what its label says"
    if not floats:
        return (head + ": " + "; ".join(f"{c.name}: {c.detail}" for c in broken) + ". Nothing was written.")
    named = []
    for o in floats[:8]:
        layer = graph.by_tensor.get(o.outputs[0].name)
        where = f"layer {layer.name!r}" if layer is not None and "#" not in layer.name else _place(o.outputs[0].name)
        named.append(f"{o.op} (op #{o.index}) in {where} ({why_float(o.op)})")
    more = f" and {len(floats) - 8} more" if len(floats) > 8 else ""
    return (f"{head}: {len(floats)} op(s) still compute in float: " + "; ".join(named) + more + ". Nothing was written. "
            "Options: precision 'mixed' keeps exactly these ops in float (int8 everywhere else, with QUANTIZE/DEQUANTIZE "
            "around them, and says so in its report); 'dynamic-int8' or 'fp16' keep all activations in float; or "
            "replace those layers with ones that have int8 kernels.")


def _place(tensor: str) -> str:
    """Where an op no layer owns sits: litert-torch scopes end with `pkg.Class_attr` (the module whose forward()
    computes it); other names are shown as they are."""
    last = tensor.split(";")[0].split("/")[-1].rsplit(".", 1)[-1]
    if "_" in last and last[:1].isupper():
        return f"the forward() of {last.split('_', 1)[0]}"
    return f"tensor {tensor[:80]!r}"
