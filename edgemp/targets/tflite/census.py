"""An honest census of a .tflite: every op with the dtypes it really computes in, weights, I/O quantization.

Read from the flatbuffer itself (the schema shipped with ai_edge_litert), so it sees every subgraph and every
constant, not just what an interpreter exposes after delegation.
"""

from __future__ import annotations

import collections
import dataclasses
from functools import cache
from typing import Any


from edgemp.errors import NotATFLiteModelError

WEIGHTED_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV", "CONV_3D", "BATCH_MATMUL")
FLOAT_COMPUTE = ("float32", "float16", "hybrid-int8", "weight-dequantize")


@cache
def _schema() -> tuple[Any, dict[int, str], dict[int, str]]:
    from ai_edge_litert import schema_py_generated as schema

    ops = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    types = {v: k.lower() for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    return schema, ops, types


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]
    constant: bool
    scale: tuple[float, ...] = ()
    zero_point: tuple[int, ...] = ()
    quantized_dimension: int = 0

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}
        if self.scale:
            d["quantization"] = {"scale": list(self.scale), "zero_point": list(self.zero_point),
                                 "quantized_dimension": self.quantized_dimension}
        return d


@dataclasses.dataclass(frozen=True)
class OpInfo:
    subgraph: int
    index: int
    op: str
    compute: str  # int8 | int16 | float32 | float16 | hybrid-int8 | weight-dequantize | quantize | dequantize | int32 ...
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]

    def describe(self) -> str:
        ins = ",".join(t.dtype for t in self.inputs)
        outs = ",".join(t.dtype for t in self.outputs)
        return f"#{self.index} {self.op} ({ins} -> {outs}) {self.outputs[0].name if self.outputs else ''}".rstrip()


@dataclasses.dataclass(frozen=True)
class IOSpec:
    name: str  # signature name (what app code passes)
    tensor: str  # tensor name in the graph
    shape: tuple[int, ...]  # -1 = dynamic
    dtype: str
    scale: float | None
    zero_point: int | None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"shape": list(self.shape)}


