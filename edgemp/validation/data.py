"""Validation data: a folder with one sub-folder per class, (x, y) arrays, .npz, arrays or iterables."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edgemp._progress import track
from edgemp.calibration import images
from edgemp.calibration.data import Notes, iter_items, input_ranges, pick_arrays, read_arrays, split_samples
from edgemp.config import Preprocessing
from edgemp.errors import DataError
from edgemp.sources.base import TensorSpec

log = logging.getLogger(__name__)

_WHAT = "validation"


@dataclasses.dataclass(frozen=True)
class ValidationData:
    inputs: dict[str, np.ndarray]  # name -> (N, ...)
    labels: Any  # class ids (N,) or label maps (N, H, W) as int64; as given when a user metric reads them
    class_names: list[str] | None
    source: str
    skipped: list[tuple[str, str]]
    notes: list[str] = dataclasses.field(default_factory=list)  # what was done to the data (casts, keys, bit depth)
    warnings: list[str] = dataclasses.field(default_factory=list)  # findings such as range mismatches
    given_dtypes: dict[str, str] = dataclasses.field(default_factory=dict)  # input -> dtype of the data as given

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    def summary(self) -> dict[str, Any]:
        return {"source": self.source, "num_samples": len(self), "labelled": self.labels is not None,
                "num_classes": len(self.class_names) if self.class_names else None,
                "num_files_skipped": len(self.skipped),
                "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
                "range": input_ranges(self.inputs, self.given_dtypes), "notes": list(self.notes),
                "warnings": list(self.warnings)}


def load_validation(data: Any, specs: list[TensorSpec], preprocessing: Preprocessing | None = None,
                    max_samples: int | None = None, progress: bool | None = None,
                    class_names: list[str] | None = None, opaque_labels: bool = False) -> ValidationData:
    """`class_names` (model output order) maps class sub-folders to label indices; without it folders are
    sorted naturally, so '0_cat', '1_dog', ..., '10_eel' give 0, 1, ..., 10.

    Labels are class ids (N,) or label maps (N, H, W); with `opaque_labels` (a user metric judges the outputs)
    they are passed to the metric as given: any sequence with one entry per sample (e.g. boxes per image).

    Arrays given with a `preprocessing` (the one of the calibration image folder, or declared) are checked against
    the range it gives; a mismatch is recorded in `warnings` and warned about (see calibration.checks)."""
    if isinstance(data, ValidationData):
        return data
    if max_samples is not None and (isinstance(max_samples, bool) or not isinstance(max_samples, int | np.integer)
                                    or max_samples < 1):
        raise DataError(f"max_samples must be an integer >= 1 (or None for all), got {max_samples!r}")
    notes = Notes()
    labels: Any = None
    if isinstance(data, str | os.PathLike) and Path(data).is_dir():
        return _from_folder(Path(data), specs, preprocessing, max_samples, progress, class_names, notes)
    if isinstance(data, str | os.PathLike):
        path = Path(data)
        if not path.exists():
            raise DataError(f"validation path {path} does not exist.")
        arrays = _npz_with_labels(path, specs) if path.suffix.lower() == ".npz" else None
        if arrays is not None:
            data, labels, key_note = arrays
        else:
            data, key_note = read_arrays(path, specs, DataError, _WHAT)
        source = f"{path.suffix} file {path}" + (f" ({key_note})" if key_note else "")
    elif isinstance(data, bytes | bytearray | memoryview):
        raise DataError(f"validation data of type {type(data).__name__} is not supported: pass a folder, .npy/.npz "
                        "path, (x, y) arrays, an array or an iterable.")
    elif isinstance(data, tuple) and len(data) == 2 and not isinstance(data[0], tuple):
        data, labels = data
        source = "(x, y) arrays"
        if labels is None:
            raise DataError("validation (x, y) has y=None; pass x alone for unlabelled data.")
        if isinstance(data, str | os.PathLike):
            raise DataError(f"validation (x, y) has a path as x ({data}); pass the folder or file itself (a folder of "
                            "class sub-folders gives its labels), or arrays as (x, y).")
    elif isinstance(data, np.ndarray | Mapping):
        source = "array"
    elif isinstance(data, Iterable):
        xs, ys = [], []
        for item in iter_items(data, DataError, _WHAT):
            if isinstance(item, tuple) and len(item) == 2:
                got = split_samples(item[0], specs, DataError, _WHAT, notes)
                xs.extend(got)
                ys.extend(_item_labels(item[1], len(got), opaque_labels))
            else:
                xs.extend(split_samples(item, specs, DataError, _WHAT, notes))
            if max_samples and len(xs) >= max_samples:
                break
        if ys and len(ys) != len(xs):
            raise DataError(f"validation iterable gave {len(xs)} samples but {len(ys)} labels; give (x, y) for every item.")
        y_all: Any = (ys if opaque_labels else _stack_labels(ys)) if ys else None
        vd = _pack(xs, y_all, None, f"iterable ({type(data).__name__})", [], max_samples, opaque_labels, notes)
        return _checked(vd, preprocessing)
    else:
        raise DataError(f"unsupported validation data of type {type(data).__name__}; pass a folder, .npy/.npz, "
                        "(x, y) arrays, an array or an iterable.")
    samples = split_samples(data, specs, DataError, _WHAT, notes)
    y: Any = None
    if labels is not None:
        y = labels if opaque_labels else _label_array(labels, len(samples))
        try:
            n_labels = len(y)
        except TypeError:
            raise DataError(f"validation labels of type {type(y).__name__} have no length; give one label per "
                            "sample.") from None
        if n_labels != len(samples):
            raise DataError(f"validation has {len(samples)} inputs but {n_labels} labels; they must match one to one.")
    return _checked(_pack(samples, y, None, source, [], max_samples, opaque_labels, notes), preprocessing)


def random_inputs(specs: list[TensorSpec], n: int = 32, seed: int = 0) -> ValidationData:
    """Seeded stand-in data when none is given, typed per input: floats in [0, 1), integers (ids) in {0, 1}, bools.
    (Random floats for an integer input would be refused as non-integer ids.)"""
    rng = np.random.default_rng(seed)
    inputs = {}
    for s in specs:
        shape = (n, *[d or 1 for d in s.shape[1:]])
        kind = np.dtype(s.dtype).kind if str(s.dtype).startswith(("float", "int", "uint", "bool")) else "f"
        if kind in "iu":
            inputs[s.name] = rng.integers(0, 2, shape).astype(s.dtype)
        elif kind == "b":
            inputs[s.name] = rng.integers(0, 2, shape).astype(bool)
        else:
            inputs[s.name] = rng.random(shape, dtype=np.float32)
    return ValidationData(inputs, None, None, "random inputs (floats in [0, 1), integer inputs in {0, 1})", [])


def _checked(vd: ValidationData, preprocessing: Preprocessing | None) -> ValidationData:
    """Arrays with a known image preprocessing: record a range mismatch against it."""
    if preprocessing is not None:
        from edgemp.calibration.checks import range_findings

        vd.warnings.extend(range_findings(None, vd.inputs, preprocessing))
    return vd


def _stack_labels(ys: list[Any]) -> np.ndarray:
    try:
        return np.stack([np.asarray(v) for v in ys])
    except ValueError as exc:
        raise DataError(f"validation labels are not one regular array ({str(exc).splitlines()[0]}); for ragged "
                        "targets (e.g. boxes per image) pass a metric= that reads them.") from None


def _label_array(labels: Any, n: int) -> np.ndarray:
    """Class ids (N,) or label maps (N, H, W); (N, 1) columns are flattened."""
    try:
        y = np.asarray(labels)
    except ValueError as exc:
        raise DataError(f"labels are not a regular array ({exc}); for ragged targets (e.g. boxes per image) pass a "
                        "metric= that reads them.") from None
    if y.dtype.kind not in "iubf":
        raise DataError(f"labels must be integer class ids or label maps, got dtype {y.dtype}; for other targets pass "
                        "a metric= that reads them.")
    if y.ndim == 0:
        y = y.reshape(1)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y.reshape(-1)
    return y


def _item_labels(y: Any, count: int, opaque: bool) -> list[Any]:
    """The labels of one iterable item holding `count` samples, one entry per sample."""
    if opaque:
        return [y] if count == 1 else list(y)
    a = _label_array(y, count)
    if count == 1:
        return [a[0] if len(a) == 1 else a]  # a batched label of one sample, or one sample's label map
    return list(a)


def _npz_with_labels(path: Path, specs: list[TensorSpec]) -> tuple[Any, Any, str | None] | None:
    """(x, y, note) of an .npz holding labels ('y', 'labels' or 'label'), else None."""
    try:
        with np.load(path, allow_pickle=False) as z:
            files = set(z.files)
            label_key = next((k for k in ("y", "labels", "label") if k in files), None)
            if label_key is None:
                return None
            rest = {k: z[k] for k in files - {label_key}}
            y = z[label_key]
    except Exception as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"cannot read {path}: {text}. It must be a numpy .npz without pickled objects.") from None
    if not rest:
        raise DataError(f"{path} holds labels {label_key!r} but no inputs; add the inputs named after the model inputs "
                        f"{[s.name for s in specs]} (or 'x' for one input).")
    x, note = pick_arrays(rest, specs, path, DataError)
    return x, y, f"labels {label_key!r}" + (f"; {note}" if note else "")


def _from_folder(root: Path, specs: list[TensorSpec], pre: Preprocessing | None, max_samples: int | None,
                 progress: bool | None, class_names: list[str] | None, notes: Notes) -> ValidationData:
    if len(specs) != 1:
        raise DataError("an image folder can only validate a single-input model; pass a dict/.npz keyed by input name.")
    resolved = images.resolve(pre or Preprocessing(), specs[0].shape, DataError)
    try:
        return _read_folder(root, specs, resolved, max_samples, progress, class_names, notes)
    except OSError as exc:  # a sub-folder that cannot be listed, ...
        raise DataError(f"cannot read validation folder {root}: {exc}") from exc


def _read_folder(root: Path, specs: list[TensorSpec], resolved: Preprocessing, max_samples: int | None,
                 progress: bool | None, class_names: list[str] | None, notes: Notes) -> ValidationData:
    folders = sorted((p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=_natural)
    classes: list[str] = list(class_names) if class_names is not None and folders else folders
    index = {f: _class_index(f, classes) for f in folders}
    unknown = sorted(f for f, i in index.items() if i is None)
    if unknown:
        raise DataError(f"validation sub-folders {unknown} match no class name in {classes}; name each sub-folder "
                        "after its class (optionally with an index prefix such as '3_dress').")
    files, skipped = images.list_images(root)
    if classes:
        labelled = [(f, index[f.relative_to(root).parts[0]]) for f in files if len(f.relative_to(root).parts) > 1]
        skipped += [(str(f), "image outside the class sub-folders") for f in files if len(f.relative_to(root).parts) == 1]
    else:
        labelled = [(f, -1) for f in files]
    if max_samples and len(labelled) > max_samples:
        idx = np.sort(np.random.default_rng(0).choice(len(labelled), max_samples, replace=False))
        labelled = [labelled[i] for i in idx]
    xs, ys, done = [], [], []
    for f, y in track(labelled, "Reading validation images", total=len(labelled), enabled=progress):
        try:
            arr, note = images.read_image(f, resolved)
        except (OSError, ValueError) as exc:
            skipped.append((str(f), images.skip_reason(exc)))
            continue
        if note:
            done.append(note)
        xs.append({specs[0].name: arr[None]})
        ys.append(y)
    for text in images.summarize_notes(done):
        notes.add(f"validation folder {root}: {text}")
    if skipped:
        log.info("validation folder %s: %d file(s) skipped", root, len(skipped))
    if not xs:
        first = f" (last: {Path(skipped[-1][0]).name}: {skipped[-1][1]})" if skipped else ""
        raise DataError(f"validation folder {root} has no readable images ({len(files)} image file(s), "
                        f"{len(skipped)} file(s) skipped){first}.")
    labels = np.asarray(ys) if classes else None
    return _pack(xs, labels, classes or None, f"image folder {root}", skipped, None, notes=notes)


def _class_index(folder: str, classes: list[str]) -> int | None:
    import re

    if folder in classes:
        return classes.index(folder)
    m = re.match(r"^\d+[_-](.+)$", folder)
    return classes.index(m.group(1)) if m and m.group(1) in classes else None


def _natural(name: str) -> tuple[Any, ...]:
    import re

    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", name) if p)


def _pack(samples: list[dict[str, np.ndarray]], labels: Any, classes: list[str] | None, source: str,
          skipped: list[tuple[str, str]], max_samples: int | None, opaque: bool = False,
          notes: Notes | None = None) -> ValidationData:
    if not samples:
        raise DataError("the validation data has no samples.")
    if max_samples:
        samples = samples[:max_samples]
        labels = labels[:max_samples] if labels is not None else None
    inputs = {}
    for k in samples[0]:
        shapes = sorted({tuple(s[k].shape[1:]) for s in samples})
        if len(shapes) > 1:
            raise DataError(f"validation samples of input {k!r} have different shapes {shapes[:4]}; the samples are "
                            "validated as one batch: resize them to one size (a model with a dynamic height/width is "
                            "validated at one size at a time).")
        inputs[k] = np.concatenate([s[k] for s in samples])
    if labels is not None and not opaque:
        labels = np.asarray(labels)
        if labels.dtype.kind == "f":
            if not np.isfinite(labels).all() or not np.all(np.mod(labels, 1) == 0):
                raise DataError("labels must be integer class ids (or label maps of them); got non-integer values. "
                                "For other targets pass a metric= that reads them.")
        labels = labels.astype(np.int64)
    notes = notes or Notes()
    return ValidationData(inputs, labels, classes, source, skipped, notes.items, [], notes.given_dtypes)
