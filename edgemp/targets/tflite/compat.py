"""Artifacts every LiteRT/TFLite runtime can load: constant data inside the flatbuffer, 16-byte aligned.

The AI Edge Quantizer always writes constant buffers after the flatbuffer and points at them by offset and size
(a format meant for models past the 2 GB flatbuffer limit). Runtimes older than that format see those weights
without data: tflite-runtime 2.13 — the last release that installs on glibc < 2.34, i.e. JetPack 5 / Ubuntu 20.04
— fails with "Input tensor N lacks data". Edge models are far below 2 GB, so edgemp moves the data back inside
the flatbuffer, as the TFLite converter itself writes models, aligned to 16 bytes as the schema asks
(`data: [ubyte] (force_align: 16)`). Values are untouched: tests check that both forms give identical outputs.

compact() then takes out the bytes that are not weights: long tensor names and duplicate constants.
"""

from __future__ import annotations

import collections
import functools
import logging
import re
from typing import Any

import numpy as np

log = logging.getLogger(__name__)
MAX_INLINE_BYTES = 2**31 - 2**24  # stay clear of the flatbuffer limit, with room for the graph itself


def has_external_buffers(model: bytes) -> bool:
    from edgemp.targets.tflite.census import _schema

    m = _schema()[0].ModelT.InitFromPackedBuf(model, 0)
    return any((b.offset or 0) > 1 for b in m.buffers or [])


