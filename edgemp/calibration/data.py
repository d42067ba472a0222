"""Calibration sets from folders, .npy/.npz, arrays, dicts and iterables: deterministic, checked, hashed.

Every sample is checked against the model input it feeds (shape, dtype, finite values, values its dtype can
hold); what was done to the data beyond a plain copy (an integer array cast to float, float token ids cast to
int, the .npz array used for an input, 16-bit images scaled to 8-bit values, ...) is kept as a note and logged.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
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

log = logging.getLogger(__name__)

Sample = dict[str, np.ndarray]  # input name -> array with a leading batch dim of 1

STRING_DTYPES = ("string", "str", "bytes", "object", "tf.string")


@dataclasses.dataclass
class Notes:
    """What a loader did to the data beyond a plain copy (deduplicated, in order), and the dtypes it was given."""

    items: list[str] = dataclasses.field(default_factory=list)
    given_dtypes: dict[str, str] = dataclasses.field(default_factory=dict)

    def add(self, text: str, level: int = logging.INFO) -> None:
        if text not in self.items:
            self.items.append(text)
            log.log(level, "%s", text)


@dataclasses.dataclass(frozen=True)
class CalibrationSet:
    samples: list[Sample]
    source: str
    skipped: list[tuple[str, str]]  # (path, reason)
    sha256: str
    seed: int
    preprocessing: Preprocessing | None
    notes: list[str] = dataclasses.field(default_factory=list)  # what was done to the data (casts, keys, bit depth)
    warnings: list[str] = dataclasses.field(default_factory=list)  # findings such as range mismatches (see checks)
    given_dtypes: dict[str, str] = dataclasses.field(default_factory=dict)  # input -> dtype of the data as given

    def summary(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "num_samples": len(self.samples),
            "num_files_skipped": len(self.skipped),
            "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
            "sha256": self.sha256,
            "seed": self.seed,
            "preprocessing": self.preprocessing.to_dict() if self.preprocessing else None,
            "range": input_ranges(self.samples, self.given_dtypes),
            "notes": list(self.notes),
            "warnings": list(self.warnings),
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
    """Up to `num_samples` samples; with more available, a seeded choice (same inputs + seed -> same set).

    Arrays given with an explicit `preprocessing` are checked against the range it gives (see checks.range_findings);
    a mismatch is recorded in `warnings` and warned about."""
    if isinstance(num_samples, bool) or not isinstance(num_samples, int | np.integer) or num_samples < 1:
        raise error(f"num_samples must be an integer >= 1, got {num_samples!r}")
    if data is None:
        raise error(f"no {what} data given: pass a folder of images, a .npy/.npz file, an array or an iterable.")
    pre = None
    notes = Notes()
    skipped: list[tuple[str, str]] = []
    if isinstance(data, str | os.PathLike):
        path = Path(data)
        if not path.exists():
            raise error(f"{what} path {path} does not exist.")
        if path.is_dir():
            pre = images.resolve(preprocessing or Preprocessing(), _single(specs, error, "an image folder").shape, error)
            samples, skipped = _from_folder(path, specs[0].name, pre, num_samples, seed, progress, what, error, notes)
            source = f"image folder {path}"
        else:
            arrays, key_note = read_arrays(path, specs, error, what)
            samples = _select(split_samples(arrays, specs, error, what, notes), num_samples, seed)
            source = f"{path.suffix} file {path}" + (f" ({key_note})" if key_note else "")
    elif isinstance(data, bytes | bytearray | memoryview):
        raise error(f"{what} data of type {type(data).__name__} is not supported: pass a folder, .npy/.npz path, an "
                    "array or an iterable of arrays.")
    elif isinstance(data, np.ndarray | Mapping):
        samples = _select(split_samples(data, specs, error, what, notes), num_samples, seed)
        source = "array" if isinstance(data, np.ndarray) else "dict of arrays"
    elif isinstance(data, tuple) and len(data) == 2 and not isinstance(data[0], tuple) and _labels_like(data[1], specs):
        samples = _select(split_samples(data[0], specs, error, what, notes), num_samples, seed)  # (x, y): x calibrates
        source = "(x, y) arrays: x"
    elif isinstance(data, Iterable):
        samples = []
        for item in iter_items(data, error, what):  # generators: the first num_samples in order (no way to choose)
            if isinstance(item, tuple) and len(item) == 2:  # (x, y) pairs: calibration only needs x
                item = item[0]
            samples.extend(split_samples(item, specs, error, what, notes))
            if len(samples) >= num_samples:
                break
        samples = samples[:num_samples]
        source = f"iterable ({type(data).__name__})"
    else:
        raise error(f"unsupported {what} data of type {type(data).__name__}; pass a folder, .npy/.npz, array or iterable.")
    if not samples:
        raise error(f"the {what} data gave no usable samples ({len(skipped)} file(s) skipped); give at least one.")
    cal = CalibrationSet(samples, source, skipped, hash_samples(samples), seed, pre, notes.items, [],
                         notes.given_dtypes)
    if pre is None and preprocessing is not None:  # arrays, with a declared preprocessing: do they match it?
        from edgemp.calibration.checks import range_findings

        cal.warnings.extend(range_findings(samples, None, preprocessing, names=(what, "")))
    return cal


def hash_samples(samples: list[Sample]) -> str:
    h = hashlib.sha256()
    for s in samples:
        for name in sorted(s):
            a = np.ascontiguousarray(s[name])
            h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
            h.update(a.tobytes())
    return h.hexdigest()


def input_ranges(samples: list[Sample] | Mapping[str, np.ndarray],
                 given_dtypes: Mapping[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """Per input: min, max, mean of the values fed, the dtype fed, the dtype given (if it differs) and whether every
    value is an integer (0..255 integers feeding a float input usually mean unscaled pixels)."""
    from edgemp.calibration.checks import stats

    out = {}
    for name, s in stats(samples).items():
        row: dict[str, Any] = {"min": s.lo, "max": s.hi, "mean": s.mean, "dtype": s.dtype,
                               "integer_valued": s.integer_valued}
        if given_dtypes and given_dtypes.get(name, s.dtype) != s.dtype:
            row["given_dtype"] = given_dtypes[name]
        out[name] = row
    return out


def _labels_like(y: Any, specs: list[TensorSpec]) -> bool:
    """The second of a 2-tuple is labels (not a second batch of inputs) when it could not feed the model."""
    try:
        split_samples(y, specs, InputError, "")
    except InputError:
        return True
    return False


def iter_items(data: Iterable[Any], error: type[InputError], what: str) -> Iterable[Any]:
    """Iterate the user's iterable; an exception it raises becomes a typed error naming it."""
    it = iter(data)
    i = 0
    while True:
        try:
            item = next(it)
        except StopIteration:
            return
        except Exception as exc:
            raise error(f"the {what} iterable ({type(data).__name__}) raised {type(exc).__name__} at item {i}: "
                        f"{exc}") from exc
        yield item
        i += 1


