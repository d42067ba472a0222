"""What an artifact is fed, checked before LiteRT meets it: token ids against the model's embedding tables, shapes of
dynamic inputs; and LiteRT failures explained in terms of the data ("gather index out of bounds" becomes "token id
5012 >= vocabulary size 5000 in input 'ids'")."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from edgemp.config import RuntimeOptions
from edgemp.errors import DataError, EdgempError


def _litert_text(exc: BaseException) -> str:
    """LiteRT's message in one line ("...runtimeNode number 3 (X) failed..." -> "...runtime; node 3 (X) failed...")."""
    import re

    text = " ".join(str(exc).split()) or type(exc).__name__
    text = re.sub(r"(?<=\S)Node number", "; node", text)
    text = re.sub(r"(?<=[a-z)])\.(?=[A-Za-z])", "; ", text)
    parts = [p.strip().rstrip(".") for p in text.split(";") if p.strip().rstrip(".")]
    seen: list[str] = []
    for p in parts:  # LiteRT repeats the same failure once per attempt
        if p not in seen:
            seen.append(p)
    return "; ".join(seen)[:600]


def _shape_message(dynamic: Mapping[str, tuple[int, ...]], shapes: Mapping[str, tuple[int, ...]],
                   exc: BaseException) -> str:
    given = ", ".join(f"{k!r} {tuple(v)}" for k, v in shapes.items()) or "its placeholder shape"
    dims = ", ".join(f"{k!r} {_fmt(sig)}" for k, sig in dynamic.items())
    return (f"the artifact cannot run at input shape {given}: LiteRT could not prepare its graph for it "
            f"({_litert_text(exc)}). The model has dynamic input dimensions ({dims}), and this size is not one its ops "
            "accept: too small for its convolutions/pooling, or not a multiple of its strides. Validate (and calibrate) "
            "with data of the size the model is used at, or give the model a fixed input size "
            "(e.g. keras.Input((224, 224, 3))) before converting.")


