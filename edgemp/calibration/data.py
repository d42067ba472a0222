"""Calibration sets from folders, .npy/.npz, arrays, dicts and iterables: deterministic, checked, hashed."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edgemp._progress import track
from edgemp.calibration import images
from edgemp.config import Preprocessing
from edgemp.errors import CalibrationError, InputError
from edgemp.sources.base import TensorSpec

Sample = dict[str, np.ndarray]  # input name -> array with a leading batch dim of 1


@dataclasses.dataclass(frozen=True)
class CalibrationSet:
    samples: list[Sample]
    source: str
    skipped: list[tuple[str, str]]  # (path, reason)
    sha256: str
    seed: int
    preprocessing: Preprocessing | None

    def summary(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "num_samples": len(self.samples),
            "num_files_skipped": len(self.skipped),
            "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
            "sha256": self.sha256,
            "seed": self.seed,
            "preprocessing": self.preprocessing.to_dict() if self.preprocessing else None,
        }


def load_calibration(
    data: Any,
    specs: list[TensorSpec],
    *,
    num_samples: int = 200,
    seed: int = 0,
    preprocessing: Preprocessing | None = None,
    progress: bool | None = None,
    what: str = "calibration",
    error: type[InputError] = CalibrationError,
) -> CalibrationSet:
    """Up to `num_samples` samples; with more available, a seeded choice (same inputs + seed -> same set)."""
    if num_samples < 1:
        raise error(f"num_samples must be >= 1, got {num_samples}")
    if data is None:
        raise error(f"no {what} data given: pass a folder of images, a .npy/.npz file, an array or an iterable.")
    pre = None
    skipped: list[tuple[str, str]] = []
    if isinstance(data, str | os.PathLike):
        path = Path(data)
        if not path.exists():
            raise error(f"{what} path {path} does not exist.")
        if path.is_dir():
            pre = images.resolve(preprocessing or Preprocessing(), _single(specs, error, "an image folder").shape)
            samples, skipped = _from_folder(path, specs[0].name, pre, num_samples, seed, progress, what, error)
            source = f"image folder {path}"
        else:
            samples = _select(split_samples(read_array_file(path, specs, error), specs, error, what), num_samples, seed)
            source = f"{path.suffix} file {path}"
    elif isinstance(data, np.ndarray | Mapping):
        samples = _select(split_samples(data, specs, error, what), num_samples, seed)
        source = "array" if isinstance(data, np.ndarray) else "dict of arrays"
    elif isinstance(data, Iterable):
        samples = []
        for item in data:  # generators: take the first num_samples in order (no way to choose without reading all)
            if isinstance(item, tuple) and len(item) == 2:  # (x, y) pairs: calibration only needs x
                item = item[0]
            samples.extend(split_samples(item, specs, error, what))
            if len(samples) >= num_samples:
                break
        samples = samples[:num_samples]
        source = f"iterable ({type(data).__name__})"
    else:
        raise error(f"unsupported {what} data of type {type(data).__name__}; pass a folder, .npy/.npz, array or iterable.")
    if not samples:
        raise error(f"the {what} data gave no usable samples ({len(skipped)} file(s) skipped); give at least one.")
    return CalibrationSet(samples, source, skipped, hash_samples(samples), seed, pre)


def hash_samples(samples: list[Sample]) -> str:
    h = hashlib.sha256()
    for s in samples:
        for name in sorted(s):
            a = np.ascontiguousarray(s[name])
            h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
            h.update(a.tobytes())
    return h.hexdigest()


def _single(specs: list[TensorSpec], error: type[InputError], what: str) -> TensorSpec:
    if len(specs) != 1:
        names = ", ".join(s.name for s in specs)
        raise error(f"{what} can feed only a single-input model; this one has inputs {names}: pass a dict or .npz keyed by name.")
    return specs[0]


def _from_folder(root: Path, name: str, pre: Preprocessing, n: int, seed: int, progress: bool | None, what: str,
                 error: type[InputError]) -> tuple[list[Sample], list[tuple[str, str]]]:
    files, skipped = images.list_images(root)
    if not files:
        raise error(f"{what} folder {root} has no image files ({len(skipped)} other file(s)); add png/jpg/bmp/webp images.")
    order = np.random.default_rng(seed).permutation(len(files)) if len(files) > n else range(len(files))
    samples: list[Sample] = []
    for i in track(order, f"Reading {what} images", total=min(n, len(files)), enabled=progress):
        try:
            arr = images.load_image(files[i], pre)
        except (OSError, ValueError, SyntaxError) as exc:
            skipped.append((str(files[i]), f"unreadable image: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"))
            continue
        _check_finite(arr, f"{files[i]}", error)
        samples.append({name: arr[None]})
        if len(samples) >= n:
            break
    if not samples:
        raise error(f"no readable image in {what} folder {root}: all {len(files)} image file(s) failed to decode.")
    return samples, skipped


def read_array_file(path: Path, specs: list[TensorSpec], error: type[InputError]) -> Any:
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            return np.load(path, allow_pickle=False)
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        else:
            raise error(f"unsupported data file {path}: use a folder of images, .npy or .npz.")
    except InputError:
        raise
    except Exception as exc:
        raise error(f"cannot read {path}: {exc}. It must be a numpy .npy/.npz without pickled objects.") from exc
    names = [s.name for s in specs]
    if set(names) <= set(arrays):
        return {k: arrays[k] for k in names}
    for key in ("x", "inputs", "images", "arr_0"):
        if key in arrays and len(names) == 1:
            return arrays[key]
    if len(arrays) == 1 and len(names) == 1:
        return next(iter(arrays.values()))
    raise error(f"{path} has arrays {sorted(arrays)}; name them after the model inputs {names} (or 'x' for one input).")


def split_samples(item: Any, specs: list[TensorSpec], error: type[InputError], what: str) -> list[Sample]:
    """One array/dict (batched or not) -> per-sample dicts, with shape, dtype and finiteness checked."""
    if isinstance(item, Mapping):
        missing = [s.name for s in specs if s.name not in item]
        if missing:
            raise error(f"{what} sample has keys {sorted(item)} but the model inputs are {[s.name for s in specs]}; missing {missing}.")
        arrays = {s.name: _batched(np.asarray(item[s.name]), s, error, what) for s in specs}
        counts = {len(a) for a in arrays.values()}
        if len(counts) != 1:
            raise error(f"{what} arrays have different sample counts: { {k: len(a) for k, a in arrays.items()} }.")
        return [{k: a[i : i + 1] for k, a in arrays.items()} for i in range(counts.pop())]
    spec = _single(specs, error, f"unnamed {what} data")
    arr = _batched(np.asarray(item), spec, error, what)
    return [{spec.name: arr[i : i + 1]} for i in range(len(arr))]


def _batched(arr: np.ndarray, spec: TensorSpec, error: type[InputError], what: str) -> np.ndarray:
    rank = len(spec.shape)
    if arr.ndim == rank - 1:
        arr = arr[None]
    if arr.dtype.kind not in "fiub":
        raise error(f"{what} data for input {spec.name!r} has dtype {arr.dtype}; numeric arrays only.")
    expected = spec.shape[1:]
    if arr.ndim != rank or any(e is not None and e != g for e, g in zip(expected, arr.shape[1:], strict=True)):
        hint = ""
        if arr.ndim == rank and rank == 4 and expected[-1] is not None and arr.shape[-1] != expected[-1]:
            hint = f" The channel count differs ({arr.shape[-1]} vs {expected[-1]}): convert the color mode or layout."
        raise error(
            f"{what} data for input {spec.name!r} has sample shape {tuple(arr.shape[1:]) if arr.ndim == rank else arr.shape} "
            f"but the model expects {tuple('?' if d is None else d for d in expected)}.{hint}"
        )
    arr = arr.astype(spec.dtype if spec.dtype.startswith(("float", "int", "uint")) else np.float32, copy=False)
    _check_finite(arr, f"input {spec.name!r}", error)
    return arr


def _check_finite(arr: np.ndarray, where: str, error: type[InputError]) -> None:
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        bad = int(np.size(arr) - np.isfinite(arr).sum())
        raise error(f"{where}: {bad} NaN/Inf value(s) in the data; clean or drop those samples.")


def _select(samples: list[Sample], n: int, seed: int) -> list[Sample]:
    if len(samples) <= n:
        return samples
    idx = np.sort(np.random.default_rng(seed).choice(len(samples), size=n, replace=False))
    return [samples[i] for i in idx]


__all__ = ["CalibrationSet", "Sample", "hash_samples", "load_calibration"]
