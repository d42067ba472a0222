"""Atomic file output: an interrupted run never leaves a truncated model or report behind."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from edgemp.errors import OutputExistsError, OutputNotWritableError


def prepare_output_dir(path: str | os.PathLike[str]) -> Path:
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputNotWritableError(
            f"cannot create output directory {out}: {exc.strerror}. Choose a writable -o/--output-dir."
        ) from exc
    if not out.is_dir():
        raise OutputNotWritableError(f"output path {out} exists and is not a directory; choose another one.")
    if not os.access(out, os.W_OK | os.X_OK):
        raise OutputNotWritableError(f"output directory {out} is not writable; choose a writable -o/--output-dir.")
    return out


def check_overwrite(paths: list[Path], force: bool) -> None:
    existing = [str(p) for p in paths if p.exists()]
    if existing and not force:
        raise OutputExistsError(
            f"refusing to overwrite {', '.join(existing)}: pass force=True (CLI: --force) or choose another output directory."
        )


def write_atomic(path: Path, data: bytes | str) -> Path:
    """Write to a temp file in the same directory, fsync, then rename over the target."""
    payload = data.encode() if isinstance(data, str) else bytes(data)
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise OutputNotWritableError(f"cannot write into {path.parent}: {exc.strerror}.") from exc
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