@dataclasses.dataclass(frozen=True)
class Census:
    size_bytes: int
    ops: tuple[OpInfo, ...]
    inputs: tuple[IOSpec, ...]
    outputs: tuple[IOSpec, ...]

    @property
    def op_counts(self) -> dict[str, int]:
        return dict(sorted(collections.Counter(o.op for o in self.ops).items()))

    @property
    def compute_counts(self) -> dict[str, int]:
        return dict(sorted(collections.Counter(o.compute for o in self.ops).items()))

    def weights(self) -> list[tuple[OpInfo, TensorInfo]]:
        """The weight (filter) tensor of every weighted op. A weight is a constant buffer, or a float tensor
        DEQUANTIZEd from one (fp16 weights): never an activation, such as both operands of the BATCH_MATMULs of
        attention (Q·Kᵀ, scores·V) or a FULLY_CONNECTED fed by another op."""
        dequantized = {(o.subgraph, o.outputs[0].name) for o in self.ops if o.compute == "weight-dequantize" and o.outputs}
        out = []
        for o in self.ops:
            if o.op in WEIGHTED_OPS and len(o.inputs) > 1:
                w = o.inputs[1]
                if w.constant or (o.subgraph, w.name) in dequantized:
                    out.append((o, w))
        return out

    @property
    def weight_dtypes(self) -> dict[str, int]:
        return dict(sorted(collections.Counter(_weight_dtype(o, w, self) for o, w in self.weights()).items()))

    @property
    def per_channel_weights(self) -> dict[str, int]:
        c: collections.Counter[str] = collections.Counter()
        for _, w in self.weights():
            if w.dtype in ("int8", "int4", "int16"):
                c["per_channel" if len(w.scale) > 1 or _channels(w) == 1 else "per_tensor"] += 1
        return dict(c)

    @property
    def tensor_dtypes(self) -> dict[str, int]:
        seen: dict[tuple[int, str], str] = {}
        for o in self.ops:
            for t in (*o.inputs, *o.outputs):
                seen[(o.subgraph, t.name)] = t.dtype
        return dict(sorted(collections.Counter(seen.values()).items()))

    @property
    def transpose_count(self) -> int:
        return sum(1 for o in self.ops if o.op == "TRANSPOSE")

    def float_compute_ops(self, allow_io_boundaries: bool) -> list[OpInfo]:
        """Ops that compute in float (or convert to/from float) — what an int8/int16x8 model must not have.

        With float I/O requested, the QUANTIZE right after a graph input and the DEQUANTIZE right before a graph
        output are the allowed boundaries; any other boundary means float compute inside the graph.
        """
        io_in = {i.tensor for i in self.inputs}
        io_out = {o.tensor for o in self.outputs}
        bad = []
        for o in self.ops:
            if o.compute == "quantize" and allow_io_boundaries and o.inputs[0].name in io_in:
                continue
            if o.compute == "dequantize" and allow_io_boundaries and o.outputs[0].name in io_out:
                continue
            if o.compute in (*FLOAT_COMPUTE, "quantize", "dequantize"):
                bad.append(o)
        return bad

    def to_dict(self) -> dict[str, Any]:
        return {
            "size_bytes": self.size_bytes,
            "num_ops": len(self.ops),
            "op_counts": self.op_counts,
            "compute_counts": self.compute_counts,
            "tensor_dtypes": self.tensor_dtypes,
            "weight_dtypes": self.weight_dtypes,
            "per_channel_weights": self.per_channel_weights,
            "transpose_count": self.transpose_count,
            "inputs": [i.to_dict() for i in self.inputs],
            "outputs": [o.to_dict() for o in self.outputs],
            "ops": [
                {"subgraph": o.subgraph, "index": o.index, "op": o.op, "compute": o.compute,
                 "inputs": [t.dtype for t in o.inputs], "outputs": [t.dtype for t in o.outputs],
                 "output_names": [t.name for t in o.outputs]}
                for o in self.ops
            ],
        }


def census(model: bytes) -> Census:
    schema, opnames, typenames = _schema()
    if len(model) < 8 or model[4:8] != b"TFL3":
        raise NotATFLiteModelError(
            "not a TFLite flatbuffer (missing the 'TFL3' identifier): pass a .tflite file written by a converter."
        )
    try:  # a corrupt or hostile file may break the flatbuffer walk anywhere: one typed error for all of it
        m = schema.ModelT.InitFromPackedBuf(model, 0)
        ops, (inputs, outputs) = _ops(m, opnames, typenames), _io(m, typenames)
    except Exception as exc:  # noqa: BLE001
        raise NotATFLiteModelError(f"the TFLite flatbuffer is corrupt or truncated ({type(exc).__name__}: "
                                   f"{str(exc)[:200]}); convert the model again.") from exc
    return Census(len(model), tuple(ops), inputs, outputs)


def _ops(m: Any, opnames: dict[int, str], typenames: dict[int, str]) -> list[OpInfo]:
    ops: list[OpInfo] = []
    for si, sg in enumerate(m.subgraphs or []):
        tensors = [_tensor(t, m, typenames) for t in (sg.tensors or [])]
        for oi, op in enumerate(sg.operators or []):
            code = m.operatorCodes[op.opcodeIndex]
            name = opnames.get(max(code.builtinCode, code.deprecatedBuiltinCode), "UNKNOWN")
            if name == "CUSTOM" and code.customCode:
                name = f"CUSTOM:{code.customCode.decode(errors='replace')}"
            ins = tuple(tensors[i] for i in (op.inputs if op.inputs is not None else []) if i >= 0)
            outs = tuple(tensors[i] for i in (op.outputs if op.outputs is not None else []) if i >= 0)
            ops.append(OpInfo(si, oi, name, _compute(name, ins, outs), ins, outs))
    return ops


