"""Precision for the ONNX graph, in the form TensorRT 10 builds from.

- int8: explicit quantization by onnxruntime's `quantize_static` in QDQ format, set up as TensorRT requires and
  NVIDIA Model Optimizer sets it up: symmetric int8 (zero point 0 everywhere), per-channel weights stored as int8
  initializers, per-tensor activations calibrated by max (MinMax, symmetric), Q/DQ on the inputs of Conv,
  ConvTranspose, Gemm and MatMul only (TensorRT fuses the bias and the activation after them; no output
  quantization), float biases (TensorRT folds them itself).
- fp16: onnxruntime's float16 converter, float32 I/O unless asked.
- mixed: int8 as above with the chosen nodes left out of quantization, then each of them made FP16: its weights in
  float16, a Cast to float16 before it and back after it (TensorRT fuses the casts into the layer).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

QUANTIZED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
RECURRENT_OPS = ("LSTM", "GRU", "RNN")  # weighted ops a Q/DQ graph cannot quantize: FP16 at best (mixed)


def input_dtypes(model: Any) -> dict[str, np.dtype]:
    from onnx import helper

    inits = {i.name for i in model.graph.initializer}
    return {i.name: np.dtype(helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type))
            for i in model.graph.input if i.name not in inits}


def _batches(samples: Sequence[dict[str, np.ndarray]], dtypes: dict[str, np.dtype],
             batch: int | None) -> Iterator[dict[str, np.ndarray]]:
    """edgemp's calibration samples in batches of the graph's batch size (32 when the batch is dynamic)."""
    joined = {k: np.concatenate([s[k] for s in samples]).astype(dtypes[k], copy=False) for k in dtypes}
    n = len(next(iter(joined.values())))
    step = batch or 32
    for i in range(0, n - step + 1 if batch else n, step):
        yield {k: v[i : i + step] for k, v in joined.items()}


def quantize_int8(model: Any, samples: Sequence[dict[str, np.ndarray]], batch: int | None,
                  exclude: Sequence[str] = ()) -> Any:
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.it = _batches(samples, input_dtypes(model), batch)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.it, None)

    reader = Reader()
    with tempfile.TemporaryDirectory(prefix="edgemp-onnx-") as tmp:
        src, dst = Path(tmp, "float.onnx"), Path(tmp, "int8.onnx")
        onnx.save(model, src)
        quantize_static(
            str(src), str(dst), reader, quant_format=QuantFormat.QDQ, op_types_to_quantize=list(QUANTIZED_OPS),
            nodes_to_exclude=list(exclude), per_channel=True, activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False,
                           "OpTypesToExcludeOutputQuantization": list(QUANTIZED_OPS),
                           "QDQOpTypePerChannelSupportToAxis": {"Conv": 0, "ConvTranspose": 1},
                           "DedicatedQDQPair": False})
        return onnx.load(dst)


def to_fp16(model: Any, fp16_io: bool) -> Any:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    return toposort(convert_float_to_float16(model, keep_io_types=not fp16_io, disable_shape_infer=False))


def toposort(model: Any) -> Any:
    """Nodes in dependency order, as the ONNX spec (and TensorRT's parser) require; the float16 converter appends
    its I/O casts at the end. Stable: nodes keep their order where the dependencies allow."""
    g = model.graph
    ready = {i.name for i in g.input} | {i.name for i in g.initializer} | {""}
    pending = list(g.node)
    ordered = []
    while pending:
        rest = []
        for n in pending:
            if all(x in ready for x in n.input):
                ordered.append(n)
                ready.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            raise ValueError(f"the graph has a cycle or a missing input at {[n.name for n in rest[:3]]}")
        pending = rest
    nodes = [type(n)() for n in ordered]
    for new, old in zip(nodes, ordered, strict=True):
        new.CopyFrom(old)
    del g.node[:]
    g.node.extend(nodes)
    return model


def keep_fp16(model: Any, nodes: Sequence[str]) -> Any:
    """Each named node computes in float16: float16 weights, a Cast to float16 on each float input, and a Cast back
    to float32 on each output, so the rest of the graph is untouched."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    inferred = onnx.shape_inference.infer_shapes(model).graph
    types = {vi.name: vi.type.tensor_type.elem_type for vi in [*inferred.value_info, *inferred.input, *inferred.output]}
    users: dict[str, int] = {}
    for n in g.node:
        for x in n.input:
            users[x] = users.get(x, 0) + 1
    wanted = set(nodes)
    new_nodes = []
    for n in g.node:
        if n.name not in wanted:
            new_nodes.append(n)
            continue
        for i, x in enumerate(n.input):
            if not x:
                continue
            if x in inits:
                arr = numpy_helper.to_array(inits[x])
                if arr.dtype != np.float32:
                    continue
                name = x if users[x] == 1 else f"{x}_fp16_{n.name}"
                half = numpy_helper.from_array(arr.astype(np.float16), name)
                if name == x:
                    inits[x].CopyFrom(half)
                else:
                    g.initializer.append(half)
                n.input[i] = name
            elif types.get(x, TensorProto.FLOAT) != TensorProto.FLOAT:
                continue  # integer inputs (an LSTM's sequence lengths), shapes: left as they are
            else:
                cast = f"{x}_to_fp16_{n.name}"
                new_nodes.append(helper.make_node("Cast", [x], [cast], name=f"{n.name}_cast_in{i}",
                                                  to=TensorProto.FLOAT16))
                n.input[i] = cast
        outs = list(n.output)
        for i, y in enumerate(outs):
            if y:
                n.output[i] = f"{y}_fp16"
        new_nodes.append(n)
        for i, y in enumerate(outs):
            if y:
                new_nodes.append(helper.make_node("Cast", [f"{y}_fp16"], [y], name=f"{n.name}_cast_out{i}",
                                              to=TensorProto.FLOAT))
    del g.node[:]
    g.node.extend(new_nodes)
    del g.value_info[:]  # types inferred before the change (float32 where there is float16 now); re-inferred on load
    return toposort(model)