def _single(specs: list[TensorSpec], error: type[InputError], what: str) -> TensorSpec:
    if len(specs) != 1:
        names = ", ".join(s.name for s in specs)
        raise error(f"{what} can feed only a single-input model; this one has inputs {names}: pass a dict or .npz keyed by name.")
    return specs[0]


def _from_folder(root: Path, name: str, pre: Preprocessing, n: int, seed: int, progress: bool | None, what: str,
                 error: type[InputError], notes: Notes) -> tuple[list[Sample], list[tuple[str, str]]]:
    try:
        files, skipped = images.list_images(root)
    except OSError as exc:
        raise error(f"cannot list {what} folder {root}: {exc}") from exc
    if not files:
        raise error(f"{what} folder {root} has no image files ({len(skipped)} other file(s)); add png/jpg/bmp/webp images.")
    order = np.random.default_rng(seed).permutation(len(files)) if len(files) > n else range(len(files))
    samples: list[Sample] = []
    done: list[str] = []
    for i in track(order, f"Reading {what} images", total=min(n, len(files)), enabled=progress):
        try:
            arr, note = images.read_image(files[i], pre)
        except (OSError, ValueError) as exc:
            skipped.append((str(files[i]), images.skip_reason(exc)))
            continue
        _check_finite(arr, f"{files[i]}", error)
        if note:
            done.append(note)
        samples.append({name: arr[None]})
        if len(samples) >= n:
            break
    for text in images.summarize_notes(done):
        notes.add(f"{what} folder {root}: {text}")
    if skipped:
        log.info("%s folder %s: %d file(s) skipped", what, root, len(skipped))
    if not samples:
        raise error(f"no readable image in {what} folder {root}: all {len(files)} image file(s) failed to decode "
                    f"(last: {Path(skipped[-1][0]).name}: {skipped[-1][1]}).")
    return samples, skipped


def read_array_file(path: Path, specs: list[TensorSpec], error: type[InputError]) -> Any:
    return read_arrays(path, specs, error)[0]


