"""Scoring candidate artifacts during analysis and search: accuracy (with labels) and output fidelity.

The float reference outputs are computed once; every candidate is one LiteRT run over the same samples.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from edgemp.config import RuntimeOptions
from edgemp.errors import InputError
from edgemp.validate.metrics import compare, topk
from edgemp.validate.runtime import Runner


@dataclasses.dataclass(frozen=True)
class Score:
    top1: float | None  # with labels
    sqnr_db: float  # worst output
    cosine: float  # worst output
    top1_agreement: float | None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Budget:
    """What "good enough" means: an absolute top-1 drop (labels), else an output-fidelity floor."""

    max_accuracy_drop: float | None = None
    min_sqnr_db: float | None = None
    min_cosine: float | None = None

    @classmethod
    def resolve(cls, max_accuracy_drop: float | None, min_sqnr_db: float | None, min_cosine: float | None,
                labelled: bool) -> Budget:
        if min_sqnr_db is not None or min_cosine is not None:
            return cls(None, min_sqnr_db, min_cosine)
        if max_accuracy_drop is not None and not labelled:
            raise InputError(
                "an accuracy budget (max_accuracy_drop) needs labelled validation data (class sub-folders, (x, y) "
                "arrays or .npz with y). Without labels, give an output-fidelity target instead: min_sqnr_db= "
                "(e.g. 30) or min_cosine= (e.g. 0.999), which compare the artifact's outputs with the float model's."
            )
        if max_accuracy_drop is None:
            raise InputError("precision 'mixed' needs a budget: max_accuracy_drop= (with labels), or min_sqnr_db= / "
                             "min_cosine= (output fidelity).")
        return cls(max_accuracy_drop, None, None)

    def met(self, s: Score, float_top1: float | None) -> bool:
        if self.max_accuracy_drop is not None:
            return s.top1 is not None and float_top1 is not None and float_top1 - s.top1 <= self.max_accuracy_drop + 1e-9
        ok = True
        if self.min_sqnr_db is not None:
            ok &= s.sqnr_db >= self.min_sqnr_db
        if self.min_cosine is not None:
            ok &= s.cosine >= self.min_cosine
        return ok

    def objective(self, s: Score) -> tuple[float, float]:
        """Higher is better; ties on the budgeted metric are broken by SQNR (continuous, less noisy)."""
        sq = s.sqnr_db if math.isfinite(s.sqnr_db) else (1e9 if s.sqnr_db > 0 else -1e9)
        if self.max_accuracy_drop is not None:
            return (s.top1 or 0.0, sq)
        if self.min_cosine is not None and self.min_sqnr_db is None:
            return (s.cosine, sq)
        return (sq, s.cosine)

    def near(self, a: tuple[float, float], b: tuple[float, float]) -> bool:
        """Equal cost for the search's tie-break: same accuracy and SQNR within 0.25 dB; or fidelity within
        0.25 dB SQNR / 1e-5 cosine."""
        if self.max_accuracy_drop is not None:
            return abs(a[0] - b[0]) < 1e-9 and abs(a[1] - b[1]) <= 0.25
        return abs(a[0] - b[0]) <= (1e-5 if self.min_cosine is not None and self.min_sqnr_db is None else 0.25)

    def describe(self) -> str:
        if self.max_accuracy_drop is not None:
            return f"top-1 drop <= {100 * self.max_accuracy_drop:.2f} points"
        parts = ([f"SQNR >= {self.min_sqnr_db} dB"] if self.min_sqnr_db is not None else []) + \
                ([f"cosine >= {self.min_cosine}"] if self.min_cosine is not None else [])
        return " and ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Scorer:
    """Runs candidate artifacts on fixed samples (artifact layout) against precomputed float outputs."""

    def __init__(self, inputs: dict[str, np.ndarray], reference: list[np.ndarray], labels: np.ndarray | None,
                 opts: RuntimeOptions) -> None:
        self.inputs, self.reference, self.labels, self.opts = inputs, reference, labels, opts
        self.runs = 0
        self.float_top1 = topk(reference[0], labels, 1) if labels is not None else None

    def __call__(self, artifact: bytes) -> Score:
        self.runs += 1
        out = Runner(artifact, self.opts).run(self.inputs)
        ms = [compare(np.asarray(r, np.float32).reshape(o.shape), o) for r, o in zip(self.reference, out, strict=True)]
        return Score(
            top1=topk(out[0], self.labels, 1) if self.labels is not None else None,
            sqnr_db=min(m["sqnr_db"] for m in ms),
            cosine=min(m["cosine"] if math.isfinite(m["cosine"]) else -1.0 for m in ms),
            top1_agreement=ms[0]["top1_agreement"],
        )
