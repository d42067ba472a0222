"""The float ONNX graph of a source, with the source's I/O names, in the source's own layout (NCHW for PyTorch:
TensorRT's native layout; NHWC for Keras), and a map from ONNX nodes to the source's layers (so `mixed` can keep the
layers its search chose in FP16).

PyTorch goes through `torch.onnx.export(dynamo=True)` (the maintained exporter), Keras through tf2onnx; both are
compared in benchmarks/onnx_vs_modelopt.py. ORT's `quant_pre_process` then folds BatchNorm into the convolutions and
infers shapes, as onnxruntime and TensorRT recommend before Q/DQ placement.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import io
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

from edgemp.errors import ConversionError, UnsupportedModelError


@dataclasses.dataclass
class FloatOnnx:
    model: Any  # onnx.ModelProto, BatchNorm folded, shapes inferred
    producer: str
    layers: dict[str, str]  # ONNX node name -> source layer (module path / Keras layer name)
    batch: int | None  # fixed batch size, None: dynamic


def export_float(source: Any, batch_size: int | None, opset: int) -> FloatOnnx:
    if source.kind == "pytorch":
        model, producer, layers = _from_torch(source, batch_size, opset)
    elif source.kind == "keras":
        model, producer, layers = _from_keras(source, batch_size, opset)
    else:
        raise UnsupportedModelError(f"the ONNX target takes Keras and PyTorch models, not a {source.kind} source: "
                                    "load the Keras model (.keras/.h5) or the nn.Module instead.")
    _rename_io(model, [s.name for s in source.input_specs()], source.output_names())
    for n in model.graph.node:  # the exporter's per-node scope strings, read into `layers` above: not shipped
        del n.metadata_props[:]
        n.doc_string = ""
    return FloatOnnx(_pre_process(model), producer, layers, batch_size)


def _from_torch(source: Any, batch_size: int | None, opset: int) -> tuple[Any, str, dict[str, str]]:
    import torch

    args = source.example_args
    if batch_size is not None:
        args = tuple(a[:1].expand(batch_size, *a.shape[1:]).contiguous() for a in args)
    dynamic = None if batch_size is not None else tuple({0: torch.export.Dim("batch")} for _ in args)
    try:
        with _quiet():
            program = torch.onnx.export(source.module, args, dynamo=True, opset_version=opset,
                                        dynamic_shapes=dynamic, verbose=False, optimize=True)
    except Exception as exc:  # noqa: BLE001 - the exporter raises many types; one typed error with the cause
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:400]
        raise ConversionError(f"torch.onnx.export (dynamo) could not export {source.name!r}: {first}. The exporter "
                              "needs what torch.export needs (no data-dependent control flow); a model that converts "
                              "to .tflite already passes torch.export, so this is an ONNX exporter gap: try another "
                              "opset (OnnxOptions(opset=...)).") from exc
    model = program.model_proto
    order = {n for n, _ in source.layers()}
    return model, f"torch.onnx.export(dynamo=True) {torch.__version__}", {
        n.name: layer for n in model.graph.node if (layer := _torch_layer(n, order))}


def _torch_layer(node: Any, order: set[str]) -> str | None:
    """The deepest module path in the node's name scopes (`features.3`): what the user calls the layer."""
    meta = {p.key: p.value for p in node.metadata_props}
    try:
        scopes = ast.literal_eval(meta.get("pkg.torch.onnx.name_scopes", "[]"))
    except (ValueError, SyntaxError):
        return None
    hits = [s for s in scopes if s in order]
    return hits[-1] if hits else None


def _from_keras(source: Any, batch_size: int | None, opset: int) -> tuple[Any, str, dict[str, str]]:
    import tf2onnx

    from edgemp.mixed.graph import mentions
    from edgemp.sources.keras import _flat, import_tf

    tf = import_tf()
    model = source.model
    specs = source.input_specs()
    sig = [tf.TensorSpec((batch_size, *s.shape[1:]), tf.as_dtype(s.dtype), name=s.name) for s in specs]

    def forward(*xs: Any) -> list[Any]:
        return _flat(model(xs[0] if len(xs) == 1 else list(xs), training=False))

    try:
        with _quiet():
            proto, _ = tf2onnx.convert.from_function(tf.function(forward), input_signature=sig, opset=opset)
    except Exception as exc:  # noqa: BLE001
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:400]
        raise ConversionError(f"tf2onnx could not convert Keras model {source.name!r}: {first}") from exc
    order = {n: i for i, (n, _) in enumerate(source.layers())}
    aliases = source.scope_aliases()
    layers = {}
    for n in proto.graph.node:
        found = mentions([n.name], order, aliases)
        if found:
            layers[n.name] = found[-1]
    return proto, f"tf2onnx {tf2onnx.__version__} (tensorflow {tf.__version__})", layers


def _rename_io(model: Any, inputs: list[str], outputs: list[str]) -> None:
    """Graph inputs and outputs take the source's names (`args_0`, `logits`), so data, reports and the app's
    manifest name them the same way for every target."""
    g = model.graph
    if len(g.input) < len(inputs) or len(g.output) != len(outputs):
        raise ConversionError(f"the exported ONNX graph has inputs {[i.name for i in g.input]} and outputs "
                              f"{[o.name for o in g.output]}, but the source has inputs {inputs} and outputs {outputs}")
    mapping = {}
    inits = {i.name for i in g.initializer}
    graph_inputs = [i for i in g.input if i.name not in inits]
    for vi, new in [*zip(graph_inputs, inputs, strict=False), *zip(g.output, outputs, strict=True)]:
        if vi.name != new:
            mapping[vi.name] = new
            vi.name = new
    if not mapping:
        return
    for node in g.node:
        node.input[:] = [mapping.get(x, x) for x in node.input]
        node.output[:] = [mapping.get(x, x) for x in node.output]
    for vi in g.value_info:
        vi.name = mapping.get(vi.name, vi.name)


def _pre_process(model: Any) -> Any:
    """ORT's quantization pre-processing: shape inference and the basic graph optimizations (BatchNorm folded into
    the convolution before it), which keep node names."""
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="edgemp-onnx-") as tmp:
        src, dst = Path(tmp, "float.onnx"), Path(tmp, "pre.onnx")
        onnx.save(model, src)
        with _quiet():
            quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)
        return onnx.load(dst)


@contextlib.contextmanager
def _quiet():  # type: ignore[no-untyped-def]
    """The exporters print progress and deprecation chatter on stdout/stderr; edgemp reports its own."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        old = os.environ.get("TF_CPP_MIN_LOG_LEVEL")
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
        try:
            yield
        finally:
            if old is None:
                os.environ.pop("TF_CPP_MIN_LOG_LEVEL", None)
            else:
                os.environ["TF_CPP_MIN_LOG_LEVEL"] = old
