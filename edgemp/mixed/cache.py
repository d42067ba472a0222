"""Scores of candidate artifacts, kept on disk: the per-layer candidates are what analysis and the mixed search spend
their time on (benchmarks/results/analysis_profile_*.md), so a second run on the same model and data — `analyze`
then `convert(precision="mixed")`, or a nightly re-conversion — scores nothing it has scored before.

A score depends on the candidate's bytes and on what it is scored against: the validation inputs, the float
reference outputs, the labels and how outputs are judged, and the runtime options. One file per such data key
(`<EDGEMP_CACHE>/scores/<key>.json`: candidate sha256 -> score), written atomically; the folder is kept under a size
limit (oldest files go first). A user `metric=` is Python code edgemp cannot key: no cache then.
EDGEMP_SCORE_CACHE=0 turns it off; EDGEMP_SCORE_CACHE_DIR puts it elsewhere.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from edgemp import __version__
from edgemp._io import write_atomic
from edgemp.errors import EdgempError

LIMIT_BYTES = 32 * 2**20


def cache_root() -> Path:
    """EDGEMP_SCORE_CACHE_DIR, else <EDGEMP_CACHE>/scores."""
    if os.environ.get("EDGEMP_SCORE_CACHE_DIR"):
        return Path(os.environ["EDGEMP_SCORE_CACHE_DIR"])
    return Path(os.environ.get("EDGEMP_CACHE", Path.home() / ".cache" / "edgemp")) / "scores"


def data_key(parts: list[Any]) -> str | None:
    """sha256 of everything a score depends on besides the candidate; None when a part cannot be keyed."""
    h = hashlib.sha256(f"edgemp {__version__}".encode())
    for part in parts:
        try:
            if isinstance(part, np.ndarray):
                _hash_array(h, part)
            elif isinstance(part, dict) and all(isinstance(v, np.ndarray) for v in part.values()):
                for k in sorted(part):
                    h.update(k.encode())
                    _hash_array(h, part[k])
            elif isinstance(part, list | tuple) and part and all(isinstance(v, np.ndarray) for v in part):
                for v in part:
                    _hash_array(h, v)
            else:
                h.update(json.dumps(part, sort_keys=True, default=_plain).encode())
        except (TypeError, ValueError):
            return None
    return h.hexdigest()[:32]


def _hash_array(h: Any, a: np.ndarray) -> None:
    """dtype and shape too: the same bytes in another dtype or shape are other data."""
    h.update(f"{a.dtype}{a.shape}".encode())
    h.update(np.ascontiguousarray(a).tobytes())


def _plain(x: Any) -> Any:
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    if callable(x):
        raise TypeError("code cannot be keyed")
    return repr(x)


class ScoreCache:
    def __init__(self, key: str, root: Path | None = None, limit_bytes: int = LIMIT_BYTES) -> None:
        self.path = (root or cache_root()) / f"{key}.json"
        self.limit = limit_bytes
        self.hits = 0
        self._new: dict[str, dict[str, Any]] = {}
        try:
            self._known: dict[str, dict[str, Any]] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self._known = {}

    @staticmethod
    def enabled() -> bool:
        return os.environ.get("EDGEMP_SCORE_CACHE", "1") not in ("0", "false", "no", "off")

    def get(self, digest: str) -> dict[str, Any] | None:
        found = self._known.get(digest) or self._new.get(digest)
        if found is not None:
            self.hits += 1
        return found

    def __contains__(self, digest: str) -> bool:
        """Known, without counting a hit (nothing was taken from the cache yet)."""
        return digest in self._known or digest in self._new

    def put(self, digest: str, score: dict[str, Any]) -> None:
        self._new[digest] = dict(score)  # infinite SQNR (an exact candidate) survives JSON as Infinity

    def flush(self) -> None:
        """Merge what this run scored into the file (another run may have written meanwhile), then keep the folder
        under its limit. A cache that cannot be written is skipped: it only saves time."""
        if not self._new:
            return
        try:
            current = json.loads(self.path.read_text()) if self.path.exists() else {}
        except (OSError, ValueError):
            current = {}
        current |= self._new
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.path, json.dumps(current, allow_nan=True), overwrite=True)
            self._prune()
        except (OSError, EdgempError):
            return
        self._known, self._new = current, {}

    def _prune(self) -> None:
        files = sorted(self.path.parent.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
        total = 0
        for f in files:
            total += f.stat().st_size
            if total > self.limit and f != self.path:
                f.unlink(missing_ok=True)
