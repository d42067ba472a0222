"""Output files: nothing lost, nothing half-written, "no overwrite without --force" enforced at the write itself.

- `write_atomic` / `write_all_atomic`: every file is written to a temp file beside its destination and fsynced first
  (that is where a full disk fails), then put in place. Without `overwrite` the file is put in place with
  os.link(tmp, final), which fails if `final` exists: of two runs racing into the same path exactly one wins, the
  other gets OutputExistsError. With `overwrite` it is an os.replace (a reader never sees a truncated file).
  `write_all_atomic` is all or nothing: if one file cannot be put in place, the ones already placed are taken back
  (files it replaced are restored).
- `save_dir_atomic`: a directory artifact (.mlpackage, a bundle folder) is built in a temp folder beside its
  destination and renamed into place; without `overwrite` the name is first claimed with os.mkdir (exclusive).
- Every OSError while writing (disk full, quota, read-only file system, permissions, name too long, a directory
  where a file should go...) becomes one OutputNotWritableError naming the path and the fix; temp files are removed.
"""

from __future__ import annotations

import contextvars
import errno
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from edgemp.errors import OutputExistsError, OutputNotWritableError

#: Outputs edgemp writes as files / as directories: something of the other kind at the path is never replaced.
FILE_SUFFIXES = (".tflite", ".json", ".md", ".png", ".html", ".zip")
DIR_SUFFIXES = (".mlpackage",)

_FIX = {
    errno.ENOSPC: "the disk is full: free some space, or choose an output directory on another disk (-o/--output-dir)",
    errno.EDQUOT: "your disk quota is used up: free some space, or choose an output directory elsewhere "
                  "(-o/--output-dir)",
    errno.EROFS: "the file system is read-only: choose a writable output directory (-o/--output-dir)",
    errno.EACCES: "permission denied: choose a writable output directory (-o/--output-dir) or fix its permissions",
    errno.EPERM: "the operation is not permitted there: choose a writable output directory (-o/--output-dir)",
    errno.ENAMETOOLONG: "the name is too long for the file system (usually 255 bytes per name): choose a shorter "
                        "--name or output directory",
    errno.EISDIR: "a directory is where an output file should go: remove or rename that directory, or choose another "
                  "--name or output directory",
    errno.ENOTDIR: "a file is where a folder of the output path should go: choose another output directory",
    errno.EFBIG: "the file is larger than this process may write (file size limit, `ulimit -f`): raise the limit or "
                 "write elsewhere",
    errno.EMLINK: "the directory has too many entries: choose another output directory",
}
NO_HARDLINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK, errno.ENOSYS}

# The last overwrite decision (check_overwrite) in this context. save_dir_atomic() called without `overwrite=` follows
# it for the paths it covered: that is how the .mlpackage convert() writes (backends/coreml_target.py does not pass
# overwrite=) is create-exclusive without --force. Pass overwrite= explicitly wherever the caller knows it.
_DECISION: contextvars.ContextVar[tuple[frozenset[str], bool] | None] = contextvars.ContextVar("edgemp_overwrite",
                                                                                             default=None)


def not_writable(exc: OSError, path: str | os.PathLike[str], doing: str = "write") -> OutputNotWritableError:
    """The typed error for an OSError met while writing `path`: the path, the fix, and the system's words."""
    code = errno.errorcode.get(exc.errno or 0, str(exc.errno))
    fix = _FIX.get(exc.errno or 0, "choose another output directory (-o/--output-dir)")
    return OutputNotWritableError(f"cannot {doing} {path}: {fix} ({exc.strerror or exc}, {code}).")


def _key(path: str | os.PathLike[str]) -> str:
    return os.path.abspath(path)


def lstat_or_none(path: str | os.PathLike[str]) -> os.stat_result | None:
    """lstat, or None if nothing is there; an unusable path (name too long, a file as a folder) is a typed error."""
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:  # ENAMETOOLONG, ENOTDIR (a file as a folder of the path), ELOOP, EACCES
        raise not_writable(exc, path) from exc


def is_dir(st: os.stat_result | None) -> bool:
    return st is not None and stat.S_ISDIR(st.st_mode)