def _fmt(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join("?" if d < 0 else str(d) for d in shape) + ")"


def _token_message(name: str, arr: np.ndarray, table: LookupTable, offset: int = 0) -> str:
    where = np.argwhere(arr >= table.rows)[0]
    value = int(arr[tuple(where)])
    return (f"token id {value} >= vocabulary size {table.rows} in input {name!r} (sample {offset + int(where[0])}, "
            f"position {tuple(int(i) for i in where[1:])}): the embedding table it indexes ({table.tensor!r}, "
            f"{table.op} op #{table.index}) has {table.rows} rows, ids 0..{table.rows - 1}. Tokenize with the "
            "vocabulary the model was trained with, mapping unknown tokens to its out-of-vocabulary id.")


def check_token_ids(model: bytes, samples: Any, error: type[EdgempError] = DataError) -> None:
    """Refuse ids beyond the embedding tables of `model` (a .tflite) before LiteRT meets them ("gather index out of
    bounds"). `samples`: a list of samples (name -> array) or a dict of batched arrays. For calibration:
    check_token_ids(qbase, cal.samples, CalibrationError) before calibrate()."""
    tables = lookup_tables(model)
    if not tables:
        return
    batches = [samples] if isinstance(samples, Mapping) else list(samples)
    offset = 0
    for batch in batches:
        for name, found in tables.items():
            if name not in batch:
                continue
            arr = np.asarray(batch[name])
            if not arr.size or arr.dtype.kind not in "iuf":
                continue
            for table in found:
                if float(arr.max()) >= table.rows:
                    raise error(_token_message(name, arr, table, offset))
        offset += len(next(iter(batch.values()))) if batch else 0


def failure_hint(model: bytes, exc: BaseException) -> str:
    """A sentence explaining a LiteRT failure of `model` that the data or the model's input shape explains (for
    callers that run it through another interpreter, such as calibration); "" when nothing does."""
    text = _litert_text(exc).lower()
    try:
        from edgemp.validation.runtime import _dynamic_inputs, make_interpreter

        itp = make_interpreter(model, RuntimeOptions(), xnnpack=False, shapes=None)
        dynamic = _dynamic_inputs(itp)
    except EdgempError:
        dynamic = {}
    if dynamic and any(w in text for w in ("prepare", "reshape", "resize", "dimension")):
        dims = ", ".join(f"{k!r} {_fmt(v)}" for k, v in dynamic.items())
        return (f"The model has dynamic input dimensions ({dims}): LiteRT prepares it at a placeholder size (1 in each "
                "dynamic dimension) that its ops may not accept. Give the model a fixed input size (e.g. "
                "keras.Input((224, 224, 3))) before converting.")
    if "out of bound" in text:
        return ("An index computed from the inputs is out of range: check token ids against the vocabulary size of "
                "the embedding, and that no id is negative.")
    return ""


_PASS_THROUGH = ("CAST", "RESHAPE", "SQUEEZE", "EXPAND_DIMS", "TRANSPOSE", "IDENTITY")


@dataclasses.dataclass(frozen=True)
class LookupTable:
    """A table an integer input indexes (an embedding): `rows` valid indices 0..rows-1."""

    rows: int
    op: str  # GATHER or EMBEDDING_LOOKUP
    index: int  # op index in the main subgraph
    tensor: str  # the table's tensor name


def lookup_tables(model: bytes) -> dict[str, list[LookupTable]]:
    """Signature input name -> the tables its values index directly: the input reaches the indices of a GATHER
    (Keras Embedding, torch nn.Embedding) or the ids of an EMBEDDING_LOOKUP through ops that keep its values (CAST,
    RESHAPE, SQUEEZE, EXPAND_DIMS, TRANSPOSE, either branch of a SELECT). Read lazily from the flatbuffer."""
    try:
        from ai_edge_litert import schema_py_generated as schema

        m = schema.Model.GetRootAs(bytes(model), 0)
        if not m.SubgraphsLength():
            return {}
        return _tables(schema, m, m.Subgraphs(0))
    except Exception:  # a model this reader does not follow: no pre-check, LiteRT's own error is explained instead
        return {}


def _tables(schema: Any, m: Any, sg: Any) -> dict[str, list[LookupTable]]:
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    codes = []
    for i in range(m.OperatorCodesLength()):
        c = m.OperatorCodes(i)
        codes.append(names.get(max(c.BuiltinCode(), c.DeprecatedBuiltinCode()), "UNKNOWN"))
    inputs: dict[str, int] = {}
    sd = m.SignatureDefs(0) if m.SignatureDefsLength() else None
    if sd is not None and sd.SubgraphIndex() == 0:
        for j in range(sd.InputsLength()):
            inputs[sd.Inputs(j).Name().decode()] = int(sd.Inputs(j).TensorIndex())
    else:
        for i in range(sg.InputsLength()):
            inputs[(sg.Tensors(sg.Inputs(i)).Name() or b"").decode()] = int(sg.Inputs(i))
    consumers: dict[int, list[tuple[int, int]]] = {}
    for oi in range(sg.OperatorsLength()):
        op = sg.Operators(oi)
        for pos in range(op.InputsLength()):
            consumers.setdefault(int(op.Inputs(pos)), []).append((oi, pos))

    def shape(t: int) -> list[int]:
        tensor = sg.Tensors(t)
        return [int(tensor.Shape(k)) for k in range(tensor.ShapeLength())]

    found: dict[str, list[LookupTable]] = {}
    for name, start in inputs.items():
        stack, seen = [start], set()
        while stack:
            t = stack.pop()
            if t in seen:
                continue
            seen.add(t)
            for oi, pos in consumers.get(t, []):
                op = sg.Operators(oi)
                kind = codes[op.OpcodeIndex()]
                outs = [int(op.Outputs(k)) for k in range(op.OutputsLength())]
                if (kind in _PASS_THROUGH and pos == 0) or (kind in ("SELECT", "SELECT_V2") and pos in (1, 2)):
                    stack.extend(outs)
                    continue
                table = axis = None
                if kind == "GATHER" and pos == 1:
                    table, axis = int(op.Inputs(0)), 0
                    if op.BuiltinOptionsType() == schema.BuiltinOptions.GatherOptions:
                        opts, tab = schema.GatherOptions(), op.BuiltinOptions()
                        opts.Init(tab.Bytes, tab.Pos)
                        axis = int(opts.Axis())
                elif kind == "EMBEDDING_LOOKUP" and pos == 0:
                    table, axis = int(op.Inputs(1)), 0
                if table is None or table < 0:
                    continue
                dims = shape(table)
                if not dims or not -len(dims) <= axis < len(dims) or dims[axis] <= 0:
                    continue
                found.setdefault(name, []).append(
                    LookupTable(dims[axis], kind, oi, (sg.Tensors(table).Name() or b"").decode()))
    return found


