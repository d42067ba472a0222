"""Core ML (.mlpackage, ML Program) from the same sources, with coremltools 9.

What the Core ML labels mean (they are not TFLite's): `fp16`/`fp32` are the compute precision of every op;
`mixed` computes in fp16 except the listed ops, which stay fp32; `int8-weights` stores weights as int8
(per-channel, symmetric) and decompresses them at load — compute stays fp16, unlike TFLite `int8`;
`w8a8` (PyTorch sources) also quantizes activations, calibrated in PyTorch with coremltools.optimize.torch;
`palettize6`/`palettize4` store weights as 6/4-bit indices into a k-means palette, compute fp16.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from edgemp._compat import prepare_torch_import
from edgemp.config import ColorMode, Preprocessing
from edgemp.errors import ConversionError, InputError, UnsupportedOpsError
from edgemp.sources.coreml_frontends import quiet

log = logging.getLogger(__name__)

COREML_PRECISIONS = ("fp32", "fp16", "mixed", "int8-weights", "w8a8", "palettize6", "palettize4")
MEANINGS = {
    "fp32": "every op computes in float32; float32 weights",
    "fp16": "every op computes in float16; float16 weights (the Core ML default)",
    "mixed": "float16 compute except the listed ops, which compute in float32",
    "int8-weights": "weights stored int8 (linear symmetric, per channel) and decompressed at load; float16 compute "
                    "— not TFLite's fully-integer int8",
    "w8a8": "int8 weights and int8 activations (calibrated in PyTorch), float16 elsewhere",
    "palettize6": "weights stored as 6-bit indices into a k-means palette; float16 compute",
    "palettize4": "weights stored as 4-bit indices into a k-means palette; float16 compute",
}
WEIGHT_THRESHOLD = 512  # coremltools compresses weights with MORE than this many elements (rank >= 2); others stay fp16
DEFAULT_TARGET = "iOS16"
W8A8_TARGET = "iOS17"  # int8 activations (quantize/dequantize on activations) are ML Program ops of iOS17+


@dataclasses.dataclass
class CoreMLConversion:
    """A converted model and how it was made: what the report must say beside the artifact."""

    mlmodel: Any
    deployment_target: str  # the target actually used (may be above the requested one)
    requested_target: str
    target_note: str | None  # why the target was raised, None when it was not
    conversion_path: str  # "keras" | "torch.export" | "torch.jit.trace"
    fp32_kept: tuple[str, ...] = ()  # mixed: names of the compute ops the selector kept in float32
    fp32_unmatched: tuple[str, ...] = ()  # mixed: requests that selected no compute op


def import_coremltools() -> Any:
    """coremltools imports TensorFlow and torch (and torchvision -> torch._dynamo -> Triton): guard the clash."""
    prepare_torch_import()
    import coremltools

    logging.getLogger("coremltools").setLevel(logging.ERROR)
    return coremltools


def parse_target(name: str) -> Any:
    ct = import_coremltools()

    valid = [t.name for t in ct.target]
    match = next((t for t in ct.target if t.name.lower() == str(name).lower()), None)
    if match is None:
        raise InputError(f"unknown Core ML deployment target {name!r}; valid: {', '.join(valid)}")
    return match


def convert_coreml(source: Any, precision: str, *, fp32_ops: Sequence[str] = (), image: Preprocessing | None = None,
                   class_names: Sequence[str] | None = None, target: str = DEFAULT_TARGET,
                   calibration: Sequence[dict[str, np.ndarray]] = (), searched: bool = False) -> CoreMLConversion:
    """`source` as a Core ML model in `precision`. `fp32_ops` (for `mixed`): source layer names (Keras layer names,
    PyTorch module paths) or `type:<op>` for every Core ML op of a type (`type:concat`), see coreml_select. `image`:
    make the input an ImageType with this preprocessing folded into scale/bias. I/O are named as the source's.
    `searched`: the fp32 ops come from the TFLite mixed search (which may have kept none)."""
    if precision not in COREML_PRECISIONS:
        raise InputError(f"unknown Core ML precision {precision!r}; valid: {', '.join(COREML_PRECISIONS)}")
    frontend = source.coreml_frontend()
    if precision == "w8a8" and not frontend.supports_w8a8:
        frontend.w8a8_module(calibration)  # raises the frontend's own explanation
    if precision == "mixed" and not fp32_ops and not searched:  # a search may keep nothing float: fp16 everywhere
        raise InputError("Core ML 'mixed' needs the ops to keep in float32: coreml_fp32_ops=[layer names or "
                         "'type:<op>'], or precision='mixed' with a TFLite search, whose float layers are used.")
    ct = import_coremltools()
    deployment = parse_target(target)
    note = None
    if precision == "w8a8" and deployment.value < ct.target[W8A8_TARGET].value:
        note = (f"raised from {deployment.name} to {W8A8_TARGET}: w8a8's int8 activations need the quantize/"
                f"dequantize ops of {W8A8_TARGET} ML Programs")
        deployment = ct.target[W8A8_TARGET]
    compute = {"fp32": ct.precision.FLOAT32}.get(precision, ct.precision.FLOAT16)
    selector = None
    if precision == "mixed" and fp32_ops:
        from edgemp.targets.coreml.select import Fp32Selector

        selector = Fp32Selector(frontend, fp32_ops, [o.name for o in frontend.output_specs()])
        compute = ct.transform.FP16ComputePrecision(op_selector=selector.fp16)
    kwargs: dict[str, Any] = {"convert_to": "mlprogram", "compute_precision": compute,
                              "minimum_deployment_target": deployment}
    if class_names:
        kwargs["classifier_config"] = ct.ClassifierConfig(list(class_names))
    model = frontend.w8a8_module(calibration) if precision == "w8a8" else None
    mlmodel, renames, path = _convert(source, frontend, kwargs, image, model)
    if precision == "int8-weights" or precision == "w8a8":
        import coremltools.optimize.coreml as cto

        cfg = cto.OptimizationConfig(global_config=cto.OpLinearQuantizerConfig(
            mode="linear_symmetric", weight_threshold=WEIGHT_THRESHOLD))
        mlmodel = quiet(lambda: cto.linear_quantize_weights(mlmodel, cfg))
    elif precision in ("palettize6", "palettize4"):
        import coremltools.optimize.coreml as cto

        cfg = cto.OptimizationConfig(global_config=cto.OpPalettizerConfig(
            mode="kmeans", nbits=int(precision[-1]), weight_threshold=WEIGHT_THRESHOLD))
        mlmodel = quiet(lambda: cto.palettize_weights(mlmodel, cfg))
    return CoreMLConversion(mlmodel, deployment.name, parse_target(target).name, note, path,
                            tuple(sorted(renames.get(n, n) for n in selector.kept)) if selector else (),
                            tuple(selector.unmatched) if selector else ())


def _convert(source: Any, frontend: Any, kwargs: dict[str, Any], image: Preprocessing | None,
             module: Any = None) -> tuple[Any, dict[str, str], str]:
    """The MLModel with the source's input and output names, the outputs renamed (old -> new), the path taken."""
    import coremltools as ct

    specs = source.input_specs()
    shapes = [(1, *[d or 1 for d in s.shape[1:]]) for s in specs]
    if image is not None and len(specs) != 1:
        raise InputError("an image input (coreml_image_input=True) needs a model with exactly one input")
    inputs = [_image_type(specs[0].name, shapes[0], image, frontend.channels_first)] if image is not None else \
        [ct.TensorType(name=s.name, shape=shp, dtype=np.float32) for s, shp in zip(specs, shapes, strict=True)]
    # float32 outputs: apps read float32 as from the TFLite artifact, and an fp16 output would let coremltools fold
    # the final cast into an op kept in fp32 by `mixed`. Unnamed outputs (TF's Identity*) are renamed below.
    out_names = [o.name for o in frontend.output_specs()]
    named = frontend.names_outputs and not kwargs.get("classifier_config")
    outputs = None if kwargs.get("classifier_config") else \
        [ct.TensorType(name=n if named else None, dtype=np.float32) for n in out_names]
    kwargs = kwargs | {"inputs": inputs} | ({"outputs": outputs} if outputs else {})
    try:
        mlmodel, path = frontend.convert(kwargs, module)
    except InputError:
        raise
    except Exception as exc:
        raise _coreml_error(exc, source.name) from exc
    return (*_rename_outputs(mlmodel, out_names), path)


