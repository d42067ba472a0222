"""What each compute node of an ONNX graph runs in, read from the graph (not from how it was made), so the label
is honest: a Conv/ConvTranspose/Gemm/MatMul is int8 only when every one of its data inputs comes through a
DequantizeLinear of int8 data (TensorRT then runs it in INT8); otherwise it computes in the float type of its input.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any

import numpy as np

from edgemp.targets.onnx.qdq import QUANTIZED_OPS, RECURRENT_OPS
from edgemp.validation.checks import Check

COMPUTE_OPS = (*QUANTIZED_OPS, *RECURRENT_OPS)  # ops with weights: what a precision label is about

_INT8 = 3  # onnx.TensorProto.INT8
_FLOAT16 = 10


@dataclasses.dataclass
class OnnxCensus:
    nodes: list[dict[str, Any]]  # compute nodes: name, op, layer, compute, weight_dtype
    op_counts: dict[str, int]
    quantize_nodes: int
    dequantize_nodes: int
    nonzero_zero_points: list[str]
    weight_dtypes: dict[str, int]  # dtype of the weights of compute nodes -> count
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]

    @property
    def compute_counts(self) -> dict[str, int]:
        return dict(Counter(n["compute"] for n in self.nodes))

    def to_dict(self) -> dict[str, Any]:
        return {"compute_counts": self.compute_counts, "quantize_nodes": self.quantize_nodes,
                "dequantize_nodes": self.dequantize_nodes, "nonzero_zero_points": self.nonzero_zero_points,
                "weight_dtypes": self.weight_dtypes, "op_counts": self.op_counts, "inputs": self.inputs,
                "outputs": self.outputs, "nodes": self.nodes}


def census(model: Any, layers: dict[str, str] | None = None) -> OnnxCensus:
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.shape_inference.infer_shapes(model)
    g = model.graph
    every = list(walk(g))  # loop and branch bodies too: their MatMuls are compute like any other
    inits = {i.name: i for sub in subgraphs(g) for i in sub.initializer}
    producer = {o: n for n in every for o in n.output}
    types = {vi.name: vi.type.tensor_type.elem_type for sub in subgraphs(g)
             for vi in [*sub.value_info, *sub.input, *sub.output]}
    types |= {k: v.data_type for k, v in inits.items()}
    for n in every:  # Cast and Constant outputs whose inferred type is missing
        if n.op_type == "Cast":
            types.setdefault(n.output[0], next(a.i for a in n.attribute if a.name == "to"))

    def int8_data(t: str) -> bool:
        if t in inits:
            return inits[t].data_type == _INT8
        p = producer.get(t)
        return p is not None and p.op_type == "QuantizeLinear" and len(p.input) > 2 and types.get(p.input[2]) == _INT8

    def through_dq(t: str) -> bool:
        p = producer.get(t)
        return p is not None and p.op_type == "DequantizeLinear" and int8_data(p.input[0])

    def dtype_name(code: int) -> str:
        return helper.tensor_dtype_to_np_dtype(code).name

    def source_dtype(t: str) -> str | None:
        """The stored type of a weight: an initializer, or the data behind a DequantizeLinear / Cast of one; a float
        initializer quantized by a Q/DQ pair in the graph (TensorRT folds it) is 'float32 (Q/DQ)'."""
        if t in inits:
            return dtype_name(inits[t].data_type)
        p = producer.get(t)
        if p is None or p.op_type not in ("DequantizeLinear", "Cast", "Identity"):
            return None
        if p.input[0] in inits:
            return dtype_name(inits[p.input[0]].data_type)
        q = producer.get(p.input[0])
        if p.op_type == "DequantizeLinear" and q is not None and q.op_type == "QuantizeLinear" and q.input[0] in inits:
            return dtype_name(inits[q.input[0]].data_type) + " (Q/DQ)"
        return None

    nodes = []
    weights: Counter[str] = Counter()
    inner = {id(n) for n in every} - {id(n) for n in g.node}
    for n in every:
        if n.op_type not in COMPUTE_OPS:
            continue
        data = [x for x in n.input[:2] if x]
        if data and all(through_dq(x) for x in data):
            compute = "int8"
        else:
            compute = {_FLOAT16: "float16"}.get(types.get(data[0], 1), "float32")
        wname = next((w for x in data if (w := source_dtype(x)) is not None), "activation")
        weights[wname] += 1
        nodes.append({"name": n.name, "op": n.op_type, "layer": (layers or {}).get(n.name), "compute": compute,
                      "weight_dtype": wname} | ({"in_subgraph": True} if id(n) in inner else {}))
    bad_zp = []
    for n in every:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2 and n.input[2] in inits:
            if np.any(numpy_helper.to_array(inits[n.input[2]]) != 0):
                bad_zp.append(n.name)

    def io(vis: Any) -> list[dict[str, Any]]:
        return [{"name": v.name, "dtype": helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name,
                 "shape": [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                           for d in v.type.tensor_type.shape.dim]} for v in vis if v.name not in inits]

    ops = Counter(n.op_type for n in every)
    return OnnxCensus(nodes, dict(sorted(ops.items())), ops["QuantizeLinear"], ops["DequantizeLinear"], bad_zp,
                      dict(weights), io(g.input), io(g.output))


def subgraphs(g: Any) -> list[Any]:
    """The graph and every graph nested in its nodes' attributes (Loop, Scan and If bodies)."""
    out = [g]
    for n in g.node:
        for a in n.attribute:
            for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                out += subgraphs(sub)
    return out