def read_arrays(path: Path, specs: list[TensorSpec], error: type[InputError], what: str = "data") -> tuple[Any, str | None]:
    """The array (or dict of arrays) in a .npy/.npz for the model inputs, and which .npz arrays were used when
    their names are not the input names (None when they are, or for a .npy)."""
    suffix = path.suffix.lower()
    if suffix not in (".npy", ".npz"):
        raise error(f"unsupported {what} file {path}: use a folder of images, .npy or .npz.")
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            return loaded, None
        with loaded as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise error(f"cannot read {path}: {text}. It must be a numpy .npy/.npz without pickled objects.") from None
    return pick_arrays(arrays, specs, path, error)


def pick_arrays(arrays: Mapping[str, Any], specs: list[TensorSpec], path: Path | str,
                error: type[InputError]) -> tuple[Any, str | None]:
    """Match the arrays of an .npz to the model inputs: by input name; else, for one input, the conventional key
    ('x', 'inputs', 'images', 'arr_0') or the only array — said in the note (and logged) so a wrong key is seen."""
    names = [s.name for s in specs]
    if set(names) <= set(arrays):
        extra = sorted(set(arrays) - set(names))
        return {k: arrays[k] for k in names}, (f"arrays {extra} not used" if extra else None)
    if len(names) == 1:
        key = next((k for k in ("x", "inputs", "images", "arr_0") if k in arrays), None)
        if key is None and len(arrays) == 1:
            key = next(iter(arrays))
        if key is not None:
            note = f"array {key!r} used for input {names[0]!r}"
            if len(arrays) > 1:
                note += f"; {sorted(set(arrays) - {key})} not used"
            conventional = key in ("x", "inputs", "images", "arr_0")
            log.log(logging.INFO if conventional else logging.WARNING, "%s: %s%s", path, note,
                    "" if conventional else f" (it is not named after the input; the .npz has {sorted(arrays)})")
            return arrays[key], note
    raise error(f"{path} has arrays {sorted(arrays)}; name them after the model inputs {names} (or 'x' for one input).")


def split_samples(item: Any, specs: list[TensorSpec], error: type[InputError], what: str,
                  notes: Notes | None = None) -> list[Sample]:
    """One array/dict (batched or not) -> per-sample dicts, with shape, dtype, values and finiteness checked."""
    if isinstance(item, Mapping):
        missing = [s.name for s in specs if s.name not in item]
        if missing:
            keys = sorted(map(str, item))
            raise error(f"{what} sample has keys {keys} but the model inputs are {[s.name for s in specs]}; missing {missing}.")
        arrays = {s.name: _batched(_asarray(item[s.name], s, error, what), s, error, what, notes) for s in specs}
        counts = {len(a) for a in arrays.values()}
        if len(counts) != 1:
            raise error(f"{what} arrays have different sample counts: { {k: len(a) for k, a in arrays.items()} }.")
        return [{k: a[i : i + 1] for k, a in arrays.items()} for i in range(counts.pop())]
    spec = _single(specs, error, f"unnamed {what} data")
    arr = _batched(_asarray(item, spec, error, what), spec, error, what, notes)
    return [{spec.name: arr[i : i + 1]} for i in range(len(arr))]


def _asarray(x: Any, spec: TensorSpec, error: type[InputError], what: str) -> np.ndarray:
    try:
        return np.asarray(x)
    except Exception as exc:  # ragged nested lists, objects whose __array__ raises, ...
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise error(f"{what} data for input {spec.name!r} is not a regular numeric array ({text}); give one array "
                    "per input with the same shape for every sample.") from None


def _fmt(shape: tuple[int | None, ...]) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def _batched(arr: np.ndarray, spec: TensorSpec, error: type[InputError], what: str,
             notes: Notes | None = None) -> np.ndarray:
    rank = len(spec.shape)
    expected = spec.shape[1:]
    model_dtype = str(spec.dtype).lower()
    if model_dtype in STRING_DTYPES:
        raise error(f"model input {spec.name!r} takes strings ({spec.dtype}, shape {_fmt(spec.shape)}); edgemp feeds "
                    "numeric arrays and the TFLite builtin ops have no string processing. Move the tokenizer / "
                    "string lookup out of the model (into the app) and make the model take int32 token ids.")
    kind = arr.dtype.kind
    if kind in "USO":
        got = "strings" if kind in "US" else "Python objects (dtype object: ragged or mixed data?)"
        raise error(f"{what} data for input {spec.name!r} holds {got}; it takes numeric {spec.dtype} arrays of sample "
                    f"shape {_fmt(expected)}" + (": tokenize text into ids first." if kind in "US" else "."))
    if kind not in "fiub":
        raise error(f"{what} data for input {spec.name!r} has dtype {arr.dtype}; numeric arrays only "
                    f"({'take the real part or split real/imaginary into channels' if kind == 'c' else 'int, float or bool'}).")
    if arr.ndim == rank - 1:
        arr = arr[None]
    if arr.ndim != rank or any(e is not None and e != g for e, g in zip(expected, arr.shape[1:], strict=True)):
        hint = ""
        if arr.ndim == rank and rank == 4 and expected[-1] is not None and arr.shape[-1] != expected[-1]:
            hint = f" The channel count differs ({arr.shape[-1]} vs {expected[-1]}): convert the color mode or layout."
        elif arr.ndim == rank + 1 and arr.shape[-1] == 1:
            hint = " It has a trailing axis of 1 the model does not: squeeze it."
        elif not expected:
            hint = f" The model takes one value per sample (batches of shape {_fmt(spec.shape)})."
        elif arr.ndim < rank - 1:
            hint = f" The model takes batches of shape {_fmt(spec.shape)}."
        shown = tuple(arr.shape[1:]) if arr.ndim == rank else arr.shape
        raise error(f"{what} data for input {spec.name!r} has sample shape {shown} but the model expects "
                    f"{_fmt(expected)}.{hint}")
    if notes is not None:
        notes.given_dtypes.setdefault(spec.name, str(arr.dtype))
    return _cast(arr, spec, error, what, notes)


