"""The float ONNX graph of a source, with the source's I/O names, in the source's own layout (NCHW for PyTorch:
TensorRT's native layout; NHWC for Keras), and a map from ONNX nodes to the source's layers (so `mixed` can keep the
layers its search chose in FP16).

Each source exports itself (Source.to_float_onnx: torch.onnx.export(dynamo=True) for PyTorch, tf2onnx for Keras;
edgemp/sources/onnx_export.py). ORT's `quant_pre_process` then folds BatchNorm into the convolutions and
infers shapes, as onnxruntime and TensorRT recommend before Q/DQ placement.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

from edgemp.errors import ConversionError
from edgemp.sources.onnx_export import quiet


@dataclasses.dataclass
class FloatOnnx:
    model: Any  # onnx.ModelProto, BatchNorm folded, shapes inferred
    producer: str
    layers: dict[str, str]  # ONNX node name -> source layer (module path / Keras layer name)
    batch: int | None  # fixed batch size, None: dynamic


def export_float(source: Any, batch_size: int | None, opset: int) -> FloatOnnx:
    model, producer, layers = source.to_float_onnx(batch_size, opset)
    _rename_io(model, [s.name for s in source.input_specs()], source.output_names())
    for n in model.graph.node:  # the exporter's per-node scope strings, read into `layers` above: not shipped
        del n.metadata_props[:]
        n.doc_string = ""
    return FloatOnnx(_pre_process(model), producer, layers, batch_size)


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
        with quiet():
            quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)
        return onnx.load(dst)


