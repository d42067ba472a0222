"""Core ML (.mlpackage, ML Program) from the same sources, with coremltools 9.

What the Core ML labels mean (they are not TFLite's): `fp16`/`fp32` are the compute precision of every op;
`mixed` computes in fp16 except the listed ops, which stay fp32; `int8-weights` stores weights as int8
(per-channel, symmetric) and decompresses them at load — compute stays fp16, unlike TFLite `int8`;
`w8a8` (PyTorch sources) also quantizes activations, calibrated in PyTorch with coremltools.optimize.torch;
`palettize6`/`palettize4` store weights as 6/4-bit indices into a k-means palette, compute fp16.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from edgemp._compat import prepare_torch_import
from edgemp.config import ColorMode, Preprocessing
from edgemp.errors import ConversionError, InputError, UnsupportedOpsError

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
# TFLite precision -> the Core ML precision made beside it when targets include "coreml"
FROM_TFLITE = {"fp32": "fp32", "fp16": "fp16", "dynamic-int8": "int8-weights", "int8": "int8-weights",
               "mixed": "mixed"}
WEIGHT_THRESHOLD = 512  # weights with at least this many elements are compressed (int8/palettized); smaller stay fp16
DEFAULT_TARGET = "iOS16"


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
                   calibration: Sequence[dict[str, np.ndarray]] = ()) -> Any:
    """An MLModel for `source` in `precision`. `fp32_ops`: op types (`conv`) or source layer names/regexes kept in
    float32 for `mixed`. `image`: make the input an ImageType with this preprocessing folded into scale/bias."""
    if precision not in COREML_PRECISIONS:
        raise InputError(f"unknown Core ML precision {precision!r}; valid: {', '.join(COREML_PRECISIONS)}")
    if precision == "w8a8" and source.kind != "pytorch":
        raise InputError("Core ML w8a8 needs a PyTorch source: activations are calibrated in PyTorch "
                         "(coremltools.optimize.torch), which Keras models cannot go through. Use 'int8-weights' "
                         "(int8 weight storage) for Keras models.")
    if precision == "mixed" and not fp32_ops:
        raise InputError("Core ML 'mixed' needs the ops to keep in float32: coreml_fp32_ops=[op types or layer names], "
                         "or precision='mixed' with a TFLite search, whose float layers are used.")
    if source.kind == "saved_model":
        raise InputError("Core ML conversion needs the Keras model (a .keras/.h5 file or a keras.Model), not a "
                         "SavedModel export: coremltools does not convert Keras 3 SavedModel exports.")
    ct = import_coremltools()
    deployment = parse_target(target)
    if precision == "w8a8" and deployment.value < ct.target.iOS17.value:
        deployment = ct.target.iOS17  # int8 activations need iOS17 ops
    compute = {"fp32": ct.precision.FLOAT32}.get(precision, ct.precision.FLOAT16)
    if precision == "mixed":
        keep = _op_matcher(source, fp32_ops)
        compute = ct.transform.FP16ComputePrecision(op_selector=lambda op: not keep(op))
    kwargs: dict[str, Any] = {"convert_to": "mlprogram", "compute_precision": compute,
                              "minimum_deployment_target": deployment}
    if class_names:
        kwargs["classifier_config"] = ct.ClassifierConfig(list(class_names))
    model = _module_for_w8a8(source, calibration) if precision == "w8a8" else None
    mlmodel = _convert(source, kwargs, image, model)
    if precision == "int8-weights" or precision == "w8a8":
        import coremltools.optimize.coreml as cto

        cfg = cto.OptimizationConfig(global_config=cto.OpLinearQuantizerConfig(
            mode="linear_symmetric", weight_threshold=WEIGHT_THRESHOLD))
        mlmodel = _quiet(lambda: cto.linear_quantize_weights(mlmodel, cfg))
    elif precision in ("palettize6", "palettize4"):
        import coremltools.optimize.coreml as cto

        cfg = cto.OptimizationConfig(global_config=cto.OpPalettizerConfig(
            mode="kmeans", nbits=int(precision[-1]), weight_threshold=WEIGHT_THRESHOLD))
        mlmodel = _quiet(lambda: cto.palettize_weights(mlmodel, cfg))
    return mlmodel


def _convert(source: Any, kwargs: dict[str, Any], image: Preprocessing | None, module: Any = None) -> Any:
    import coremltools as ct

    specs = source.input_specs()
    shapes = [(1, *[d or 1 for d in s.shape[1:]]) for s in specs]
    if image is not None and len(specs) != 1:
        raise InputError("an image input (coreml_image_input=True) needs a model with exactly one input")
    inputs = [_image_type(specs[0].name, shapes[0], image, source.kind == "pytorch")] if image is not None else \
        [ct.TensorType(name=s.name if source.kind != "pytorch" else None, shape=shp, dtype=np.float32)
         for s, shp in zip(specs, shapes, strict=True)]
    # float32 outputs: apps read float32 as from the TFLite artifact, and an fp16 output would let coremltools fold
    # the final cast into an op kept in fp32 by `mixed`
    n_out = len(source.model.outputs) if source.kind != "pytorch" else _torch_output_count(source)
    outputs = [ct.TensorType(dtype=np.float32) for _ in range(n_out)] if n_out and not kwargs.get("classifier_config") else None
    kwargs = kwargs | {"inputs": inputs} | ({"outputs": outputs} if outputs else {})
    if source.kind == "pytorch":
        return _convert_torch(source, kwargs, module)
    from edgemp.sources.keras import _with_batch

    import keras

    model = _with_batch(source.model, 1)
    if isinstance(model, keras.Sequential):  # coremltools needs a functional model ('output_names')
        inp = keras.Input(batch_shape=shapes[0], name=specs[0].name)
        model = keras.Model(inp, model(inp))
    try:
        return _quiet(lambda: ct.convert(model, source="tensorflow", **kwargs))
    except Exception as exc:
        raise _coreml_error(exc, source.name) from exc


def _torch_output_count(source: Any) -> int:
    import torch

    with torch.no_grad():
        out = source.module(*[a[:1] for a in source.example_args])
    return len(out) if isinstance(out, tuple | list) else 1


def _convert_torch(source: Any, kwargs: dict[str, Any], module: Any) -> Any:
    """torch.export first (the path coremltools recommends); tracing when export or its conversion fails."""
    import coremltools as ct
    import torch

    module = module if module is not None else source.module
    args = tuple(a[:1] for a in source.example_args)
    try:
        program = torch.export.export(module, args).run_decompositions({})
        return _quiet(lambda: ct.convert(program, **kwargs))
    except Exception as first:
        log.info("Core ML from torch.export failed (%s); trying torch.jit.trace", first)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                traced = torch.jit.trace(module, args)
            return _quiet(lambda: ct.convert(traced, **kwargs))
        except Exception as exc:
            raise _coreml_error(exc, source.name) from first


def _module_for_w8a8(source: Any, calibration: Sequence[dict[str, np.ndarray]]) -> Any:
    """Insert activation/weight observers with coremltools.optimize.torch, calibrate on the same samples, finalize."""
    import copy

    import torch
    from coremltools.optimize.torch.quantization import (
        LinearQuantizer,
        LinearQuantizerConfig,
        ModuleLinearQuantizerConfig,
    )

    if not calibration:
        raise InputError("Core ML w8a8 calibrates activations: pass calibration data")
    cfg = LinearQuantizerConfig(global_config=ModuleLinearQuantizerConfig(
        quantization_scheme="symmetric", milestones=[0, 1000, 1000, 0]))
    model = copy.deepcopy(source.module).eval()
    example = tuple(a[:1] for a in source.example_args)
    quantizer = LinearQuantizer(model, cfg)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        prepared = quantizer.prepare(example_inputs=example, inplace=False)
        quantizer.step()
        with torch.no_grad():
            for sample in calibration:
                prepared(*[torch.from_numpy(np.ascontiguousarray(sample[f"args_{i}"]))
                           for i in range(len(example))])
        return quantizer.finalize(inplace=False).eval()


def _image_type(name: str, shape: tuple[int, ...], pre: Preprocessing, channel_first: bool) -> Any:
    """value = (pixel * scale - mean) / std  ==  pixel * (scale / std) + (-mean / std): Core ML's scale is one
    number, so std must be the same for every channel."""
    import coremltools as ct

    std = set(pre.std)
    if len(std) != 1:
        raise InputError(f"a Core ML image input has one scale for all channels, but std={pre.std} differs per "
                         "channel: fold the normalisation into the model, or use a tensor input.")
    s = pre.scale / next(iter(std))
    channels = shape[1] if channel_first else shape[-1]
    mean = list(pre.mean) * (channels // len(pre.mean)) if len(pre.mean) in (1, channels) else list(pre.mean)
    bias = [-m / next(iter(std)) for m in mean]
    gray = channels == 1
    layout = ct.colorlayout.GRAYSCALE if gray else (ct.colorlayout.BGR if pre.color is ColorMode.BGR else ct.colorlayout.RGB)
    return ct.ImageType(name=name if not channel_first else None, shape=shape, scale=s,
                        bias=bias[0] if gray else bias, color_layout=layout, channel_first=channel_first)


def _op_matcher(source: Any, names: Sequence[str]) -> Any:
    """Keep an op in fp32 when its type is listed, or it comes from a listed source layer. Keras: op names are TF
    scope paths carrying the layer name ('/' or '_' separated), weights carry it too, and an output layer's op is
    named after the output tensor (Identity). PyTorch: op names are torch.export node names, mapped to module
    paths through the exported graph's nn_module_stack."""
    types = {n for n in names if re.fullmatch(r"[a-z_0-9]+", n) and "_" not in n[:1]}
    layer_rx = [re.compile(rf"(^|[_/]){re.escape(n)}(_\d+)?([_/]|$)") for n in names]
    torch_nodes = _torch_nodes_of(source, names) if source.kind == "pytorch" else _keras_output_ops(source, names)

    def const_names(op: Any) -> list[str]:
        """Weights carry the layer's name even when the op is named after a graph output ('Identity')."""
        names = []
        for v in op.inputs.values():
            for var in v if isinstance(v, list | tuple) else (v,):
                src = getattr(var, "op", None)
                if src is not None and src.op_type == "const":
                    names.append(var.name)
        return names

    def keep(op: Any) -> bool:
        if op.op_type in types or op.name in torch_nodes:
            return True
        return any(rx.search(n) for rx in layer_rx for n in (op.name, *const_names(op)))

    return keep


def _keras_output_ops(source: Any, names: Sequence[str]) -> set[str]:
    """A layer producing model output k becomes the op named after TF's output tensor: Identity, Identity_1, ..."""
    found = set()
    for k, t in enumerate(getattr(source.model, "outputs", [])):
        history = getattr(t, "_keras_history", None)
        layer = history[0] if history else None
        if layer is not None and layer.name in names:
            found.add("Identity" if k == 0 else f"Identity_{k}")
    return found


def _torch_nodes_of(source: Any, names: Sequence[str]) -> set[str]:
    import torch

    program = torch.export.export(source.module, tuple(a[:1] for a in source.example_args)).run_decompositions({})
    found = set()
    for node in program.graph.nodes:
        stack = list((node.meta.get("nn_module_stack") or {}).values())
        path = stack[-1][0] if stack else ""
        if any(path == n or path.startswith(n + ".") for n in names):
            found.add(node.name)
    return found


def _quiet(fn: Any) -> Any:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("coremltools").setLevel(logging.ERROR)
        return fn()


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