def walk(g: Any) -> Any:
    for sub in subgraphs(g):
        yield from sub.node


def label_checks(c: OnnxCensus, precision: str, fp16_nodes: set[str] | None = None) -> list[Check]:
    """What makes the label true for the ONNX graph: int8 = every compute node between Q/DQ with zero points 0;
    mixed = int8 except exactly the chosen nodes, which are float16; fp16 = float16 compute and weights."""
    counts = c.compute_counts
    names = {k: [n["name"] for n in c.nodes if n["compute"] == k] for k in ("int8", "float16", "float32")}

    def listed(k: str) -> str:
        shown = [f"{n['name']} ({n['op']}{', layer ' + n['layer'] if n.get('layer') else ''}"
                 f"{', inside a loop body' if n.get('in_subgraph') else ''})" for n in c.nodes if n["compute"] == k]
        return ", ".join(shown[:6]) + (" ..." if len(shown) > 6 else "")

    checks = []
    if precision == "fp32":
        checks.append(Check("onnx_fp32", not names["int8"] and not names["float16"] and not c.quantize_nodes,
                            f"{counts.get('float32', 0)} compute node(s) in float32, no Q/DQ"))
    elif precision == "fp16":
        ok = not names["float32"] and not names["int8"] and c.weight_dtypes.get("float32", 0) == 0
        checks.append(Check("onnx_fp16", ok, f"{counts.get('float16', 0)} compute node(s) in float16" if ok else
                            f"float32 compute or weights remain: {listed('float32')}"))
    elif precision in ("int8", "mixed"):
        want16 = (fp16_nodes or set()) if precision == "mixed" else set()
        wrong16 = sorted(set(names["float16"]) ^ want16)
        ok = bool(names["int8"]) and not names["float32"] and not wrong16
        detail = (f"{counts.get('int8', 0)} compute node(s) between Q/DQ (int8)"
                  + (f", {len(want16)} kept in float16 as chosen" if want16 else "")
                  + (f"; float32 compute: {listed('float32')}" if names["float32"] else "")
                  + (f"; float16 not as chosen: {', '.join(wrong16[:6])}" if wrong16 else "")
                  + ("; recurrent ops (LSTM/GRU/RNN) and loop bodies have no Q/DQ form: precision 'mixed' keeps "
                     "recurrent ops in FP16; a Keras recurrent layer needs a fixed sequence length to be unrolled"
                     if any(n["op"] in RECURRENT_OPS or n.get("in_subgraph") for n in c.nodes
                            if n["compute"] == "float32") else "")
                  + ("; no compute node is int8" if not names["int8"] else ""))
        checks.append(Check(f"onnx_{precision}", ok, detail))
        checks.append(Check("onnx_symmetric", not c.nonzero_zero_points,
                            "every zero point is 0 (TensorRT requires symmetric int8)" if not c.nonzero_zero_points
                            else f"non-zero zero points: {', '.join(c.nonzero_zero_points[:6])}"))
    return checks
