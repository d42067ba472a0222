"""Type and range checks for public parameters: one clear InputError up front, before anything heavy runs.

`num_threads=2.5`, `num_calibration_samples="10"` or `max_accuracy_drop="abc"` would otherwise fail deep inside a
framework with a message about something else (or worse, work by accident: True is an int in Python).
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Sequence
from typing import Any

from edgemp.errors import InputError


def _kind(v: Any) -> str:
    return f"{v!r} ({type(v).__name__})"


def integer(name: str, v: Any, lo: int | None = None, hi: int | None = None, none_ok: bool = False) -> int | None:
    if v is None and none_ok:
        return None
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise InputError(f"{name} must be an integer{_range(lo, hi)}, got {_kind(v)}.")
    v = int(v)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise InputError(f"{name} must be an integer{_range(lo, hi)}, got {v}.")
    return v


def real(name: str, v: Any, lo: float | None = None, hi: float | None = None, none_ok: bool = False,
         finite: bool = True) -> float | None:
    if v is None and none_ok:
        return None
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise InputError(f"{name} must be a number{_range(lo, hi)}, got {_kind(v)}.")
    v = float(v)
    if math.isnan(v) or (finite and math.isinf(v)) or (lo is not None and v < lo) or (hi is not None and v > hi):
        raise InputError(f"{name} must be a {'finite ' if finite else ''}number{_range(lo, hi)}, got {v}.")
    return v


def flag(name: str, v: Any) -> bool:
    if not isinstance(v, bool) and not (isinstance(v, numbers.Integral) and v in (0, 1)):
        raise InputError(f"{name} must be True or False, got {_kind(v)}.")
    return bool(v)


def optional_flag(name: str, v: Any) -> bool | None:
    return None if v is None else flag(name, v)


def strings(name: str, v: Any, none_ok: bool = False) -> tuple[str, ...] | None:
    """A sequence of strings (a lone string is refused: it would be read character by character)."""
    if v is None and none_ok:
        return None
    if isinstance(v, str | bytes) or not isinstance(v, Sequence | set | frozenset | tuple):
        raise InputError(f"{name} must be a list of strings, got {_kind(v)}" +
                         (f"; write [{v!r}]" if isinstance(v, str) else "") + ".")
    bad = [x for x in v if not isinstance(x, str)]
    if bad:
        raise InputError(f"{name} must be a list of strings; {_kind(bad[0])} is not one.")
    return tuple(v)


def text(name: str, v: Any, none_ok: bool = False) -> str | None:
    if v is None and none_ok:
        return None
    if not isinstance(v, str) or not v:
        raise InputError(f"{name} must be a non-empty string, got {_kind(v)}.")
    return v


def path(name: str, v: Any) -> str | os.PathLike[str]:
    if not isinstance(v, str | os.PathLike) or not str(v):
        raise InputError(f"{name} must be a path (str or pathlib.Path), got {_kind(v)}.")
    return v


def _range(lo: float | None, hi: float | None) -> str:
    if lo is not None and hi is not None:
        return f" in [{lo}, {hi}]"
    if lo is not None:
        return f" >= {lo}"
    if hi is not None:
        return f" <= {hi}"
    return ""
