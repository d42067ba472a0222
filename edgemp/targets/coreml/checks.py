"""Validation of a Core ML artifact: structure everywhere, numbers where Core ML can run (macOS only).

coremltools' MLModel.predict needs the Core ML framework, which exists on Apple platforms only; on Linux the
report says numeric validation was *not run* (never "passed") and checks what can be read from the spec:
I/O against the source, the op precision census against the requested precision, weight storage, size.
"""

from __future__ import annotations

import sys
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np

from edgemp.targets.coreml.convert import image_scale_bias
from edgemp.targets.coreml.census import CoreMLCensus, CoreMLOp
from edgemp.config import ColorMode, Preprocessing
from edgemp.sources.base import TensorSpec
from edgemp.validation.checks import Check
from edgemp.validation.metrics import compare, topk
from edgemp.validation.parity import flat

NOT_RUN_REASON = ("Core ML predictions need Apple's Core ML framework (coremltools MLModel.predict is macOS-only); "
                  "structure was validated instead. Run the same conversion on macOS for the numeric validation.")


# below this fp32 package size the fixed part of a package (spec, manifest, blob headers), not the weights, sets the
# size ratio: the ratio is still reported, but judged against the precision's limit only above it
SIZE_RATIO_MIN_BYTES = 128 * 1024


def can_predict() -> bool:
    return sys.platform == "darwin"


def structure_checks(c: CoreMLCensus, precision: str, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec], *,
                     image: Preprocessing | None, channel_first: bool, fp32_size: int | None,
                     class_names: Sequence[str] | None, fp32_kept: Collection[str] = (),
                     fp32_unmatched: Sequence[str] = (), nothing_requested: bool = False) -> list[Check]:
    """What the spec must say for the artifact to be what its label says, and to take/give what the source does."""
    checks = [_input_check(c, inputs, image, channel_first), _output_check(c, outputs, class_names)]
    if image is not None:
        channels = (inputs[0].shape[1] if channel_first else inputs[0].shape[-1]) or 1
        scale, bias = image_scale_bias(image, channels)
        got = {n: (sc, list(b)) for n, sc, b in c.image_preprocessing}.get(inputs[0].name)
        ok = got is not None and np.isclose(got[0], scale, rtol=1e-3) and len(got[1]) == len(bias) and \
            np.allclose(got[1], bias, rtol=1e-3, atol=1e-5)
        checks.append(Check("coreml_image_preprocessing", bool(ok), f"scale/bias in the model {got}, from the "
                            f"preprocessing ({scale:.6g}, {[round(b, 6) for b in bias]})"))
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
        checks.append(_mixed_check(body, set(fp32_kept), fp32_unmatched, nothing_requested))
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
    if fp32_size and fp32_size >= SIZE_RATIO_MIN_BYTES and precision != "fp32":
        limit = {"fp16": 0.55, "mixed": 0.9, "int8-weights": 0.30, "w8a8": 0.35, "palettize6": 0.25, "palettize4": 0.2}[precision]
        ratio = c.size_bytes / fp32_size
        checks.append(Check("coreml_size", ratio <= limit, f"{ratio:.3f} x the fp32 package (limit {limit})"))
    return checks


def _input_check(c: CoreMLCensus, specs: Sequence[TensorSpec], image: Preprocessing | None,
                 channel_first: bool) -> Check:
    """Names, count, shapes (batch 1) and dtypes of the inputs against the source's; an image input's size and
    color space against the model's input and the preprocessing."""
    problems = []
    if [i.name for i in c.inputs] != [s.name for s in specs]:
        problems.append(f"names {[i.name for i in c.inputs]} != source {[s.name for s in specs]}")
    for i, s in zip(c.inputs, specs, strict=False):
        want = (1, *[d or 1 for d in s.shape[1:]])
        if image is not None:
            channels = want[1] if channel_first else want[-1]
            space = "grayscale" if channels == 1 else ("bgr" if image.color is ColorMode.BGR else "rgb")
            size = want[2:4] if channel_first else want[1:3]
            if (i.kind, tuple(i.shape), i.dtype) != ("image", tuple(size), space):
                problems.append(f"{i.name}: {i.kind} {list(i.shape)} {i.dtype}, expected a {space} image {list(size)}")
        elif (i.kind, tuple(i.shape), i.dtype) != ("multiArray", want, "float32"):
            problems.append(f"{i.name}: {i.kind} {list(i.shape)} {i.dtype}, expected float32 {list(want)}")
    return Check("coreml_inputs", not problems, "; ".join(problems) or
                 f"{len(specs)} input(s) as the source's: {[i.to_dict() for i in c.inputs]}")