def _cast(arr: np.ndarray, spec: TensorSpec, error: type[InputError], what: str, notes: Notes | None) -> np.ndarray:
    """Cast to the model input's dtype, refusing what the cast would silently change (NaN, overflow, fractions)."""
    where = f"{what} input {spec.name!r}"
    target = np.dtype(spec.dtype) if str(spec.dtype).startswith(("float", "int", "uint", "bool")) else np.dtype(np.float32)
    _check_finite(arr, where, error)
    if arr.size == 0 or arr.dtype == target:
        return arr.astype(target, copy=False)
    if target.kind in "iu":
        if arr.dtype.kind == "f":
            frac = arr != np.round(arr)
            if frac.any():
                v = float(arr[frac].flat[0])
                raise error(f"{where} is {target} (e.g. token ids or class indices) but the data holds non-integer floats "
                            f"such as {v:g} ({int(frac.sum())} value(s)); pass integer ids ({arr.dtype} given).")
        info = np.iinfo(target)
        lo, hi = (arr.min(), arr.max())
        if float(lo) < info.min or float(hi) > info.max:
            raise error(f"{where} is {target} but the data holds values {float(lo):.6g}..{float(hi):.6g}, outside "
                        f"{info.min}..{info.max}; they would wrap around silently.")
        if notes is not None and arr.dtype.kind == "f":
            notes.add(f"{where}: {arr.dtype} data cast to {target} (every value is a whole number)", logging.WARNING)
        elif notes is not None and arr.dtype.kind == "b":
            notes.add(f"{where}: bool data cast to {target} (0/1)")
        return arr.astype(target)
    if target.kind == "f":
        if arr.dtype.kind in "iuf" and (arr.dtype.kind != "f" or np.finfo(arr.dtype).max > np.finfo(target).max):
            big = np.abs(arr.astype(np.float64)) > np.finfo(target).max
            if big.any():
                raise error(f"{where}: {int(big.sum())} value(s) (e.g. {float(arr[big].flat[0]):.6g}) overflow {target} "
                            "(they would become Inf); rescale the data.")
        if notes is not None and arr.dtype.kind in "iu":
            lo, hi = int(arr.min()), int(arr.max())
            pixels = arr.ndim == 4 and lo >= 0 and 1 < hi <= 255  # images as 0..255 integers
            notes.add(f"{where}: {arr.dtype} data ({lo}..{hi}) cast to {target} as is, without scaling"
                      + ("; the model must expect 0..255 pixels (e.g. it has a Rescaling layer), else divide by 255 or "
                         "use an image folder with its preprocessing" if pixels else ""),
                      logging.WARNING if pixels else logging.INFO)
        elif notes is not None and arr.dtype.kind == "b":
            notes.add(f"{where}: bool data cast to {target} (0.0/1.0)")
    return arr.astype(target)


def _check_finite(arr: np.ndarray, where: str, error: type[InputError]) -> None:
    if arr.dtype.kind == "f" and arr.size and not np.isfinite(arr).all():
        bad = int(np.size(arr) - np.isfinite(arr).sum())
        raise error(f"{where}: {bad} NaN/Inf value(s) in the data; clean or drop those samples.")


def _select(samples: list[Sample], n: int, seed: int) -> list[Sample]:
    if len(samples) <= n:
        return samples
    idx = np.sort(np.random.default_rng(seed).choice(len(samples), size=n, replace=False))
    return [samples[i] for i in idx]


__all__ = ["CalibrationSet", "Sample", "hash_samples", "input_ranges", "load_calibration", "read_arrays"]
