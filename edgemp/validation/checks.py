"""Is the label true? Precision checks over the op census, run on every artifact before it is written."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from edgemp.targets.tflite.census import Census
from edgemp.config import IODType


@dataclasses.dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def label_checks(c: Census, precision: Any, io_dtype: IODType) -> list[Check]:
    """The checks the precision's registry entry names (edgemp.precisions), after the one every artifact needs."""
    from edgemp.precisions import precision_spec

    return [_no_variables(c), *precision_spec(precision).checks(c, io_dtype)]


def integer_checks(act: str) -> Callable[[Census, IODType], list[Check]]:
    """int8 / int16x8: no op computes in float, activations and I/O of the precision, per-channel int8 weights."""

    def checks(c: Census, io_dtype: IODType) -> list[Check]:
        bad = c.float_compute_ops(allow_io_boundaries=io_dtype is IODType.FLOAT)
        wrong_act = [o for o in c.ops if o.compute in ("int8", "int16") and o.compute != act and o.op != "QUANTIZE"]
        io_types = {s.dtype for s in (*c.inputs, *c.outputs)}
        want = {"float32"} if io_dtype is IODType.FLOAT else {act}
        return [
            Check("fully_integer", not bad, f"every op computes in integers ({c.compute_counts})" if not bad else
                  f"{len(bad)} op(s) still compute in float: " + "; ".join(o.describe() for o in bad[:8])),
            Check(f"{act}_activations", not wrong_act, f"activations are {act}" if not wrong_act else
                  "ops with other activation types: " + "; ".join(o.describe() for o in wrong_act[:8])),
            Check("io_dtype", io_types <= want, f"I/O dtypes {sorted(io_types)}, expected {sorted(want)}"),
            _weights(c, {"int8"}, per_channel=True),
        ]

    return checks


def mixed_checks(c: Census, io_dtype: IODType) -> list[Check]:
    """Which ops are float is checked against the region the search chose (mixed.search.verify_region)."""
    wrong_act = [o for o in c.ops if o.compute == "int16"]
    io_types = {s.dtype for s in (*c.inputs, *c.outputs)}
    want = {"float32"} if io_dtype is IODType.FLOAT else {"int8", "float32"}
    return [Check("int8_activations", not wrong_act, "quantized ops use int8 activations" if not wrong_act
                  else "int16 ops: " + "; ".join(o.describe() for o in wrong_act[:8])),
            Check("io_dtype", io_types <= want, f"I/O dtypes {sorted(io_types)}")]


def dynamic_int8_checks(c: Census, _: IODType) -> list[Check]:
    """int8 weights where they are big enough to pay (recipes.DYNAMIC_MIN_WEIGHTS elements, as the TF converter),
    float32 below; at least one hybrid kernel."""
    from edgemp.quantize.recipes import DYNAMIC_MIN_WEIGHTS

    hybrid = c.compute_counts.get("hybrid-int8", 0)
    wrong = [(o, w) for o, w in c.weights() if not (w.dtype == "int8" or (w.dtype == "float32" and
                                                                         int(np.prod(w.shape)) < DYNAMIC_MIN_WEIGHTS))]
    dtypes = c.weight_dtypes
    return [Check("weights_int8", bool(dtypes.get("int8")) and not wrong,
                  f"weights of weighted ops: {dtypes} (float32 only below {DYNAMIC_MIN_WEIGHTS} elements)" if not wrong
                  else "weights neither int8 nor small float32: " + "; ".join(o.describe() for o, _ in wrong[:6])),
            Check("hybrid_kernels", hybrid > 0, f"{hybrid} op(s) run int8-weight hybrid kernels")]


def fp16_checks(c: Census, _: IODType) -> list[Check]:
    ints = [o for o in c.ops if o.compute in ("int8", "int16", "hybrid-int8")]
    return [_weights(c, {"float16"}, per_channel=False),
            Check("float_compute", not ints, "float32 compute with float16 weights" if not ints else
                  f"{len(ints)} op(s) compute in integers")]


def fp32_checks(c: Census, _: IODType) -> list[Check]:
    q = [o for o in c.ops if o.compute not in ("float32", "complex64", "int32", "int64", "bool", "none")]
    return [Check("float_compute", not q, "every op computes in float32" if not q else
                  "non-float ops: " + "; ".join(o.describe() for o in q[:8]))]


def _no_variables(c: Census) -> Check:
    # Keras 3 via from_concrete_functions keeps weights as resource variables: a tiny file that returns NaN.
    var_ops = [o for o in c.ops if o.op in ("VAR_HANDLE", "READ_VARIABLE", "ASSIGN_VARIABLE")]
    return Check("weights_embedded", not var_ops, "weights are constants in the flatbuffer" if not var_ops else
                 f"{len(var_ops)} variable op(s): weights are not embedded (convert with from_keras_model)")


def _weights(c: Census, allowed: set[str], per_channel: bool) -> Check:
    dtypes = c.weight_dtypes
    other = {k: v for k, v in dtypes.items() if k not in allowed}
    ok = bool(dtypes) and not other
    detail = f"weights of weighted ops: {dtypes}"
    if per_channel:
        pc = c.per_channel_weights
        ok = ok and not pc.get("per_tensor")
        detail += f", quantization {pc}"
    return Check("weights_" + "_".join(sorted(allowed)), ok, detail)