def _output_check(c: CoreMLCensus, specs: Sequence[TensorSpec], class_names: Sequence[str] | None) -> Check:
    """Names, count, shapes and float32 dtype of the outputs against the source's; a classifier gives a predicted
    label and a probability dictionary (named as the source's output) instead."""
    problems = []
    if class_names:
        kinds = sorted(o.kind for o in c.outputs)
        probs = [o.name for o in c.outputs if o.kind == "dictionaryType"]
        if len(c.outputs) != 2 or kinds[0] != "dictionaryType" or kinds[1] not in ("stringType", "int64Type"):
            problems.append(f"classifier outputs {[o.to_dict() for o in c.outputs]}: expected a label and a dictionary")
        elif specs and probs != [specs[0].name]:
            problems.append(f"probabilities output {probs} != source output {specs[0].name!r}")
    else:
        if [o.name for o in c.outputs] != [s.name for s in specs]:
            problems.append(f"names {[o.name for o in c.outputs]} != source {[s.name for s in specs]}")
        for o, s in zip(c.outputs, specs, strict=False):
            if (o.kind, tuple(o.shape), o.dtype) != ("multiArray", tuple(s.shape), "float32"):
                problems.append(f"{o.name}: {o.kind} {list(o.shape)} {o.dtype}, expected float32 {list(s.shape)}")
    return Check("coreml_outputs", not problems, "; ".join(problems) or
                 f"{len(c.outputs)} output(s) as the source's: {[o.to_dict() for o in c.outputs]}")


def _mixed_check(body: Sequence[CoreMLOp], kept: set[str], unmatched: Sequence[str],
                 nothing_requested: bool = False) -> Check:
    """Exactly the ops the selector kept compute in float32, every other float op in float16, and every requested
    layer or op type selected something. `nothing_requested`: the TFLite search kept no layer in float."""
    found = [o.name for o in body if o.name in kept]
    not32 = [o.name for o in body if o.name in kept and o.compute != "float32"]
    stray = [o.name for o in body if o.name not in kept and o.compute == "float32"]
    n16 = sum(o.compute == "float16" for o in body)
    problems = [f"requested but matched no op: {list(unmatched)} (op types are written 'type:<op>')"] if unmatched else []
    problems += (["no op kept in float32"] if not found and not nothing_requested else []) + \
        ([f"kept but not float32: {not32[:6]}"] if not32 else [])
    if nothing_requested and not problems:
        return Check("coreml_mixed_compute", not stray, f"the mixed search kept no layer in float: all {n16} float ops "
                     "in float16")
    problems += [f"float32 but not requested: {stray[:6]}"] if stray else []
    return Check("coreml_mixed_compute", not problems, "; ".join(problems) or
                 f"{len(found)} requested op(s) in float32 ({', '.join(found[:6])}), the other {n16} in float16")


def image_from_array(x: np.ndarray, pre: Preprocessing, channel_first: bool) -> Any:
    """One preprocessed sample back to the 8-bit image an app would pass (Core ML image inputs take images and apply
    the folded scale/bias themselves): pixel = (value - bias) / scale, rounded. BGR models get an RGB image: Core ML
    reorders the channels."""
    from PIL import Image

    a = np.asarray(x, np.float32)
    a = a[0] if a.ndim == 4 else a
    a = np.moveaxis(a, 0, -1) if channel_first else a
    scale, bias = image_scale_bias(pre, a.shape[-1])
    pixels = np.clip(np.rint((a - np.asarray(bias, np.float32)) / scale), 0, 255).astype(np.uint8)
    if pixels.shape[-1] == 1:
        return Image.fromarray(pixels[..., 0])
    return Image.fromarray(np.ascontiguousarray(pixels[..., ::-1] if pre.color is ColorMode.BGR else pixels))


