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
import zipfile
from pathlib import Path
from typing import Any

from edgemp.bundle.install import place_tree, safe_name, verify_placed
from edgemp.bundle.manifest import validate_manifest
from edgemp.bundle.writer import DEVICES, Bundle
from edgemp.errors import BundleIntegrityError, InputError, ModelLoadError, UnsafeBundleError, public
MAX_BYTES = 4 * 1024**3  # uncompressed total
MAX_FILES = 20_000
MAX_RATIO = 200  # uncompressed / compressed, for members over 1 MB


_safe_name = safe_name


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


@public
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

        def read_file(name: str) -> bytes:
            try:
                return members[name].read_bytes()
            except OSError as exc:
                raise BundleIntegrityError(f"{p}: cannot read {name} ({exc.strerror}); check its permissions") from exc

        return _verify(p, set(members), read_file, {n: f.stat().st_size for n, f in members.items()})
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
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise BundleIntegrityError(f"{path}: manifest.json is not valid JSON ({exc})") from exc
    except RecursionError:
        raise BundleIntegrityError(f"{path}: manifest.json is nested too deeply to be a bundle manifest; it was not "
                                   "written by edgemp (package the model again)") from None
    try:
        validate_manifest(manifest)
    except RecursionError:
        raise BundleIntegrityError(f"{path}: manifest.json is nested too deeply to be a bundle manifest; it was not "
                                   "written by edgemp (package the model again)") from None
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


@public
def unpack_bundle(path: str | os.PathLike[str], dest: str | os.PathLike[str], *, force: bool = False) -> Bundle:
    """Verify a bundle (.zip or folder), then put its files in `dest` (nothing is written if any check fails).

    `dest` must not exist, or be an empty folder; with force it may also be a bundle edgemp wrote before: then only
    the files that bundle's manifest lists are replaced and everything else in the folder is kept (`Bundle.kept`
    names it). Anything else (a folder that is not an edgemp bundle, a file, listed files edited since) is refused
    with OutputExistsError / OutputNotWritableError and left untouched. See docs/errors.md, "Outputs and --force".
    """
    bundle = read_bundle(path)
    src, out = Path(path).absolute(), Path(dest).absolute()
    if src.is_dir() and out != src and out.is_relative_to(src):
        raise InputError(f"cannot unpack the bundle folder {src} into {out}, inside itself; choose another "
                         "output directory")
    wanted = {f["path"] for f in bundle.manifest["files"]} | {"manifest.json"}  # what was verified, nothing else

    def build(root: Path) -> None:
        root.mkdir()
        zf = None if src.is_dir() else zipfile.ZipFile(src)
        try:
            infos = {} if zf is None else {safe_name(i.filename): i for i in zf.infolist() if not i.is_dir()}
            for rel in sorted(wanted):
                target = root / safe_name(rel)
                target.parent.mkdir(parents=True, exist_ok=True)
                if zf is None:
                    shutil.copyfile(src / rel, target)
                    executable = (src / rel).stat().st_mode & 0o111
                else:
                    target.write_bytes(zf.read(infos[rel]))
                    executable = (infos[rel].external_attr >> 16) & 0o111
                target.chmod(0o755 if executable else 0o644)
        finally:
            if zf is not None:
                zf.close()

    kept = place_tree(out, build, force=force)
    verify_placed(out, bundle.manifest)
    return Bundle(out, bundle.device, bundle.manifest, kept)
