"""Validation of a Core ML artifact: structure everywhere, numbers where Core ML can run (macOS only).

coremltools' MLModel.predict needs the Core ML framework, which exists on Apple platforms only; on Linux the
report says numeric validation was *not run* (never "passed") and checks what can be read from the spec:
I/O against the source, the op precision census against the requested precision, weight storage, size.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from edgemp.backends.coreml_census import CoreMLCensus
from edgemp.validate.checks import Check
from edgemp.validate.metrics import compare, topk

NOT_RUN_REASON = ("Core ML predictions need Apple's Core ML framework (coremltools MLModel.predict is macOS-only); "
                  "structure was validated instead. Run the same conversion on macOS for the numeric validation.")


def can_predict() -> bool:
    return sys.platform == "darwin"


def structure_checks(c: CoreMLCensus, precision: str, specs: Sequence[Any], *, image: bool, fp32_size: int | None,
                     class_names: Sequence[str] | None) -> list[Check]:
    checks = []
    ins = list(c.inputs)
    ok_io = len(ins) == len(specs) and all(
        (i.kind == "image") if image else (i.kind == "multiArray" and tuple(i.shape[1:]) == tuple(d or 1 for d in s.shape[1:])
                                           and i.dtype == "float32")
        for i, s in zip(ins, specs, strict=False))
    checks.append(Check("coreml_inputs", ok_io, f"inputs {[i.to_dict() for i in ins]} for source inputs "
                        f"{[s.to_dict() for s in specs]}"))
    if class_names:
        checks.append(Check("coreml_class_labels", c.classifier_labels == len(class_names),
                            f"{c.classifier_labels} class labels in the model, {len(class_names)} given"))
    compute = {k: v for k, v in c.compute_counts.items() if k in ("float16", "float32")}
    # not model compute: casts at the I/O boundary (float32 I/O around float16 compute), the image input's
    # scale/bias (Core ML names them <input>__scaled__/__biased__) and the classifier's label lookup
    body = [o for o in c.ops if o.type not in ("cast", "classify") and not o.name.endswith(("__scaled__", "__biased__"))]
    fp32 = [o for o in body if o.compute == "float32"]
    fp16 = [o for o in body if o.compute == "float16"]
    weights = c.weight_dtypes
    if precision == "fp32":
        checks.append(Check("coreml_fp32_compute", not fp16 and bool(fp32), f"ops by compute precision: {compute}"))
        checks.append(Check("coreml_weights", set(weights) <= {"float32"}, f"weights: {weights}"))
    elif precision == "mixed":
        checks.append(Check("coreml_mixed_compute", bool(fp32) and bool(fp16),
                            f"{len(fp32)} op(s) in float32 ({', '.join(o.name for o in fp32[:6])}), {len(fp16)} in float16"))
    else:
        checks.append(Check("coreml_fp16_compute", not fp32 and bool(fp16),
                            f"ops by compute precision: {compute}"))
        want = {"fp16": {"float16"}, "int8-weights": {"int8"}, "w8a8": {"int8"}, "palettize6": {"palettized-6bit"},
                "palettize4": {"palettized-4bit"}}[precision]
        ok = bool(set(weights) & want) and set(weights) <= want | {"float16"}
        checks.append(Check("coreml_weights", ok, f"weights: {weights} (small weights below the threshold stay float16)"))
    if precision == "w8a8":
        ints = c.compute_counts.get("int", 0)
        checks.append(Check("coreml_int8_activations", ints > 0, f"{ints} op(s) produce int8 activations"))
    if fp32_size and precision != "fp32":
        limit = {"fp16": 0.55, "mixed": 0.9, "int8-weights": 0.30, "w8a8": 0.35, "palettize6": 0.25, "palettize4": 0.2}[precision]
        ratio = c.size_bytes / fp32_size
        checks.append(Check("coreml_size", ratio <= limit, f"{ratio:.3f} x the fp32 package (limit {limit})"))
    return checks


def predict_coreml(mlmodel: Any, inputs: dict[str, np.ndarray], input_names: Sequence[str]) -> list[np.ndarray]:
    """Sample-by-sample Core ML predictions (macOS), outputs in the model's output order, flattened per sample."""
    n = len(next(iter(inputs.values())))
    order = [o.name for o in mlmodel.get_spec().description.output]
    outs: list[list[np.ndarray]] = []
    for i in range(n):
        pred = mlmodel.predict({name: inputs[key][i : i + 1] for name, key in zip(input_names, inputs, strict=True)})
        outs.append([np.asarray(pred[k], np.float32).reshape(1, -1) for k in order if isinstance(pred.get(k), np.ndarray)])
    return [np.concatenate([o[j] for o in outs]) for j in range(len(outs[0]))]


def numeric_validation(mlmodel: Any, inputs: dict[str, np.ndarray], reference: list[np.ndarray],
                       labels: np.ndarray | None, input_names: Sequence[str], max_samples: int = 500) -> dict[str, Any]:
    """Run the Core ML model (macOS) sample by sample and compare with the float reference."""
    if not can_predict():
        return {"run": False, "reason": NOT_RUN_REASON}
    n = min(max_samples, len(next(iter(inputs.values()))))
    out = predict_coreml(mlmodel, {k: v[:n] for k, v in inputs.items()}, input_names)
    metrics = [compare(np.asarray(r[:n], np.float32).reshape(n, -1), o) for r, o in zip(reference, out, strict=False)]
    result: dict[str, Any] = {"run": True, "samples": n, "outputs": metrics}
    if labels is not None:
        result["top1"] = topk(out[0], labels[:n], 1)
        result["float_top1"] = topk(reference[0][:n], labels[:n], 1)
    return result
