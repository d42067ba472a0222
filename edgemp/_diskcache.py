"""Intermediate results kept on disk between runs: the float .tflite of a model file and the calibration statistics.

`edgemp analyze model.keras ...` followed by `edgemp convert model.keras -p mixed ...` (two processes) otherwise
converts and calibrates the same model on the same data twice (benchmarks/results/analysis_profile_*.md). Entries
are keyed by everything they depend on (the file's bytes, the calibration samples, edgemp's version) under
`<EDGEMP_CACHE>/<kind>/`, written atomically, and each kind is kept under a size limit (oldest first).
EDGEMP_ARTIFACT_CACHE=0 turns it off.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgemp import __version__
from edgemp._io import write_atomic
from edgemp.errors import EdgempError

LIMITS = {"float": 1024 * 2**20, "statistics": 64 * 2**20}


def enabled() -> bool:
    return os.environ.get("EDGEMP_ARTIFACT_CACHE", "1") not in ("0", "false", "no", "off")


def root(kind: str) -> Path:
    return Path(os.environ.get("EDGEMP_CACHE", Path.home() / ".cache" / "edgemp")) / kind


def file_digest(path: str | os.PathLike[str]) -> str | None:
    """sha256 of a model file (a folder: of every file in it, by relative path), None if it cannot be read."""
    p = Path(path)
    h = hashlib.sha256(f"edgemp {__version__}".encode())
    try:
        files = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
        for f in files:
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
    except (OSError, ValueError, KeyError, EOFError):  # a damaged entry is a miss
        return None


def float_tflite(source: Any, batch_size: int | None) -> tuple[bytes, bool]:
    """(the source's float .tflite, taken from the cache?): keyed by the model file's bytes when the source has one."""
    digest = source.fingerprint() if hasattr(source, "fingerprint") else None
    key = f"{source.kind}-{digest}-b{batch_size}.tflite" if digest else None
    cached = get("float", key) if key else None
    if cached is not None:
        return cached, True
    tflite = source.to_float_tflite(batch_size)
    if key:
        put("float", key, tflite)
    return tflite, False


def statistics(qbase: bytes, samples: Any, compute: Callable[[], dict[str, Any]]) -> tuple[dict[str, Any], bool]:
    """(calibration statistics, taken from the cache?): keyed by the float model's bytes and the samples."""
    from edgemp.mixed.cache import data_key

    key = data_key([hashlib.sha256(qbase).hexdigest(), *samples]) if enabled() else None
    cached = statistics_from_bytes(get("statistics", f"{key}.npz") or b"") if key else None
    if cached is not None:
        return cached, True
    stats = compute()
    data = statistics_to_bytes(stats) if key else None
    if data is not None:
        put("statistics", f"{key}.npz", data)
    return stats, False
