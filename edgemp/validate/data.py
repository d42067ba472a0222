"""Validation data: a folder with one sub-folder per class, (x, y) arrays, .npz, arrays or iterables."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edgemp._progress import track
from edgemp.calibration import images
from edgemp.calibration.data import read_array_file, split_samples
from edgemp.config import Preprocessing
from edgemp.errors import DataError
from edgemp.sources.base import TensorSpec

_WHAT = "validation"


@dataclasses.dataclass(frozen=True)
class ValidationData:
    inputs: dict[str, np.ndarray]  # name -> (N, ...)
    labels: Any  # class ids (N,) or label maps (N, H, W) as int64; as given when a user metric reads them
    class_names: list[str] | None
    source: str
    skipped: list[tuple[str, str]]

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    def summary(self) -> dict[str, Any]:
        return {"source": self.source, "num_samples": len(self), "labelled": self.labels is not None,
                "num_classes": len(self.class_names) if self.class_names else None,
                "num_files_skipped": len(self.skipped)}


def load_validation(data: Any, specs: list[TensorSpec], preprocessing: Preprocessing | None = None,
                    max_samples: int | None = None, progress: bool | None = None,
                    class_names: list[str] | None = None, opaque_labels: bool = False) -> ValidationData:
    """`class_names` (model output order) maps class sub-folders to label indices; without it folders are
    sorted naturally, so '0_cat', '1_dog', ..., '10_eel' give 0, 1, ..., 10.

    Labels are class ids (N,) or label maps (N, H, W); with `opaque_labels` (a user metric judges the outputs)
    they are passed to the metric as given: any sequence with one entry per sample (e.g. boxes per image)."""
    if isinstance(data, ValidationData):
        return data
    labels: Any = None
    if isinstance(data, str | os.PathLike) and Path(data).is_dir():
        return _from_folder(Path(data), specs, preprocessing, max_samples, progress, class_names)
    if isinstance(data, str | os.PathLike):
        path = Path(data)
        if not path.exists():
            raise DataError(f"validation path {path} does not exist.")
        arrays = _npz_with_labels(path) if path.suffix.lower() == ".npz" else None
        if arrays is not None:
            data, labels = arrays
        else:
            data = read_array_file(path, specs, DataError)
        source = f"{path.suffix} file {path}"
    elif isinstance(data, tuple) and len(data) == 2 and not isinstance(data[0], tuple):
        data, labels = data
        source = "(x, y) arrays"
        if labels is None:
            raise DataError("validation (x, y) has y=None; pass x alone for unlabelled data.")
    elif isinstance(data, np.ndarray | Mapping):
        source = "array"
    elif isinstance(data, Iterable):
        xs, ys = [], []
        for item in data:
            if isinstance(item, tuple) and len(item) == 2:
                got = split_samples(item[0], specs, DataError, _WHAT)
                xs.extend(got)
                ys.extend(_item_labels(item[1], len(got), opaque_labels))
            else:
                xs.extend(split_samples(item, specs, DataError, _WHAT))
            if max_samples and len(xs) >= max_samples:
                break
        if ys and len(ys) != len(xs):
            raise DataError(f"validation iterable gave {len(xs)} samples but {len(ys)} labels; give (x, y) for every item.")
        y_all: Any = (ys if opaque_labels else np.stack([np.asarray(v) for v in ys])) if ys else None
        return _pack(xs, y_all, None, f"iterable ({type(data).__name__})", [], max_samples, opaque_labels)
    else:
        raise DataError(f"unsupported validation data of type {type(data).__name__}.")
    samples = split_samples(data, specs, DataError, _WHAT)
    y: Any = None
    if labels is not None:
        y = labels if opaque_labels else _label_array(labels, len(samples))
        if len(y) != len(samples):
            raise DataError(f"validation has {len(samples)} inputs but {len(y)} labels; they must match one to one.")
    return _pack(samples, y, None, source, [], max_samples, opaque_labels)


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


def _npz_with_labels(path: Path) -> tuple[Any, Any] | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            files = set(z.files)
            label_key = next((k for k in ("y", "labels", "label") if k in files), None)
            if label_key is None:
                return None
            rest = {k: z[k] for k in files - {label_key}}
            y = z[label_key]
    except Exception as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    x: Any = rest
    for key in ("x", "inputs", "images"):
        if key in rest and len(rest) == 1:
            x = rest[key]
    return x, y


def _from_folder(root: Path, specs: list[TensorSpec], pre: Preprocessing | None, max_samples: int | None,
                 progress: bool | None, class_names: list[str] | None) -> ValidationData:
    if len(specs) != 1:
        raise DataError("an image folder can only validate a single-input model; pass a dict/.npz keyed by input name.")
    resolved = images.resolve(pre or Preprocessing(), specs[0].shape)
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
    xs, ys = [], []
    for f, y in track(labelled, "Reading validation images", total=len(labelled), enabled=progress):
        try:
            arr = images.load_image(f, resolved)
        except (OSError, ValueError, SyntaxError) as exc:
            skipped.append((str(f), f"unreadable image: {exc}"))
            continue
        xs.append({specs[0].name: arr[None]})
        ys.append(y)
    if not xs:
        raise DataError(f"validation folder {root} has no readable images.")
    labels = np.asarray(ys) if classes else None
    return _pack(xs, labels, classes or None, f"image folder {root}", skipped, None)


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
          skipped: list[tuple[str, str]], max_samples: int | None, opaque: bool = False) -> ValidationData:
    if not samples:
        raise DataError("the validation data has no samples.")
    if max_samples:
        samples = samples[:max_samples]
        labels = labels[:max_samples] if labels is not None else None
    inputs = {k: np.concatenate([s[k] for s in samples]) for k in samples[0]}
    if labels is not None and not opaque:
        labels = np.asarray(labels)
        if labels.dtype.kind == "f":
            if not np.isfinite(labels).all() or not np.all(np.mod(labels, 1) == 0):
                raise DataError("labels must be integer class ids (or label maps of them); got non-integer values. "
                                "For other targets pass a metric= that reads them.")
        labels = labels.astype(np.int64)
    return ValidationData(inputs, labels, classes, source, skipped)