def _tensor(t: Any, m: Any, typenames: dict[int, str]) -> TensorInfo:
    buf = m.buffers[t.buffer] if m.buffers and t.buffer < len(m.buffers) else None
    constant = buf is not None and ((buf.data is not None and len(buf.data) > 0) or bool(getattr(buf, "size", 0)))
    q = t.quantization
    scale = tuple(float(s) for s in q.scale) if q is not None and q.scale is not None else ()
    zp = tuple(int(z) for z in q.zeroPoint) if q is not None and q.zeroPoint is not None else ()
    shape = tuple(int(d) for d in t.shape) if t.shape is not None else ()
    return TensorInfo((t.name or b"").decode(errors="replace"), typenames.get(t.type, str(t.type)), shape, constant,
                      scale, zp, int(q.quantizedDimension) if q is not None else 0)


def _compute(op: str, ins: tuple[TensorInfo, ...], outs: tuple[TensorInfo, ...]) -> str:
    acts = [t for t in ins if not t.constant] + list(outs)
    dtypes = {t.dtype for t in acts}
    if op == "QUANTIZE":
        return "quantize" if ins and ins[0].dtype.startswith("float") else (outs[0].dtype if outs else "int8")
    if op == "DEQUANTIZE":
        return "weight-dequantize" if ins and ins[0].constant else "dequantize"
    if "float32" in dtypes or "float16" in dtypes:
        if any(t.constant and t.dtype in ("int8", "int4") for t in ins):
            return "hybrid-int8"
        return "float16" if "float32" not in dtypes else "float32"
    for dt in ("int16", "int8", "uint8"):
        if dt in dtypes:
            return dt
    return sorted(dtypes)[0] if dtypes else "none"


def _io(m: Any, typenames: dict[int, str]) -> tuple[tuple[IOSpec, ...], tuple[IOSpec, ...]]:
    sg = m.subgraphs[0]
    sig = m.signatureDefs[0] if m.signatureDefs else None

    def spec(name: str, idx: int) -> IOSpec:
        t = sg.tensors[idx]
        shape = t.shapeSignature if t.shapeSignature is not None and len(t.shapeSignature) else t.shape
        q = t.quantization
        has_q = q is not None and q.scale is not None and len(q.scale) > 0
        return IOSpec(name, (t.name or b"").decode(errors="replace"), tuple(int(d) for d in (shape if shape is not None else [])),
                      typenames.get(t.type, str(t.type)), float(q.scale[0]) if has_q else None,
                      int(q.zeroPoint[0]) if has_q else None)

    if sig is not None and sig.subgraphIndex == 0:
        ins = tuple(spec(tm.name.decode(errors="replace"), tm.tensorIndex) for tm in sig.inputs)
        outs = tuple(spec(tm.name.decode(errors="replace"), tm.tensorIndex)
                     for tm in sorted(sig.outputs, key=lambda x: x.name))
        by_index = {tm.tensorIndex: tm.name.decode(errors="replace") for tm in sig.inputs}
        ins = tuple(sorted(ins, key=lambda s: list(by_index.values()).index(s.name)))
        return ins, outs
    ins = tuple(spec((sg.tensors[i].name or b"").decode(errors="replace"), i) for i in sg.inputs)
    outs = tuple(spec((sg.tensors[i].name or b"").decode(errors="replace"), i) for i in sg.outputs)
    return ins, outs


def _weight_dtype(op: OpInfo, w: TensorInfo, c: Census) -> str:
    """A float32 weight fed by a DEQUANTIZE of a constant is really stored as that constant's dtype."""
    if w.constant:
        return w.dtype
    for o in c.ops:
        if o.subgraph == op.subgraph and o.compute == "weight-dequantize" and o.outputs and o.outputs[0].name == w.name:
            return o.inputs[0].dtype
    return w.dtype


def _channels(w: TensorInfo) -> int:
    return int(w.shape[w.quantized_dimension]) if w.shape else 1


def io_quant_params(spec: IOSpec) -> tuple[float, int] | None:
    return (spec.scale, spec.zero_point) if spec.scale and spec.dtype in ("int8", "int16", "uint8") else None


