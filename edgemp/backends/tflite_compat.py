"""Artifacts every LiteRT/TFLite runtime can load: constant data inside the flatbuffer, 16-byte aligned.

The AI Edge Quantizer always writes constant buffers after the flatbuffer and points at them by offset and size
(a format meant for models past the 2 GB flatbuffer limit). Runtimes older than that format see those weights
without data: tflite-runtime 2.13 — the last release that installs on glibc < 2.34, i.e. JetPack 5 / Ubuntu 20.04
— fails with "Input tensor N lacks data". Edge models are far below 2 GB, so edgemp moves the data back inside
the flatbuffer, as the TFLite converter itself writes models, aligned to 16 bytes as the schema asks
(`data: [ubyte] (force_align: 16)`). Values are untouched: tests check that both forms give identical outputs.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import numpy as np

log = logging.getLogger(__name__)
MAX_INLINE_BYTES = 2**31 - 2**24  # stay clear of the flatbuffer limit, with room for the graph itself


def has_external_buffers(model: bytes) -> bool:
    from edgemp.backends.tflite_census import _schema

    m = _schema()[0].ModelT.InitFromPackedBuf(model, 0)
    return any((b.offset or 0) > 1 for b in m.buffers or [])


def inline_buffers(model: bytes) -> bytes:
    """The same model with every offset/size buffer stored inline (unchanged if there are none, or if too big)."""
    from edgemp.backends.tflite_census import _schema

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
