"""Exact float-graph rewrites that let the AI Edge Quantizer make a graph fully integer, run before calibration.

- NEG(x) -> MUL(x, -1): Keras' LayerNormalization writes `-mean` as NEG, which the quantizer (0.10) does not
  know: it stayed float between a DEQUANTIZE and a QUANTIZE in every ViT/ConvNeXt block (and LiteRT's own int8
  NEG gives wrong results with asymmetric parameters). MUL is in the static int8 policy and -1 is exact.
- SQUARE(x) -> MUL(x, x): LiteRT has no int8 SQUARE kernel ("Type INT8 is unsupported by op Square").
- Dead outputs: an op output nothing reads (the forget-gate slice at step 0 of an unrolled LSTM, where c0 = 0
  folded f*c0 away) is never allocated, and the calibrator, which reads every tensor, failed with "Tensor data is
  null. Run allocate_tensors() first". They are listed as extra subgraph outputs (not in the signature) for
  calibration and quantization; `drop_unsigned_outputs` removes them from the quantized model.

Tensor names are kept (calibration statistics and mixed-precision recipes are keyed by them); the float model's
outputs are bit-identical. Measured in /work/investigations (int8_families): see docs/families.md.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import numpy as np

from edgemp.targets.tflite.compat import _aligned


@dataclasses.dataclass(frozen=True)
class Prepared:
    """The float model as calibration and quantization see it, and what was changed."""

    model: bytes
    rewrites: dict[str, int]  # "NEG->MUL": 2, ...
    exposed: int  # dead tensors listed as extra outputs while quantizing

    def to_dict(self) -> dict[str, Any]:
        return {"rewrites": {k: v for k, v in self.rewrites.items() if v}, "dead_outputs_exposed": self.exposed}


def prepare_for_quantization(float_tflite: bytes) -> Prepared:
    from edgemp.targets.tflite.census import _schema

    schema = _schema()[0]
    m = schema.ModelT.InitFromPackedBuf(float_tflite, 0)
    if any((b.offset or 0) > 1 for b in m.buffers or []):
        return Prepared(float_tflite, {}, 0)  # external buffers would be lost in a ModelT round trip
    counts = {"NEG->MUL": _neg_to_mul(m, schema), "SQUARE->MUL": _square_to_mul(m, schema),
              "FULLY_CONNECTED bias -> 1-D": _flat_fc_biases(m, schema)}
    exposed = _expose_dead_outputs(m)
    if not any(counts.values()) and not exposed:
        return Prepared(float_tflite, counts, 0)
    return Prepared(pack(m, len(float_tflite)), counts, exposed)


@functools.lru_cache(maxsize=8)
def has_unsigned_outputs(model: bytes) -> bool:
    from edgemp.targets.tflite.census import _schema

    m = _schema()[0].Model.GetRootAs(model, 0)
    if not m.SignatureDefsLength():
        return False
    sig = m.SignatureDefs(0)
    return m.Subgraphs(sig.SubgraphIndex()).OutputsLength() > sig.OutputsLength()


def drop_unsigned_outputs(model: bytes) -> bytes:
    """Remove subgraph outputs the signature does not name (the dead tensors exposed for calibration), and the
    QUANTIZE/DEQUANTIZE ops the quantizer added for them only."""
    from edgemp.targets.tflite.census import _schema

    schema = _schema()[0]
    m = schema.ModelT.InitFromPackedBuf(model, 0)
    if not m.signatureDefs or any((b.offset or 0) > 1 for b in m.buffers or []):
        return model
    sg = m.subgraphs[m.signatureDefs[0].subgraphIndex]
    named = {int(t.tensorIndex) for t in m.signatureDefs[0].outputs or []}
    outs = [int(t) for t in (sg.outputs if sg.outputs is not None else [])]
    keep = [t for t in outs if t in named]
    if len(keep) == len(outs):
        return model
    sg.outputs = np.array(keep, np.int32)
    converters = (schema.BuiltinOperator.QUANTIZE, schema.BuiltinOperator.DEQUANTIZE)
    while True:
        read = {int(t) for op in sg.operators for t in (op.inputs if op.inputs is not None else [])} | set(keep)
        dead = [op for op in sg.operators if _code(m, op) in converters
                and all(int(t) not in read for t in (op.outputs if op.outputs is not None else []))]
        if not dead:
            break
        sg.operators = [op for op in sg.operators if op not in dead]
    return pack(m, len(model))


def pack(m: Any, size_hint: int) -> bytes:
    """Repack a ModelT with constant data 16-byte aligned (the generated Pack aligns to 1 byte)."""
    import flatbuffers

    from edgemp.targets.tflite.census import _schema

    schema = _schema()[0]
    m.buffers = [_aligned(schema, b) for b in m.buffers or []]
    builder = flatbuffers.Builder(size_hint + 4096)
    builder.Finish(m.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _code(m: Any, op: Any) -> int:
    c = m.operatorCodes[op.opcodeIndex]
    return max(c.builtinCode, c.deprecatedBuiltinCode)


def _opcode(m: Any, schema: Any, builtin: int) -> int:
    for i, c in enumerate(m.operatorCodes):
        if max(c.builtinCode, c.deprecatedBuiltinCode) == builtin:
            return i
    code = schema.OperatorCodeT()
    code.builtinCode, code.deprecatedBuiltinCode, code.version = builtin, min(builtin, 127), 1
    m.operatorCodes.append(code)
    return len(m.operatorCodes) - 1


def _as_mul(op: Any, m: Any, schema: Any, inputs: list[int]) -> None:
    op.opcodeIndex = _opcode(m, schema, schema.BuiltinOperator.MUL)
    op.inputs = np.array(inputs, np.int32)
    op.builtinOptionsType = schema.BuiltinOptions.MulOptions
    opts = schema.MulOptionsT()
    opts.fusedActivationFunction = schema.ActivationFunctionType.NONE
    op.builtinOptions = opts


def _neg_to_mul(m: Any, schema: Any) -> int:
    n = 0
    for sg in m.subgraphs or []:
        for op in sg.operators or []:
            if _code(m, op) != schema.BuiltinOperator.NEG or sg.tensors[op.inputs[0]].type != schema.TensorType.FLOAT32:
                continue
            buf = schema.BufferT()
            buf.data = np.frombuffer(np.float32(-1.0).tobytes(), np.uint8)
            m.buffers.append(buf)
            t = schema.TensorT()
            t.shape, t.type, t.buffer = np.array([1], np.int32), schema.TensorType.FLOAT32, len(m.buffers) - 1
            t.name = (sg.tensors[op.outputs[0]].name or b"neg") + b"/neg_as_mul"
            sg.tensors.append(t)
            _as_mul(op, m, schema, [int(op.inputs[0]), len(sg.tensors) - 1])
            n += 1
    return n


def _square_to_mul(m: Any, schema: Any) -> int:
    n = 0
    for sg in m.subgraphs or []:
        for op in sg.operators or []:
            if _code(m, op) == schema.BuiltinOperator.SQUARE and sg.tensors[op.inputs[0]].type == schema.TensorType.FLOAT32:
                _as_mul(op, m, schema, [int(op.inputs[0]), int(op.inputs[0])])
                n += 1
    return n


def _flat_fc_biases(m: Any, schema: Any) -> int:
    """A FULLY_CONNECTED bias of shape (1, ..., 1, C) -> (C,), the same data. The converter writes such biases when it
    folds a per-channel scale into the layer (ConvNeXt's LayerScale); the quantizer then gives the bias C scales along
    its first dimension, of size 1, and LiteRT refuses the model ("num_scales must be 1 ... but got 64")."""
    n = 0
    for sg in m.subgraphs or []:
        for op in sg.operators or []:
            if _code(m, op) != schema.BuiltinOperator.FULLY_CONNECTED or op.inputs is None or len(op.inputs) < 3 \
                    or op.inputs[2] < 0:
                continue
            t = sg.tensors[op.inputs[2]]
            shape = [int(d) for d in (t.shape if t.shape is not None else [])]
            if len(shape) > 1 and all(d == 1 for d in shape[:-1]):
                t.shape = np.array(shape[-1:], np.int32)
                if t.shapeSignature is not None and len(t.shapeSignature):
                    t.shapeSignature = np.array(shape[-1:], np.int32)
                n += 1
    return n


def _expose_dead_outputs(m: Any) -> int:
    sg = m.subgraphs[0]
    read = {int(t) for op in sg.operators or [] for t in (op.inputs if op.inputs is not None else [])}
    outs = [int(t) for t in (sg.outputs if sg.outputs is not None else [])]
    dead = [int(t) for op in sg.operators or [] for t in (op.outputs if op.outputs is not None else [])
            if int(t) >= 0 and int(t) not in read and int(t) not in outs]
    if dead:
        sg.outputs = np.array(outs + dead, np.int32)
    return len(dead)


def constants_to_fp16(model: bytes) -> tuple[bytes, int]:
    """The float32 constants the quantizer's float16 casting leaves (biases; the MUL/ADD constants of batch norms
    that could not be folded) stored as float16 and DEQUANTIZEd at load, as the TF converter's fp16 does: the
    quantizer casts only the weight operand of conv/fully-connected/embedding ops, which left edgemp's fp16
    artifacts up to 0.4% larger than the converter's. Values beyond float16's range stay float32."""
    from edgemp.targets.tflite.census import _schema

    schema = _schema()[0]
    m = schema.ModelT.InitFromPackedBuf(model, 0)
    if any((b.offset or 0) > 1 for b in m.buffers or []):
        return model, 0
    dq = None
    empty = None
    count = 0
    for sg in m.subgraphs or []:
        read = {int(t) for op in sg.operators or [] for t in (op.inputs if op.inputs is not None else [])}
        produced = {int(t) for op in sg.operators or [] for t in (op.outputs if op.outputs is not None else [])}
        io = {int(t) for t in (sg.inputs if sg.inputs is not None else [])} | \
            {int(t) for t in (sg.outputs if sg.outputs is not None else [])}
        new_ops = []
        for ti, t in enumerate(sg.tensors or []):
            if t.type != schema.TensorType.FLOAT32 or ti not in read or ti in produced or ti in io or t.isVariable:
                continue
            buf = m.buffers[t.buffer] if t.buffer < len(m.buffers) else None
            if buf is None or buf.data is None or not len(buf.data):
                continue
            values = np.frombuffer(bytes(np.asarray(buf.data, np.uint8)), np.float32)
            if not np.all(np.isfinite(values)) or np.any(np.abs(values) > 65504):
                continue
            if dq is None:
                dq = _opcode(m, schema, schema.BuiltinOperator.DEQUANTIZE)
                empty = len(m.buffers)
                m.buffers.append(schema.BufferT())
            half = schema.BufferT()
            half.data = np.frombuffer(values.astype(np.float16).tobytes(), np.uint8)
            m.buffers.append(half)
            t16 = schema.TensorT()
            t16.shape, t16.type, t16.buffer = t.shape, schema.TensorType.FLOAT16, len(m.buffers) - 1
            t16.name = (t.name or b"const") + b"_fp16"
            sg.tensors.append(t16)
            t.buffer = empty
            op = schema.OperatorT()
            op.opcodeIndex, op.inputs, op.outputs = dq, np.array([len(sg.tensors) - 1], np.int32), np.array([ti], np.int32)
            new_ops.append(op)
            count += 1
        sg.operators = new_ops + list(sg.operators or [])
    return (pack(m, len(model)), count) if count else (model, 0)