def _rename_outputs(mlmodel: Any, names: Sequence[str]) -> tuple[Any, dict[str, str]]:
    """Name the outputs as the source's (a classifier's probability dictionary takes the first name; its predicted
    label keeps coremltools' `classLabel`). Also returns old -> new: the ops producing outputs are renamed too."""
    import coremltools as ct

    spec = mlmodel.get_spec()
    desc = spec.description
    current = [desc.predictedProbabilitiesName] if desc.predictedFeatureName else [o.name for o in desc.output]
    renames = {old: new for old, new in zip(current, names, strict=False) if old and old != new}
    if not renames:
        return mlmodel, {}
    for old, new in renames.items():
        ct.utils.rename_feature(spec, old, new)
    return ct.models.MLModel(spec, weights_dir=mlmodel.weights_dir), renames


def image_scale_bias(pre: Preprocessing, channels: int) -> tuple[float, list[float]]:
    """value = (pixel * scale - mean) / std  ==  pixel * (scale / std) + (-mean / std): Core ML's ImageType has one
    scale for all channels, so std must be the same for every channel; the bias is per channel (model order)."""
    if len(set(pre.std)) != 1:
        raise InputError(f"a Core ML image input has one scale for all channels, but std={pre.std} differs per "
                         "channel: fold the normalisation into the model, or use a tensor input.")
    if len(pre.mean) not in (1, channels):
        raise InputError(f"preprocessing mean {pre.mean} has {len(pre.mean)} values for a {channels}-channel input")
    std = pre.std[0]
    mean = list(pre.mean) * channels if len(pre.mean) == 1 else list(pre.mean)
    return pre.scale / std, [-m / std for m in mean]