def prepare_output_dir(path: str | os.PathLike[str]) -> Path:
    """Check that the output directory can be written, without creating it: a run that fails on bad input
    leaves nothing behind, not even an empty folder. Writers create it when they write (write_atomic).

    Returns the directory as an absolute path, so reports name their artifacts wherever they are read from."""
    out = Path(path).absolute()
    lstat_or_none(out)  # a name too long, a file as one of its folders: typed errors before any work
    if out.exists():
        if not out.is_dir():
            raise OutputNotWritableError(f"output path {out} exists and is not a directory; choose another one.")
        if not os.access(out, os.W_OK | os.X_OK):
            raise OutputNotWritableError(f"output directory {out} is not writable ({_why_not(out)}); choose a writable "
                                         "-o/--output-dir.")
        return out
    parent = out.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise OutputNotWritableError(
            f"cannot create output directory {out}: {parent} is not a writable directory ({_why_not(parent)}). Choose "
            "a writable -o/--output-dir."
        )
    return out


def _why_not(path: Path) -> str:
    try:
        if os.statvfs(path).f_flag & os.ST_RDONLY:
            return "read-only file system"
    except OSError:
        pass
    return "not a directory" if path.exists() and not path.is_dir() else "permission denied"


def make_parent_dirs(path: Path) -> list[Path]:
    """Create the folders above `path`; returns those it created (deepest last), to remove if the write fails."""
    missing = []
    p = path.parent
    while lstat_or_none(p) is None:
        missing.append(p)
        p = p.parent
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise not_writable(exc, path.parent, "create directory") from exc
    return missing[::-1]


def remove_empty_dirs(dirs: list[Path]) -> None:
    for d in reversed(dirs):
        try:
            d.rmdir()
        except OSError:
            pass


def check_overwrite(paths: list[Path], force: bool) -> None:
    """Refuse early (before any work) when an output exists and force is off, or when something of the wrong kind is
    where an output goes (a directory for a file, a file for a folder): --force would not help there.

    The writers check again when they write (that check is the one that holds under a race)."""
    existing = []
    for p in map(Path, paths):
        st = lstat_or_none(p)
        if st is None:
            continue
        if is_dir(st) and p.suffix in FILE_SUFFIXES:
            raise OutputNotWritableError(f"cannot write {p}: a directory is where an output file should go; remove or "
                                         "rename it, or choose another --name or output directory.")
        if not is_dir(st) and p.suffix in DIR_SUFFIXES:
            raise OutputNotWritableError(f"cannot write {p}: a file is where an output folder should go; remove or "
                                         "rename it, or choose another --name or output directory.")
        existing.append(str(p))
    _DECISION.set((frozenset(_key(p) for p in paths), force))
    if existing and not force:
        raise OutputExistsError(
            f"refusing to overwrite {', '.join(existing)}: pass force=True (CLI: --force) or choose another output directory."
        )


def _overwrite_for(path: Path, overwrite: bool | None) -> bool:
    if overwrite is not None:
        return overwrite
    decision = _DECISION.get()
    if decision is not None and _key(path) in decision[0]:
        return decision[1]
    return True


def _tmp_prefix(path: Path) -> str:
    return f".{path.name[:48]}."


