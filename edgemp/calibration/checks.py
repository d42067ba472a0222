"""Range checks between calibration data, validation data and the declared image preprocessing.

Calibration data on another scale than the validation data (uint8 0..255 arrays for a model fed 0..1, or the
mean/std normalisation applied to one set and not the other) converts, and passes when validation shares the
mistake, while real accuracy collapses. These checks compare the ranges and say so. The rules (docs/errors.md#data):

- calibration vs validation, per float input: the value spans (max - min) differ by more than 8x; or one set is
  centred (its minimum is below zero by at least a quarter of its span) while the other has no negative value.
- arrays vs the declared preprocessing of image folders ((0..255 * scale - mean) / std per channel), per 4-D float
  input: values reach outside that range by more than a quarter of its span (e.g. whole numbers 0..255 where the
  folder preprocessing gives 0..1); or they span less than 1/32 of it (0..1 data where it gives 0..255). Data read
  from an image folder is never checked against its own preprocessing, and the bare default Preprocessing() (what
  the CLI passes when no option is given) is not a declaration: arrays are only checked against a preprocessing
  that was given, or resolved from an image folder.

Calibration 0..0.9 against validation 0..1, a darker or brighter validation set, or two sets normalised alike do
not fire. Findings are strings, recorded in the summaries' `warnings` and warned about (RangeMismatchWarning).
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from edgemp.config import Preprocessing
from edgemp.errors import RangeMismatchWarning

log = logging.getLogger(__name__)

SPAN_RATIO = 8.0  # calibration vs validation spans differing by more than this: not preprocessed alike
OUTSIDE = 0.25  # reaching outside the preprocessing range by more than this fraction of its span
NARROW = 32.0  # using less than 1/NARROW of the preprocessing range
CENTRED = 0.25  # a minimum below zero by at least this fraction of the span: centred (mean/std) data


@dataclasses.dataclass(frozen=True)
class Stats:
    lo: float
    hi: float
    mean: float
    dtype: str
    integer_valued: bool
    ndim: int  # of one batched sample, e.g. 4 for (1, H, W, C)

    @property
    def span(self) -> float:
        return self.hi - self.lo

    @property
    def floating(self) -> bool:
        return self.dtype.startswith(("float", "bfloat"))

    def text(self) -> str:
        whole = " (whole numbers)" if self.integer_valued and self.floating and self.hi > 1.5 else ""
        return f"{_g(self.lo)}..{_g(self.hi)}{whole}"


def stats(data: Sequence[Mapping[str, np.ndarray]] | Mapping[str, np.ndarray] | Any) -> dict[str, Stats]:
    """Per input: min, max, mean over every value. `data`: a list of samples (name -> array), a dict of batched
    arrays, a CalibrationSet or a ValidationData."""
    if hasattr(data, "samples"):
        data = data.samples
    elif hasattr(data, "inputs"):
        data = data.inputs
    parts: dict[str, list[np.ndarray]] = {}
    if isinstance(data, Mapping):
        for k, v in data.items():
            parts.setdefault(str(k), []).append(np.asarray(v))
    else:
        for sample in data:
            for k, v in sample.items():
                parts.setdefault(str(k), []).append(np.asarray(v))
    out = {}
    for name, arrays in parts.items():
        arrays = [a for a in arrays if a.size]
        if not arrays or arrays[0].dtype.kind not in "fiub":
            continue
        lo = min(float(a.min()) for a in arrays)
        hi = max(float(a.max()) for a in arrays)
        total = sum(float(a.sum(dtype=np.float64)) for a in arrays)
        count = sum(a.size for a in arrays)
        whole = all(a.dtype.kind in "iub" or bool(np.all(a == np.round(a))) for a in arrays)
        out[name] = Stats(lo, hi, total / count, str(arrays[0].dtype), whole, arrays[0].ndim)
    return out


def preprocessing_range(pre: Preprocessing) -> tuple[float, float]:
    """The range (min, max) an image folder read with `pre` can give: (0..255 * scale - mean) / std per channel."""
    n = max(len(pre.mean), len(pre.std))
    mean = np.broadcast_to(np.asarray(pre.mean, np.float64), (n,))
    std = np.broadcast_to(np.asarray(pre.std, np.float64), (n,))
    ends = np.stack([(0.0 - mean) / std, (255.0 * pre.scale - mean) / std])
    return float(ends.min()), float(ends.max())


def range_findings(cal_samples: Any, val_inputs: Any, preprocessing: Preprocessing | None = None, *,
                   names: tuple[str, str] = ("calibration", "validation"), warn: bool = True) -> list[str]:
    """Range mismatches between the calibration data, the validation data and the image preprocessing.

    `cal_samples`: a CalibrationSet or its `.samples` (list of name -> (1, ...) arrays), or None. `val_inputs`: a
    ValidationData or its `.inputs` (name -> (N, ...) arrays), or None. `preprocessing`: the Preprocessing of the
    image folder(s) used, or the one declared, else None (Preprocessing() with every default counts as None). A
    CalibrationSet / ValidationData read from an image folder is not checked against the preprocessing (it is what
    the preprocessing gives); plain arrays are.
    Returns one message per finding (empty: nothing found); with `warn`, each is also warned
    (RangeMismatchWarning) and logged."""
    sets = [(names[0], cal_samples), (names[1], val_inputs)]
    found_stats = {label: stats(data) if data is not None else {} for label, data in sets}
    from_folder = {label: _from_folder(data) for label, data in sets}
    findings: list[str] = []
    a, b = found_stats[names[0]], found_stats[names[1]]
    for name in sorted(set(a) & set(b)):
        msg = _compare(name, names, a[name], b[name])
        if msg:
            findings.append(msg)
    if preprocessing is not None and preprocessing != Preprocessing():  # the bare default is not a declaration
        lo, hi = preprocessing_range(preprocessing)
        for label, _ in sets:
            if from_folder[label]:
                continue
            images = {k: s for k, s in found_stats[label].items() if s.floating and s.ndim == 4}
            if len(images) != 1:
                continue
            (name, s), = images.items()
            msg = _against_preprocessing(name, label, s, lo, hi, preprocessing)
            if msg:
                findings.append(msg)
    if warn:
        for msg in findings:
            warnings.warn(msg, RangeMismatchWarning, stacklevel=2)
            log.info("%s", msg)
    return findings


def check_ranges(cal: Any, vdata: Any, preprocessing: Preprocessing | None = None) -> list[str]:
    """range_findings on a CalibrationSet and a ValidationData (either may be None); each new finding is appended
    to the `warnings` of both (so their summaries carry it), warned and logged once. Returns the new findings."""
    findings = range_findings(cal, vdata, preprocessing, warn=False)
    new = [f for f in findings if not any(f in getattr(x, "warnings", ()) for x in (cal, vdata) if x is not None)]
    for x in (cal, vdata):
        if x is not None and isinstance(getattr(x, "warnings", None), list):
            x.warnings.extend(f for f in findings if f not in x.warnings)
    for msg in new:
        warnings.warn(msg, RangeMismatchWarning, stacklevel=2)
        log.info("%s", msg)
    return new


def _from_folder(data: Any) -> bool:
    if getattr(data, "preprocessing", None) is not None:  # a CalibrationSet read from an image folder
        return True
    return str(getattr(data, "source", "")).startswith("image folder")  # a ValidationData read from one


def _compare(name: str, labels: tuple[str, str], a: Stats, b: Stats) -> str | None:
    if not (a.floating or b.floating) or a.span <= 0 or b.span <= 0:
        return None
    ratio = max(a.span, b.span) / min(a.span, b.span)
    head = f"range mismatch on input {name!r}: {labels[0]} data spans {a.text()} but {labels[1]} data spans {b.text()}"
    tail = (f"int8 scales come from the {labels[0]} range, so the artifact is calibrated for data it will not see "
            "(and a validation that shares the mistake still passes). Preprocess both sets the same way.")
    if ratio > SPAN_RATIO:
        return f"{head} ({ratio:.3g}x apart): the two sets are not scaled alike{_pixels_hint(labels, a, b)}; {tail}"
    for (la, sa), (lb, sb) in (((labels[0], a), (labels[1], b)), ((labels[1], b), (labels[0], a))):
        if sa.lo < -CENTRED * sa.span and sb.lo >= 0:
            return (f"{head}: the {la} data is centred (mean/std normalised, values below 0) but the {lb} data has no "
                    f"negative value: the two sets are not normalised alike; {tail}")
    return None


def _pixels_hint(labels: tuple[str, str], a: Stats, b: Stats) -> str:
    for label, s, other in ((labels[0], a, b), (labels[1], b, a)):
        if s.integer_valued and 1.5 < s.hi <= 255 and s.lo >= 0 and other.hi <= 1.5:
            return f" (the {label} data holds whole numbers up to {_g(s.hi)}: unscaled 0..255 pixels? divide by 255)"
    return ""


def _against_preprocessing(name: str, label: str, s: Stats, lo: float, hi: float, pre: Preprocessing) -> str | None:
    span = hi - lo
    if span <= 0:
        return None
    desc = f"the image preprocessing (scale {_g(pre.scale)}, mean {list(pre.mean)}, std {list(pre.std)}) gives {_g(lo)}..{_g(hi)}"
    head = f"range mismatch on input {name!r}: {label} data spans {s.text()} but {desc}"
    if s.hi > hi + OUTSIDE * span or s.lo < lo - OUTSIDE * span:
        hint = (": unscaled 0..255 pixels? divide by 255, or give the image folder itself" if s.integer_valued and
                s.lo >= 0 and s.hi <= 255 and hi <= 1.5 else "")
        return (f"{head}; the arrays are not preprocessed as the images are{hint}. Preprocess the arrays the same way "
                "(or pass the preprocessing they were made with).")
    if s.span > 0 and s.span * NARROW < span:
        return (f"{head}; the arrays use less than 1/{NARROW:g} of that range: they are not scaled as the images are "
                "(already divided by 255?). Preprocess the arrays the same way (or pass the preprocessing they were "
                "made with).")
    return None


def _g(v: float) -> str:
    return f"{v:.4g}"


__all__ = ["Stats", "check_ranges", "preprocessing_range", "range_findings", "stats"]