def _image_type(name: str, shape: tuple[int, ...], pre: Preprocessing, channel_first: bool) -> Any:
    """An ImageType applying the calibration preprocessing, so apps pass camera pixels and never normalise twice."""
    import coremltools as ct

    channels = shape[1] if channel_first else shape[-1]
    scale, bias = image_scale_bias(pre, channels)
    gray = channels == 1
    rgb = ct.colorlayout.BGR if pre.color is ColorMode.BGR else ct.colorlayout.RGB
    layout = ct.colorlayout.GRAYSCALE if gray else rgb
    return ct.ImageType(name=name, shape=shape, scale=scale, bias=bias[0] if gray else bias, color_layout=layout,
                        channel_first=channel_first)


def _coreml_error(exc: Exception, name: str) -> ConversionError:
    text = str(exc)
    ops = sorted(set(re.findall(r"[Cc]onvert(?:ing)? op(?:eration)? '?\"?([\w.:]+)", text)
                     + re.findall(r"[Uu]nsupported op(?:s)?[: ]+'?([\w.:]+)", text)
                     + re.findall(r"PyTorch convert function for op '([\w.]+)' not implemented", text)))
    first = text.strip().splitlines()[0][:300].rstrip(".") if text.strip() else type(exc).__name__
    msg = f"coremltools cannot convert {name!r}: {first}"
    if ops:
        return UnsupportedOpsError(msg + f". Ops coremltools cannot convert: {', '.join(ops)}; replace them or "
                                   "register a coremltools op translation.", ops=ops)
    return ConversionError(msg)