def _stage(path: Path, payload: bytes) -> str:
    """Write `payload` to a temp file beside `path` and fsync it; returns the temp path (removed on any failure)."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(path), suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise not_writable(exc, path) from exc
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise not_writable(exc, path) from exc
        raise
    return tmp


def exists_error(path: Path) -> OutputExistsError:
    return OutputExistsError(f"refusing to overwrite {path}: it appeared while edgemp was writing (another run "
                             "writing to the same place?). Pass force=True (CLI: --force) or choose another output "
                             "directory.")


def place_exclusive(src: str | Path, path: Path) -> None:
    """Give the finished file `src` the name `path` unless that exists (OutputExistsError), also when another writer
    claims it at the same moment; `src` may stay behind as a hard link (its caller cleans up its own staging)."""
    try:
        os.link(src, path)
    except FileExistsError:
        raise exists_error(path) from None
    except OSError as exc:
        if exc.errno not in NO_HARDLINKS:
            raise not_writable(exc, path) from exc
        try:  # no hard links on this file system: claim the name exclusively, then swap the content in
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        except FileExistsError:
            raise exists_error(path) from None
        except OSError as exc2:
            raise not_writable(exc2, path) from exc2
        try:
            os.replace(src, path)
        except BaseException:
            path.unlink(missing_ok=True)
            raise


def _commit(tmp: str, path: Path, overwrite: bool) -> str | None:
    """Put the staged file in place. Returns a backup of the file it replaced (None if there was none)."""
    st = lstat_or_none(path)
    if is_dir(st):
        raise OutputNotWritableError(f"cannot write {path}: a directory is where an output file should go; remove or "
                                     "rename it, or choose another --name or output directory.")
    if not overwrite:
        place_exclusive(tmp, path)
        return None
    backup = None
    if st is not None:
        backup = f"{tmp}.old"
        try:
            os.link(path, backup)
        except OSError:
            backup = None  # no hard links: the replace below is still atomic, a rollback just cannot restore it
    try:
        os.replace(tmp, path)
    except BaseException as exc:
        if backup:
            Path(backup).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise not_writable(exc, path) from exc
        raise
    return backup or ""


def write_all_atomic(files: Mapping[Path, bytes | str], overwrite: bool = True) -> list[Path]:
    """Write several files all or nothing (see the module docstring). `overwrite=False`: OutputExistsError if any
    exists, also if another writer gets there first (nothing of this call is left). Outputs of a run pass
    overwrite=force; the default (True) is for paths a user named explicitly (Report.to_json(path), bench --json)."""
    items = [(Path(p), d.encode() if isinstance(d, str) else bytes(d)) for p, d in files.items()]
    staged: list[tuple[str, Path]] = []
    created: list[Path] = []
    committed: list[tuple[Path, str | None]] = []
    try:
        for path, payload in items:
            created += make_parent_dirs(path)
            staged.append((_stage(path, payload), path))
        for tmp, path in staged:
            committed.append((path, _commit(tmp, path, overwrite)))
    except BaseException:
        for path, backup in reversed(committed):
            try:
                os.replace(backup, path) if backup else path.unlink(missing_ok=True)
            except OSError:
                pass
        for tmp, _ in staged:
            Path(tmp).unlink(missing_ok=True)
        remove_empty_dirs(created)
        raise
    for tmp, _ in staged:
        Path(tmp).unlink(missing_ok=True)
    for _, backup in committed:
        if backup:
            Path(backup).unlink(missing_ok=True)
    return [p for p, _ in items]


def write_atomic(path: Path, data: bytes | str, overwrite: bool = True) -> Path:
    """Write one file atomically: never truncated, never half-written; without `overwrite`, never over an existing
    file (OutputExistsError, also when another writer gets there first). See write_all_atomic."""
    return write_all_atomic({Path(path): data}, overwrite)[0]


def save_dir_atomic(path: Path, save: Callable[[Path], Any], overwrite: bool | None = None) -> Path:
    """Write a directory artifact (.mlpackage, a bundle folder) next to its destination with `save(tmp_path)`, then
    move it into place.

    Without `overwrite` the name is claimed with os.mkdir (fails if anything is there) and the finished directory is
    renamed onto that empty claim, so of two racing writers exactly one wins. With `overwrite` an existing directory
    is renamed aside first and removed only after the new one is in place, so a failure never leaves a half-deleted
    directory of the user's; a file where the directory should go is never replaced. `overwrite=None` follows the
    last check_overwrite() of this context for `path` (else True, as before overwrite= existed).
    """
    path = Path(path)
    overwrite = _overwrite_for(path, overwrite)
    st = lstat_or_none(path)
    if st is not None and not is_dir(st):
        raise OutputNotWritableError(f"cannot write {path}: a file is where an output folder should go; remove or "
                                     "rename it, or choose another --name or output directory.")
    if st is not None and not overwrite:
        raise OutputExistsError(f"refusing to overwrite {path}: pass force=True (CLI: --force) or choose another "
                                "output directory.")
    created = make_parent_dirs(path)
    try:
        try:
            tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(path), suffix=".tmp", dir=path.parent))
        except OSError as exc:
            raise not_writable(exc, path) from exc
        try:
            target = tmp / path.name  # savers may insist on the name (coremltools appends .mlpackage)
            try:
                save(target)
            except OSError as exc:
                raise not_writable(exc, path) from exc
            if not overwrite:
                try:
                    os.mkdir(path)
                except FileExistsError:
                    raise exists_error(path) from None
                except OSError as exc:
                    raise not_writable(exc, path) from exc
                try:
                    os.rename(target, path)  # onto our own empty claim: atomic
                except OSError as exc:
                    remove_empty_dirs([path])
                    if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                        raise exists_error(path) from None
                    raise not_writable(exc, path) from exc
            else:
                old = tmp / f"{path.name}.old"
                try:
                    if lstat_or_none(path) is not None:
                        os.rename(path, old)
                    try:
                        os.rename(target, path)
                    except BaseException:
                        if lstat_or_none(old) is not None:
                            os.rename(old, path)
                        raise
                except OSError as exc:
                    raise not_writable(exc, path) from exc
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        if lstat_or_none(path) is None:
            remove_empty_dirs(created)
        raise
    return path
