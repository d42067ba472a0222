"""Intermediate results kept on disk between runs: the float .tflite of a model file, the calibration statistics, the
float model's reference outputs on the validation inputs and the per-tensor errors of an int8 model.

`edgemp analyze model.keras ...` followed by `edgemp convert model.keras -p mixed ...` (two processes) otherwise
converts, calibrates, runs the float model on the validation set and runs the full-INT8 model with preserved tensors
on the same model and data twice (benchmarks/results/analysis_profile_*.md). Entries are keyed by everything they
depend on (the file's bytes, the samples, edgemp's version) under `<EDGEMP_CACHE>/<kind>/`, written atomically, no
pickle (.npz read with allow_pickle=False, or JSON), and each kind is kept under a size limit (oldest first). A
damaged entry is a miss. EDGEMP_ARTIFACT_CACHE=0 turns it off.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
import os
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgemp import __version__
from edgemp._io import write_atomic
from edgemp.errors import EdgempError

# what reading a damaged or truncated .npz raises (np.load opens it as a zip): a miss, never an error
_DAMAGED = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile)
LIMITS = {"float": 1024 * 2**20, "statistics": 64 * 2**20, "reference": 256 * 2**20,
          "tensor_errors": 16 * 2**20}


def enabled() -> bool:
    return os.environ.get("EDGEMP_ARTIFACT_CACHE", "1") not in ("0", "false", "no", "off")


def root(kind: str) -> Path:
    return Path(os.environ.get("EDGEMP_CACHE", Path.home() / ".cache" / "edgemp")) / kind


def file_digest(path: str | os.PathLike[str]) -> str | None:
    """sha256 of a model file (a folder: of every file in it, by relative path), None if it cannot be read. Read once
    per process while its files keep their sizes and modification times (a conversion asks twice: whether the float
    model is cached, then for it)."""
    p = Path(path)
    try:
        files = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
        stamp = tuple((str(f), f.stat().st_mtime_ns, f.stat().st_size) for f in files)
    except OSError:
        return None
    return _digest(str(p), stamp)


@functools.lru_cache(maxsize=16)
def _digest(path: str, stamp: tuple[tuple[str, int, int], ...]) -> str | None:
    p = Path(path)
    h = hashlib.sha256(f"edgemp {__version__}".encode())
    try:
        for f in (Path(name) for name, _, _ in stamp):
            h.update(str(f.relative_to(p) if p.is_dir() else f.name).encode())
            with f.open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
    except OSError:
        return None
    return h.hexdigest()[:32]


def get(kind: str, key: str) -> bytes | None:
    if not enabled():
        return None
    try:
        return (root(kind) / key).read_bytes()
    except OSError:
        return None


def put(kind: str, key: str, data: bytes) -> None:
    """Best effort: a cache that cannot be written only costs time."""
    if not enabled():
        return
    folder = root(kind)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        write_atomic(folder / key, data, overwrite=True)
        files = sorted(folder.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True)
        total = 0
        for f in files:
            total += f.stat().st_size
            if total > LIMITS.get(kind, 256 * 2**20) and f.name != key:
                f.unlink(missing_ok=True)
    except (OSError, EdgempError):
        return


def statistics_to_bytes(stats: dict[str, Any]) -> bytes | None:
    """Calibration statistics (tensor -> {field: array}) as an .npz (no pickle); None if a value is not numeric."""
    arrays = {}
    for tensor, qsv in stats.items():
        if not isinstance(qsv, dict):
            return None
        for field, value in qsv.items():
            arr = np.asarray(value)
            if arr.dtype.kind not in "fiub":
                return None
            arrays[f"{tensor}|{field}"] = arr
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def statistics_from_bytes(data: bytes) -> dict[str, Any] | None:
    if not data:
        return None
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            out: dict[str, Any] = {}
            for name in z.files:
                tensor, field = name.rsplit("|", 1)
                out.setdefault(tensor, {})[field] = z[name]
            return out
    except _DAMAGED:  # a damaged entry is a miss
        return None


def _float_key(source: Any, batch_size: int | None) -> str | None:
    digest = source.fingerprint() if hasattr(source, "fingerprint") else None
    return f"{source.kind}-{digest}-b{batch_size}.tflite" if digest else None


def has_float_tflite(source: Any, batch_size: int | None) -> bool:
    """Whether float_tflite() would find the conversion cached (without reading it)."""
    key = _float_key(source, batch_size)
    return bool(key) and enabled() and (root("float") / key).is_file()


def float_tflite(source: Any, batch_size: int | None) -> tuple[bytes, bool]:
    """(the source's float .tflite, taken from the cache?): keyed by the model file's bytes when the source has one."""
    key = _float_key(source, batch_size)
    cached = get("float", key) if key else None
    if cached is not None:
        return cached, True
    tflite = source.to_float_tflite(batch_size)
    if key:
        put("float", key, tflite)
    return tflite, False


def _memo(kind: str, name: str | None, load: Callable[[bytes], Any], dump: Callable[[Any], bytes | None],
          compute: Callable[[], Any]) -> tuple[Any, bool]:
    """(value, taken from the cache?): the entry `name` of `kind` when it loads, else computed and stored (a value
    `dump` cannot store, or one over a quarter of its kind's limit, which would push every other entry out, is not)."""
    cached = load(get(kind, name) or b"") if name else None
    if cached is not None:
        return cached, True
    value = compute()
    data = dump(value) if name else None
    if data is not None and len(data) <= LIMITS.get(kind, 256 * 2**20) // 4:
        put(kind, name, data)
    return value, False


def statistics(qbase: bytes, samples: Any, compute: Callable[[], dict[str, Any]]) -> tuple[dict[str, Any], bool]:
    """(calibration statistics, taken from the cache?): keyed by the float model's bytes and the samples."""
    from edgemp.mixed.cache import data_key

    key = data_key([hashlib.sha256(qbase).hexdigest(), *samples]) if enabled() else None
    return _memo("statistics", key and f"{key}.npz", statistics_from_bytes, statistics_to_bytes, compute)


def arrays_to_bytes(arrays: Sequence[np.ndarray]) -> bytes | None:
    """A list of arrays as an .npz in order (no pickle); None if one is not numeric."""
    if any(np.asarray(a).dtype.kind not in "fiubc" for a in arrays):
        return None
    buf = io.BytesIO()
    np.savez(buf, **{f"a{i}": np.asarray(a) for i, a in enumerate(arrays)})
    return buf.getvalue()


def arrays_from_bytes(data: bytes) -> list[np.ndarray] | None:
    if not data:
        return None
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            return [z[f"a{i}"] for i in range(len(z.files))]
    except _DAMAGED:  # a damaged entry is a miss
        return None


def reference(source: Any, inputs: dict[str, np.ndarray], batch: int,
              compute: Callable[[], list[np.ndarray]]) -> tuple[list[np.ndarray], bool]:
    """(the source's float outputs on `inputs`, taken from the cache?): keyed by the model file's bytes (a source
    without a fingerprint, e.g. an in-memory model, is not cached: its code is not in its bytes), the source's kind,
    layouts and outputs, its framework's versions, the batch it runs in and the inputs."""
    from edgemp.mixed.cache import data_key

    digest = source.fingerprint() if enabled() and hasattr(source, "fingerprint") else None
    key = None
    if digest:
        versions = source.framework_versions() if hasattr(source, "framework_versions") else None
        key = data_key([digest, source.kind, type(source).__name__, str(getattr(source, "artifact_layout", None)),
                        str(getattr(source, "layout", None)), list(source.output_names()),
                        list(source.output_channels_first()), versions, batch, inputs])
    return _memo("reference", key and f"{key}.npz", arrays_from_bytes, arrays_to_bytes, compute)


def errors_to_bytes(errors: dict[str, Any]) -> bytes | None:
    """Per-tensor errors (tensor -> LayerSensitivity) as JSON, in order: every field but the layer (which the graph
    gives back); None if a field is not a number or None (e.g. a score attached later)."""
    rows = []
    for t, s in errors.items():
        fields = {f.name: getattr(s, f.name) for f in dataclasses.fields(s) if f.name != "layer"}
        if s.layer.tensor != t or not _numbers(fields):
            return None
        rows.append([t, fields])
    return json.dumps(rows, allow_nan=True).encode()


def _numbers(fields: dict[str, Any]) -> bool:
    return all(v is None or type(v) in (float, int) for v in fields.values())


def errors_from_bytes(data: bytes, graph: Any) -> dict[str, Any] | None:
    from edgemp.mixed.sensitivity import LayerSensitivity

    if not data:
        return None
    try:
        out = {}
        for t, fields in json.loads(data):
            if not _numbers(fields):
                return None
            out[t] = LayerSensitivity(graph.by_tensor[t], **fields)
        return out
    except (ValueError, TypeError, KeyError, AttributeError):  # a damaged entry is a miss
        return None


def tensor_errors(float_tflite: bytes, quant_tflite: bytes, samples: Sequence[dict[str, np.ndarray]], graph: Any,
                  compute: Callable[[], dict[str, Any]]) -> tuple[dict[str, Any], bool]:
    """(per-tensor errors of `quant_tflite` against `float_tflite`, taken from the cache?): keyed by both models'
    bytes, the samples and the tensors compared (the graph's layers, in order)."""
    from edgemp.mixed.cache import data_key

    key = data_key([hashlib.sha256(float_tflite).hexdigest(), hashlib.sha256(quant_tflite).hexdigest(),
                    [lay.tensor for lay in graph.layers], len(samples), *samples]) if enabled() else None
    return _memo("tensor_errors", key and f"{key}.json", lambda b: errors_from_bytes(b, graph), errors_to_bytes,
                 compute)