def probabilities_vector(probs: Mapping[Any, float], class_names: Sequence[Any] | None) -> np.ndarray:
    """A classifier's {label: probability} dictionary as a vector in class order (the source model's output order)."""
    by_name = {str(k): float(v) for k, v in probs.items()}
    order = [str(n) for n in class_names] if class_names is not None else list(by_name)
    missing = [n for n in order if n not in by_name]
    if missing:
        raise ValueError(f"the classifier's probabilities lack classes {missing[:5]}")
    return np.asarray([by_name[n] for n in order], np.float32)


def outputs_in_order(pred: Mapping[str, Any], order: Sequence[str], label_name: str, probs_name: str,
                     class_names: Sequence[Any] | None) -> list[np.ndarray]:
    """One prediction's outputs in the model's order, each with a batch axis of 1 (shapes kept: an NCHW feature map
    is compared after a layout change): the probability dictionary as a vector in class order, the predicted label
    (a string, not an output of the source) left out."""
    out = []
    for k in order:
        if k == label_name and k != probs_name:
            continue
        a = probabilities_vector(pred[k], class_names) if k == probs_name else np.asarray(pred[k], np.float32)
        out.append(a if a.ndim > 1 and a.shape[0] == 1 else a[None])
    return out


def predict_coreml(mlmodel: Any, inputs: dict[str, np.ndarray], *, image: Preprocessing | None = None,
                   channel_first: bool = False, class_names: Sequence[Any] | None = None) -> list[np.ndarray]:
    """Sample-by-sample Core ML predictions (macOS), outputs in the model's output order, batched along axis 0.
    `inputs` are keyed by the source's input names (the Core ML model's too); image inputs get PIL images."""
    desc = mlmodel.get_spec().description
    names = [i.name for i in desc.input]
    images = {i.name for i in desc.input if i.type.WhichOneof("Type") == "imageType"}
    arrays = [inputs[n] if n in inputs else list(inputs.values())[k] for k, n in enumerate(names)]
    order = [o.name for o in desc.output]
    outs: list[list[np.ndarray]] = []
    for i in range(len(arrays[0])):
        feed = {n: image_from_array(a[i], image or Preprocessing(), channel_first) if n in images else a[i : i + 1]
                for n, a in zip(names, arrays, strict=True)}
        outs.append(outputs_in_order(mlmodel.predict(feed), order, desc.predictedFeatureName,
                                     desc.predictedProbabilitiesName, class_names))
    return [np.concatenate([o[j] for o in outs]) for j in range(len(outs[0]))]


def numeric_validation(mlmodel: Any, inputs: dict[str, np.ndarray], reference: list[np.ndarray],
                       labels: np.ndarray | None, *, image: Preprocessing | None = None, channel_first: bool = False,
                       class_names: Sequence[Any] | None = None, nchw_to_nhwc: bool = False,
                       max_samples: int = 500) -> dict[str, Any]:
    """Run the Core ML model (macOS) sample by sample and compare with the float reference. `nchw_to_nhwc`: the
    reference gives 4-D outputs channel-last while Core ML keeps PyTorch's NCHW."""
    if not can_predict():
        return {"run": False, "reason": NOT_RUN_REASON}
    n = min(max_samples, len(next(iter(inputs.values()))))
    out = predict_coreml(mlmodel, {k: v[:n] for k, v in inputs.items()}, image=image, channel_first=channel_first,
                         class_names=class_names)
    metrics = [compare(flat(r[:n]), flat(o, channels_last=nchw_to_nhwc)) for r, o in zip(reference, out, strict=False)]
    result: dict[str, Any] = {"run": True, "samples": n, "outputs": metrics}
    if labels is not None:
        result["top1"] = topk(flat(out[0]), labels[:n], 1)
        result["float_top1"] = topk(reference[0][:n], labels[:n], 1)
    return result
