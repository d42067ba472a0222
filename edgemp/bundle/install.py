"""Putting a bundle folder in place (`edgemp unpack`, `edgemp package --dir`) without losing anything.

- A new destination: the bundle is built in a hidden temp folder beside it and renamed into place; the name is
  claimed exclusively, so of two runs racing to the same folder exactly one wins (OutputExistsError for the other).
- An existing destination needs force, and then force replaces only what edgemp wrote there: the destination must be
  an edgemp bundle (its manifest.json follows the bundle schema), and only the files that manifest lists (plus
  manifest.json) are replaced. Every other file in it (bench.json and .venv/ that run.sh created, your notes) is kept.
  Refused, with nothing changed: a folder that is not an edgemp bundle, a file or symbolic link where the folder
  should go, a listed file you changed since (its sha256 differs from the manifest), and a file of yours where a new
  bundle file would go. An existing empty folder is used as it is (with or without force).
- Replacing is done file by file with the old files moved aside first and put back if anything fails.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from edgemp._io import (exists_error, is_dir, lstat_or_none, make_parent_dirs, not_writable, place_exclusive,
                        remove_empty_dirs, save_dir_atomic)
from edgemp.bundle.manifest import validate_manifest
from edgemp.errors import BundleIntegrityError, OutputExistsError, OutputNotWritableError, UnsafeBundleError


def safe_name(name: str) -> str:
    """A bundle-relative path that stays inside the bundle (no absolute path, `..` or drive letter: zip-slip)."""
    p = PurePosixPath(name.replace("\\", "/"))
    if name.startswith(("/", "\\")) or p.is_absolute() or ".." in p.parts or (p.parts and ":" in p.parts[0]) \
            or not p.parts or p.as_posix() == ".":
        raise UnsafeBundleError(f"bundle member {name!r} would be written outside the bundle (zip-slip); refusing it")
    return p.as_posix()


def place_tree(dest: Path, build: Callable[[Path], Any], *, force: bool, what: str = "bundle") -> tuple[str, ...]:
    """Build a bundle folder with `build(folder)` and put it at `dest` (see the module docstring).

    Returns what was kept in `dest` because the previous bundle there did not list it (top-level names, or paths
    inside a bundle folder)."""
    dest = Path(dest).absolute()
    st = lstat_or_none(dest)
    if st is not None:
        if stat.S_ISLNK(st.st_mode) or not is_dir(st):
            kind = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "a file"
            raise OutputNotWritableError(f"cannot write the {what} to {dest}: it is {kind}, not a folder, and edgemp never "
                                         "replaces it (not even with --force). Choose another output directory or "
                                         "remove it yourself.")
        if _has_entries(dest):  # an empty folder is used as it is
            if not force:
                raise OutputExistsError(f"refusing to overwrite {dest}: pass --force (force=True) to replace the "
                                        "bundle edgemp wrote there (other files in it are kept), or choose another "
                                        "output directory.")
            _old_bundle(dest)  # refuse before any work if force would not be allowed to replace it
    created = make_parent_dirs(dest)
    try:
        try:
            work = Path(tempfile.mkdtemp(prefix=".edgemp-bundle-", suffix=".tmp", dir=dest.parent))
        except OSError as exc:
            raise not_writable(exc, dest) from exc
        try:
            new = work / "new"
            try:
                build(new)
            except OSError as exc:
                raise not_writable(exc, dest) from exc
            return _install(new, dest, work, force)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    except BaseException:
        if lstat_or_none(dest) is None:
            remove_empty_dirs(created)
        raise


def _has_entries(d: Path) -> bool:
    try:
        with os.scandir(d) as it:
            return any(True for _ in it)
    except OSError as exc:
        raise not_writable(exc, d) from exc


def _install(new: Path, dest: Path, work: Path, force: bool) -> tuple[str, ...]:
    st = lstat_or_none(dest)
    if st is None:
        save_dir_atomic(dest, lambda p: os.rename(new, p), overwrite=False)
        return ()
    if not _has_entries(dest):
        try:
            os.rename(new, dest)  # onto an empty folder: atomic; fails if another run filled it meanwhile
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise exists_error(dest) from None
            raise not_writable(exc, dest) from exc
        return ()
    if not force:
        raise exists_error(dest)
    return _replace_files(new, dest, work, _old_bundle(dest))


def _old_bundle(dest: Path) -> set[str]:
    """The files (bundle-relative) the edgemp bundle at `dest` owns, after checking they are unchanged."""
    manifest_path = dest / "manifest.json"
    why = None
    mst = lstat_or_none(manifest_path)
    if mst is None or not stat.S_ISREG(mst.st_mode):
        why = "it has no manifest.json"
    else:
        try:
            manifest = json.loads(manifest_path.read_bytes())
            validate_manifest(manifest)
            listed = {safe_name(f["path"]): f for f in manifest["files"]}
        except RecursionError:
            why = "its manifest.json is nested too deeply to be a bundle manifest"
        except (OSError, ValueError, BundleIntegrityError, UnsafeBundleError) as exc:
            why = f"its manifest.json is not a valid bundle manifest ({str(exc)[:200]})"
    if why:
        raise OutputExistsError(f"refusing to replace {dest}: it is not a bundle edgemp wrote ({why}), and --force "
                                "only replaces the files of an edgemp bundle. Choose another output directory (a new "
                                "or empty one), or move its contents away yourself.")
    changed = []
    for rel, f in sorted(listed.items()):
        p = dest / rel
        if not _plain_path(dest, rel):
            changed.append(rel)
            continue
        fst = lstat_or_none(p)
        if fst is None:
            continue  # deleted since: nothing to lose
        if not stat.S_ISREG(fst.st_mode) or fst.st_size != f["bytes"] or _sha256(p) != f["sha256"]:
            changed.append(rel)
    if changed:
        raise OutputExistsError(f"refusing to replace the bundle in {dest}: {', '.join(changed[:5])}"
                                f"{' ...' if len(changed) > 5 else ''} changed since edgemp wrote "
                                f"{'it' if len(changed) == 1 else 'them'} (not what its manifest.json lists), and "
                                "--force never replaces your edits. Move them away, or choose another output directory.")
    return set(listed) | {"manifest.json"}


def _plain_path(root: Path, rel: str) -> bool:
    """Every folder between root and root/rel is a real folder (no symbolic link to follow out of the bundle)."""
    p = root
    for part in PurePosixPath(rel).parts[:-1]:
        p = p / part
        st = lstat_or_none(p)
        if st is None:
            return True
        if stat.S_ISLNK(st.st_mode) or not is_dir(st):
            return False
    return True


def _sha256(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _files(root: Path) -> list[str]:
    """Every file under root, bundle-relative (symbolic links are listed, never followed)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        rel = Path(dirpath).relative_to(root)
        out += [(rel / n).as_posix() for n in filenames]
        out += [(rel / n).as_posix() for n in dirnames if (Path(dirpath) / n).is_symlink()]
    return sorted(out)