def inline_buffers(model: bytes) -> bytes:
    """The same model with every offset/size buffer stored inline (unchanged if there are none, or if too big)."""
    from edgemp.targets.tflite.census import _schema

    schema = _schema()[0]
    m = schema.ModelT.InitFromPackedBuf(model, 0)
    external = [b for b in m.buffers or [] if (b.offset or 0) > 1]
    if not external:
        return model
    if len(model) > MAX_INLINE_BYTES:
        log.warning("model is %d bytes: constant buffers stay outside the flatbuffer (runtimes older than "
                    "TF 2.15 / tflite-runtime 2.14 cannot load it)", len(model))
        return model
    for b in external:
        b.data = np.frombuffer(model, np.uint8, count=b.size, offset=b.offset)
        b.offset, b.size = 0, 0
    m.buffers = [_aligned(schema, b) for b in m.buffers]

    import flatbuffers

    builder = flatbuffers.Builder(len(model) + 4096)
    builder.Finish(m.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _aligned(schema: Any, buffer: Any) -> Any:
    out = _aligned_buffer_class(schema)()
    out.data, out.offset, out.size = buffer.data, buffer.offset, buffer.size
    return out


@functools.cache
def _aligned_buffer_class(schema: Any) -> type:
    """A BufferT whose data vector is packed with 16-byte alignment (the generated Pack uses 1)."""

    class AlignedBufferT(schema.BufferT):  # type: ignore[misc, name-defined]
        def Pack(self, builder: Any) -> Any:  # noqa: N802 (flatbuffers' name)
            data = None
            if self.data is not None and len(self.data):
                payload = np.ascontiguousarray(self.data, dtype=np.uint8).tobytes()
                builder.StartVector(1, len(payload), 16)
                builder.head = builder.head - len(payload)
                builder.Bytes[builder.head : builder.head + len(payload)] = payload
                builder.vectorNumElems = len(payload)
                data = builder.EndVector()
            schema.BufferStart(builder)
            if data is not None:
                schema.BufferAddData(builder, data)
            schema.BufferAddOffset(builder, self.offset or 0)
            schema.BufferAddSize(builder, self.size or 0)
            return schema.BufferEnd(builder)

    return AlignedBufferT


def compact(model: bytes) -> bytes:
    """The same model in fewer bytes: short tensor names, identical constants stored once. Values untouched.

    Why: edgemp's artifacts were up to 4 % larger than the official converters' with the same int8 weights.
    The bytes went to names, not weights (benchmarks/results/size_parity.md). litert-torch names every tensor
    with the full module path of every op fused into it (up to 1.3 KB per tensor) and the AI Edge Quantizer
    keeps those names; Keras models come with the model scope written twice. And the quantizer writes one
    buffer per tensor, where the TFLite/MLIR exporter stores identical constants (all-zero biases) once.

    What changes:
    - Tensor names. A name becomes its most telling part plus `#<tensor index>`, so names stay unique:
      `features.3.block.1.0#57` (litert-torch: the module path, as `edgemp analyze` names layers),
      `conv2d_1_2/convolution#4` (Keras/TF: the scope path without the doubled model scope, at most 3 levels).
      Pure index names (`t57`) would save 0.01-0.4 % more of the artifact (benchmarks/size_parity.py); readable
      names keep it debuggable in netron and `edgemp inspect --ops`, and the artifacts still come out at
      0.98-1.00x the official converters' (litert-torch PT2E, TFLiteConverter) on the benchmark's models.
      A name already as short as that, and unique, is kept. Graph input/output names and signature names
      (what app code passes) are kept, and no tensor is renumbered, so the signatures point at the same tensors.
    - Constant buffers with the same bytes, type and shape are stored once (quantization parameters live on the
      tensor, so biases with different scales may share, as in the MLIR exporter's output). Data-less tensors
      point at the empty buffer 0; unreferenced buffers go. Buffers of variables, resources, variable and
      hash-table ops, and metadata are left alone, and data of a tensor that an op or the caller writes is
      never shared.
    - Every buffer is 16-byte aligned, as the schema asks.

    A model with external (offset) buffers is returned unchanged: inline_buffers() first. So is a model this
    would not make smaller. Deterministic: the same bytes give the same bytes.
    Run it last: recipes, the mixed-precision search and census comparisons match the long names.
    """
    from edgemp.targets.tflite.census import _schema

    schema, opnames, _ = _schema()
    m = schema.ModelT.InitFromPackedBuf(model, 0)
    buffers = m.buffers or []
    if not buffers or any((b.offset or 0) > 1 for b in buffers):
        return model
    data = [np.asarray(b.data, np.uint8).tobytes() if b.data is not None else b"" for b in buffers]
    stateful, written = _pinned_buffers(m, schema, opnames)
    kinds: dict[int, set[tuple[int, tuple[int, ...]]]] = collections.defaultdict(set)
    for sg in m.subgraphs or []:
        for t in sg.tensors or []:
            kinds[t.buffer].add((t.type, tuple(int(d) for d in (t.shape if t.shape is not None else ()))))
    empty = 0 if not data[0] else next((i for i, d in enumerate(data) if not d and i not in stateful), None)
    remap, first = list(range(len(buffers))), {}
    for i, d in enumerate(data):
        if not d and i not in stateful and empty is not None:
            remap[i] = empty
        elif d and i not in stateful | written:
            remap[i] = first.setdefault((d, tuple(sorted(kinds[i]))), i)

    for si, sg in enumerate(m.subgraphs or []):
        keep = {int(i) for i in (*_ints(sg.inputs), *_ints(sg.outputs))}
        for sig in m.signatureDefs or []:
            if sig.subgraphIndex == si:
                keep |= {tm.tensorIndex for tm in (*(sig.inputs or []), *(sig.outputs or []))}
        tensors = sg.tensors or []
        taken = {tensors[i].name or b"" for i in keep if 0 <= i < len(tensors)}
        for ti, t in enumerate(tensors):
            t.buffer = remap[t.buffer]
            if ti in keep:
                continue
            old, new = t.name or b"", _short_name(t.name or b"", ti)
            name = old if len(old) <= len(new) and old not in taken else new
            while name in taken:
                name += b"_"
            taken.add(name)
            t.name = name

    used = sorted({0} | {t.buffer for sg in m.subgraphs or [] for t in sg.tensors or []}
                  | {md.buffer for md in m.metadata or []} | set(_ints(m.metadataBuffer)))
    index = {old: new for new, old in enumerate(used)}
    for sg in m.subgraphs or []:
        for t in sg.tensors or []:
            t.buffer = index[t.buffer]
    for md in m.metadata or []:
        md.buffer = index[md.buffer]
    if m.metadataBuffer is not None:
        m.metadataBuffer = [index[int(b)] for b in m.metadataBuffer]
    m.buffers = [_aligned(schema, buffers[old]) for old in used]

    import flatbuffers

    builder = flatbuffers.Builder(len(model) + 4096)
    builder.Finish(m.Pack(builder), file_identifier=b"TFL3")
    out = bytes(builder.Output())
    return out if len(out) < len(model) else model


_STATEFUL_OPS = ("VAR_HANDLE", "READ_VARIABLE", "ASSIGN_VARIABLE", "CALL_ONCE", "HASHTABLE", "HASHTABLE_FIND",
                 "HASHTABLE_IMPORT", "HASHTABLE_SIZE")
_QUALIFIED = re.compile(r"(?:[A-Za-z_]\w*\.)+[A-Za-z_]\w*")  # litert-torch's `pkg.module.Class_attr`
_NAME_MAX = 48


def _ints(v: Any) -> list[int]:
    return [] if v is None else [int(x) for x in v]


def _pinned_buffers(m: Any, schema: Any, opnames: dict[int, str]) -> tuple[set[int], set[int]]:
    """(buffers compact() leaves alone: metadata and those of variables, resources and the tensors of
    variable/hash-table ops; buffers of tensors written at run time (op outputs, subgraph inputs), whose data,
    if any, is never shared — when empty they may point at buffer 0 like any data-less tensor)."""
    stateful = {md.buffer for md in m.metadata or []} | set(_ints(m.metadataBuffer))
    written: set[int] = set()
    kinds = {schema.TensorType.RESOURCE, schema.TensorType.VARIANT}
    for sg in m.subgraphs or []:
        tensors = sg.tensors or []
        live, state = set(_ints(sg.inputs)), {i for i, t in enumerate(tensors) if t.isVariable or t.type in kinds}
        for op in sg.operators or []:
            code = m.operatorCodes[op.opcodeIndex]
            live |= set(_ints(op.outputs)) | set(_ints(op.intermediates))
            if opnames.get(max(code.builtinCode, code.deprecatedBuiltinCode)) in _STATEFUL_OPS:
                state |= set(_ints(op.inputs)) | set(_ints(op.outputs))
        stateful |= {tensors[i].buffer for i in state if 0 <= i < len(tensors)}
        written |= {tensors[i].buffer for i in live if 0 <= i < len(tensors)}
    return stateful - {0}, written - {0}


def _short_name(name: bytes, index: int) -> bytes:
    """`<most telling part of the name>#<index>`: of the names a converter joined with ';' the first with a
    scope path (the op's own output, usually), as a module path for litert-torch, else its last scope levels."""
    text = name.decode("utf-8", errors="replace")
    parts = [s for s in text.split(";") if s]
    comps = [c for c in next((s for s in parts if "/" in s), parts[0] if parts else "").split("/") if c]
    if len(comps) > 1 and all(_QUALIFIED.fullmatch(c) for c in comps[1:]):
        attrs = [c.rsplit(".", 1)[-1].partition("_")[2] for c in comps[1:]]
        if comps[0].endswith("ChannelLastIOWrapper") and attrs[:1] == ["wrapped"]:
            attrs = attrs[1:]
        comps = [".".join(a for a in attrs if a) or comps[-1].rsplit(".", 1)[-1]]
    elif len(comps) == 1 and _QUALIFIED.fullmatch(comps[0]) and comps[0].count(".") >= 2:
        comps = [comps[0].rsplit(".", 1)[-1]]  # a bare module: litert_torch....ChannelLastIOWrapper
    else:
        run = next((k for k, c in enumerate(comps) if c != comps[0]), len(comps))
        comps = comps[run:] if run > 1 else comps  # the model scope written twice
        comps = comps[-3:]
    while len(comps) > 1 and len("/".join(comps)) > _NAME_MAX:
        comps = comps[1:]
    base = "/".join(comps)[-_NAME_MAX:]
    return f"{base}#{index}".encode()
