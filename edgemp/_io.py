"""Atomic file output: an interrupted run never leaves a truncated model or report behind."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from edgemp.errors import OutputExistsError, OutputNotWritableError


def prepare_output_dir(path: str | os.PathLike[str]) -> Path:
    """Check that the output directory can be written, without creating it: a run that fails on bad input
    leaves nothing behind, not even an empty folder. Writers create it when they write (write_atomic)."""
    out = Path(path)
    if out.exists():
        if not out.is_dir():
            raise OutputNotWritableError(f"output path {out} exists and is not a directory; choose another one.")
        if not os.access(out, os.W_OK | os.X_OK):
            raise OutputNotWritableError(f"output directory {out} is not writable; choose a writable -o/--output-dir.")
        return out
    parent = out.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise OutputNotWritableError(
            f"cannot create output directory {out}: {parent} is not a writable directory. Choose a writable -o/--output-dir."
        )
    return out


def _make_parent(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputNotWritableError(f"cannot create output directory {path.parent}: {exc.strerror}.") from exc


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
    _make_parent(path)
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


def save_dir_atomic(path: Path, save: Any) -> Path:
    """Write a directory artifact (.mlpackage) next to its destination with `save(tmp_path)`, then swap it in.

    An existing destination (only reached with force) is renamed aside first and removed only after the new
    one is in place, so a failure never leaves a half-deleted directory of the user's.
    """
    import shutil

    path = Path(path)
    _make_parent(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    target = tmp / path.name
    try:
        save(target)
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
        os.replace(target, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink(missing_ok=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path