def _replace_files(new: Path, dest: Path, work: Path, owned: set[str]) -> tuple[str, ...]:
    incoming = _files(new)
    conflicts = []
    for rel in incoming:
        if rel in owned:
            continue
        if not _plain_path(dest, rel) or lstat_or_none(dest / rel) is not None:
            conflicts.append(rel)
    if conflicts:
        raise OutputExistsError(f"refusing to replace the bundle in {dest}: the new bundle's "
                                f"{', '.join(conflicts[:5])} would overwrite file(s) the bundle there does not list "
                                "(yours?). Move them away, or choose another output directory.")
    backup = work / "old"
    moved: list[str] = []
    placed: list[str] = []
    made: list[Path] = []
    order = sorted(owned - {"manifest.json"}) + ["manifest.json"]  # manifest.json goes last, comes back first
    try:
        for rel in order:
            src = dest / rel
            if lstat_or_none(src) is None:
                continue
            (backup / rel).parent.mkdir(parents=True, exist_ok=True)
            os.rename(src, backup / rel)
            moved.append(rel)
        for rel in sorted(set(incoming) - {"manifest.json"}) + ["manifest.json"]:
            target = dest / rel
            made += make_parent_dirs(target)
            place_exclusive(new / rel, target)
            placed.append(rel)
    except BaseException as exc:
        for rel in reversed(placed):
            (dest / rel).unlink(missing_ok=True)
        remove_empty_dirs(made)
        for rel in reversed(moved):
            try:
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                os.rename(backup / rel, dest / rel)
            except OSError:
                pass  # left in the hidden work folder is better than lost; cannot happen on one file system
        if isinstance(exc, OSError):
            raise not_writable(exc, dest) from exc
        raise
    left = {(dest / rel).parent for rel in owned - set(incoming)}
    for d in sorted(left, key=lambda p: len(p.parts), reverse=True):  # folders of old files, now empty
        while d != dest and d.is_relative_to(dest):
            try:
                d.rmdir()
            except OSError:
                break
            d = d.parent
    incoming_set = set(incoming)
    tops = {PurePosixPath(rel).parts[0] for rel in incoming}
    kept = set()
    for rel in _files(dest):
        if rel not in incoming_set:
            top = PurePosixPath(rel).parts[0]
            kept.add(rel if top in tops else top)
    return tuple(sorted(kept))


def verify_placed(dest: Path, manifest: dict[str, Any]) -> None:
    """Check the files a bundle lists at `dest` (after placing it; other files there are not the bundle's)."""
    try:
        placed = json.loads((dest / "manifest.json").read_bytes())
    except (OSError, ValueError) as exc:
        raise BundleIntegrityError(f"{dest}/manifest.json cannot be read back ({exc}); unpack again") from exc
    if placed != manifest:
        raise BundleIntegrityError(f"{dest}/manifest.json is not the manifest that was verified (the bundle changed "
                                   "while it was unpacked?); unpack again")
    for f in manifest["files"]:
        p = dest / f["path"]
        st = lstat_or_none(p)
        if st is None or not stat.S_ISREG(st.st_mode) or st.st_size != f["bytes"] or _sha256(p) != f["sha256"]:
            raise BundleIntegrityError(f"{p} does not match the bundle's manifest after writing it; the disk or "
                                       "another process changed it. Unpack again.")
