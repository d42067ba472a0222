"""Reading and unpacking bundles without trusting them.

A bundle may come back from a device, a colleague or a CI artifact store. Before anything is used: every archive
member must stay inside the bundle (no absolute paths, no `..`, no links: zip-slip), sizes and the compression ratio
are bounded (zip bombs), the manifest must follow its schema, and every file must match its sha256 and size, with no
file the manifest does not list.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

from edgemp._io import check_overwrite, save_dir_atomic
from edgemp.bundle.manifest import validate_manifest
from edgemp.bundle.writer import DEVICES, Bundle
from edgemp.errors import BundleIntegrityError, ModelLoadError, UnsafeBundleError

MAX_BYTES = 4 * 1024**3  # uncompressed total
MAX_FILES = 20_000
MAX_RATIO = 200  # uncompressed / compressed, for members over 1 MB


def _safe_name(name: str) -> str:
    p = PurePosixPath(name.replace("\\", "/"))
    if name.startswith(("/", "\\")) or p.is_absolute() or ".." in p.parts or (p.parts and ":" in p.parts[0]):
        raise UnsafeBundleError(f"bundle member {name!r} would be written outside the bundle (zip-slip); refusing it")
    return p.as_posix()


def _zip_members(zf: zipfile.ZipFile, max_bytes: int, max_files: int) -> dict[str, zipfile.ZipInfo]:
    infos = zf.infolist()
    if len(infos) > max_files:
        raise UnsafeBundleError(f"bundle has {len(infos)} entries (limit {max_files})")
    total, members = 0, {}
    for info in infos:
        name = _safe_name(info.filename)
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise UnsafeBundleError(f"bundle member {name!r} is a symbolic link; bundles hold regular files only")
        if info.is_dir():
            continue
        total += info.file_size
        if total > max_bytes:
            raise UnsafeBundleError(f"bundle unpacks to more than {max_bytes:,} bytes; refusing it")
        if info.file_size > 2**20 and info.file_size > MAX_RATIO * max(info.compress_size, 1):
            raise UnsafeBundleError(f"bundle member {name!r} expands {info.file_size / max(info.compress_size, 1):.0f}x "
                                    "(a zip bomb?); refusing it")
        if name in members:
            raise UnsafeBundleError(f"bundle lists {name!r} twice")
        members[name] = info
    return members


def _dir_members(root: Path, max_bytes: int, max_files: int) -> dict[str, Path]:
    members, total = {}, 0
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            if p.is_symlink():
                raise UnsafeBundleError(f"bundle entry {p.relative_to(root)} is a symbolic link; bundles hold regular files only")
        for n in filenames:
            p = Path(dirpath) / n
            total += p.stat().st_size
            if total > max_bytes or len(members) >= max_files:
                raise UnsafeBundleError(f"bundle {root} is larger than the limits ({max_bytes:,} bytes, {max_files} files)")
            members[p.relative_to(root).as_posix()] = p
    return members


def read_bundle(path: str | os.PathLike[str], *, max_bytes: int = MAX_BYTES, max_files: int = MAX_FILES) -> Bundle:
    """Open a bundle (.zip or directory) and verify it completely; returns it only if every check passes.

    Example:
        >>> b = edgemp.read_bundle("dist/bundles/model_int8_android.zip"); b.default_model["sha256"]
    """
    p = Path(path)
    if not p.exists():
        raise ModelLoadError(f"bundle {p} does not exist")
    if p.is_dir():
        members = _dir_members(p, max_bytes, max_files)
        read = lambda name: members[name].read_bytes()  # noqa: E731
        return _verify(p, set(members), read, {n: f.stat().st_size for n, f in members.items()})
    try:
        zf = zipfile.ZipFile(p)
    except (zipfile.BadZipFile, OSError) as exc:
        raise BundleIntegrityError(f"{p} is not a readable bundle archive ({exc}); package it again") from exc
    with zf:
        infos = _zip_members(zf, max_bytes, max_files)

        def read(name: str) -> bytes:
            try:
                return zf.read(infos[name])
            except (zipfile.BadZipFile, OSError, EOFError) as exc:  # CRC errors, truncation
                raise BundleIntegrityError(f"bundle member {name!r} is corrupt ({exc})") from exc

        return _verify(p, set(infos), read, {n: i.file_size for n, i in infos.items()})


def _verify(path: Path, names: set[str], read: Any, sizes: dict[str, int]) -> Bundle:
    if "manifest.json" not in names:
        raise BundleIntegrityError(f"{path} has no manifest.json at its root; it is not an edgemp bundle")
    try:
        manifest = json.loads(read("manifest.json"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleIntegrityError(f"{path}: manifest.json is not valid JSON ({exc})") from exc
    validate_manifest(manifest)
    listed = {f["path"]: f for f in manifest["files"]}
    for rel in listed:
        _safe_name(rel)
    missing = sorted(set(listed) - names)
    extra = sorted(names - set(listed) - {"manifest.json"})
    if missing:
        raise BundleIntegrityError(f"{path}: files listed in the manifest are missing: {', '.join(missing[:5])}")
    if extra:
        raise BundleIntegrityError(f"{path}: files not listed in the manifest (not covered by a checksum): "
                                   f"{', '.join(extra[:5])}")
    for rel, f in sorted(listed.items()):
        if sizes[rel] != f["bytes"]:
            raise BundleIntegrityError(f"{path}: {rel} is {sizes[rel]:,} bytes, the manifest says {f['bytes']:,}")
        digest = hashlib.sha256(read(rel)).hexdigest()
        if digest != f["sha256"]:
            raise BundleIntegrityError(f"{path}: checksum mismatch for {rel} (sha256 {digest[:12]}…, manifest "
                                       f"{f['sha256'][:12]}…): the file was modified or damaged; do not use it")
    for m in manifest["models"]:
        if m["format"] == "tflite" and listed.get(m["file"], {}).get("sha256") != m["sha256"]:
            raise BundleIntegrityError(f"{path}: model {m['file']} does not match its manifest entry")
        if m["format"] == "mlpackage" and not any(n.startswith(m["file"] + "/") for n in listed):
            raise BundleIntegrityError(f"{path}: Core ML package {m['file']} is missing")
    if manifest["device"] not in DEVICES:  # schema already enforces it; keep the reader honest if it changes
        raise BundleIntegrityError(f"{path}: unknown device {manifest['device']!r}")
    return Bundle(path, manifest["device"], manifest)


def unpack_bundle(path: str | os.PathLike[str], dest: str | os.PathLike[str], *, force: bool = False) -> Bundle:
    """Verify, then extract a .zip bundle into `dest` atomically (nothing is written if any check fails)."""
    bundle = read_bundle(path)
    out = Path(dest)
    check_overwrite([out], force)
    if Path(path).is_dir():
        save_dir_atomic(out, lambda p: shutil.copytree(path, p))
        return Bundle(out, bundle.device, bundle.manifest)
    with tempfile.TemporaryDirectory(prefix=".edgemp-unpack-", dir=out.parent if out.parent.exists() else None) as tmp:
        root = Path(tmp) / "b"
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if info.is_dir():
                    continue
                target = root / _safe_name(info.filename)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(zf.read(info))
                target.chmod(0o755 if (info.external_attr >> 16) & 0o111 else 0o644)
        out.parent.mkdir(parents=True, exist_ok=True)
        save_dir_atomic(out, lambda p: shutil.copytree(root, p))
    return read_bundle(out)
