"""Scoring candidate artifacts during analysis and search: accuracy (with labels) and output fidelity.

The float reference outputs are computed once; every candidate is one LiteRT run over the same samples.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import math
from typing import Any

import numpy as np

from edgemp.config import RuntimeOptions
from edgemp.errors import EdgempError, InputError
from edgemp.validation.judge import TaskJudge
from edgemp.validation.metrics import compare
from edgemp.validation.runtime import Runner


@dataclasses.dataclass(frozen=True)
class Score:
    accuracy: float | None  # the task score (top-1, mIoU or the user's metric) with labels or a metric
    sqnr_db: float  # worst output
    cosine: float  # worst output
    top1_agreement: float | None
    error: str | None = None  # the candidate could not be built or run: infeasible, never chosen

    @classmethod
    def infeasible(cls, error: str) -> Score:
        return cls(None, float("-inf"), -1.0, None, error)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class FailedCandidate(bytes):
    """A candidate the quantizer could not produce: scored as infeasible instead of stopping the search."""

    error: str = ""

    @classmethod
    def of(cls, error: str) -> FailedCandidate:
        c = cls(b"")
        c.error = error
        return c


@dataclasses.dataclass(frozen=True)
class Budget:
    """What "good enough" means: an absolute top-1 drop (labels), else an output-fidelity floor."""

    max_accuracy_drop: float | None = None
    min_sqnr_db: float | None = None
    min_cosine: float | None = None
    metric: str = "top-1"  # what max_accuracy_drop is a drop of: top-1, mIoU, or the user metric's name

    @classmethod
    def resolve(cls, max_accuracy_drop: float | None, min_sqnr_db: float | None, min_cosine: float | None,
                labelled: bool, metric: str = "top-1") -> Budget:
        if min_sqnr_db is not None or min_cosine is not None:
            return cls(None, min_sqnr_db, min_cosine)
        if max_accuracy_drop is not None and not labelled:
            raise InputError(
                "an accuracy budget (max_accuracy_drop) needs labelled validation data (class sub-folders, (x, y) "
                "arrays or .npz with y) or a metric=. Without them, give an output-fidelity target instead: "
                "min_sqnr_db= (e.g. 30) or min_cosine= (e.g. 0.999), which compare the artifact's outputs with the "
                "float model's."
            )
        if max_accuracy_drop is None:
            raise InputError("precision 'mixed' needs a budget: max_accuracy_drop= (with labels or a metric), or "
                             "min_sqnr_db= / min_cosine= (output fidelity).")
        return cls(max_accuracy_drop, None, None, metric)

    @property
    def in_points(self) -> bool:
        return self.metric in ("top-1", "mIoU")

    def met(self, s: Score, float_accuracy: float | None) -> bool:
        if s.error is not None:
            return False
        if self.max_accuracy_drop is not None:
            return (s.accuracy is not None and float_accuracy is not None
                    and float_accuracy - s.accuracy <= self.max_accuracy_drop + 1e-9)
        ok = True
        if self.min_sqnr_db is not None:
            ok &= s.sqnr_db >= self.min_sqnr_db
        if self.min_cosine is not None:
            ok &= s.cosine >= self.min_cosine
        return ok

    def objective(self, s: Score) -> tuple[float, float]:
        """Higher is better; ties on the budgeted metric are broken by SQNR (continuous, less noisy)."""
        sq = s.sqnr_db if math.isfinite(s.sqnr_db) else (1e9 if s.sqnr_db > 0 else -1e9)
        if s.error is not None:
            return (-math.inf, -math.inf)
        if self.max_accuracy_drop is not None:
            return (s.accuracy if s.accuracy is not None else -math.inf, sq)
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
            if self.in_points:
                return f"{self.metric} drop <= {100 * self.max_accuracy_drop:.2f} points"
            return f"{self.metric} drop <= {self.max_accuracy_drop:g}"
        parts = ([f"SQNR >= {self.min_sqnr_db} dB"] if self.min_sqnr_db is not None else []) + \
                ([f"cosine >= {self.min_cosine}"] if self.min_cosine is not None else [])
        return " and ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Scorer:
    """Runs candidate artifacts on fixed samples (artifact layout) against precomputed float outputs; the task score
    comes from the same TaskJudge as the accuracy gate."""

    def __init__(self, inputs: dict[str, np.ndarray], reference: list[np.ndarray], judge: TaskJudge,
                 opts: RuntimeOptions) -> None:
        self.inputs, self.reference, self.judge, self.opts = inputs, reference, judge, opts
        self.output_order = list(judge.names)
        self.runs = 0
        self.cache: Any = None  # a ScoreCache (edgemp.mixed.cache) when the session can key its data
        self.class_axes = [t.class_axis for t in judge.tasks]
        self.float_accuracy = judge(reference)

    @property
    def labelled(self) -> bool:
        return self.judge.kind is not None

    def __call__(self, artifact: bytes) -> Score:
        if isinstance(artifact, FailedCandidate):
            return Score.infeasible(artifact.error)
        self.runs += 1
        digest = hashlib.sha256(artifact).hexdigest() if self.cache is not None else ""
        known = self.cache.get(digest) if self.cache is not None else None
        if known is not None:
            return Score(**known)
        score = self.run(artifact)
        if self.cache is not None:
            self.cache.put(digest, score.to_dict())
            self.cache.flush()
        return score

    def portable(self) -> Scorer:
        """A copy to ship to another process: the scoring data, without the disk cache."""
        twin = copy.copy(self)
        twin.cache = None
        return twin

    def subset(self, n: int) -> Scorer:
        """The same judge on the first n samples: cheap ranking of many candidates (a user metric is opaque
        Python code over all the data: no subset then, the caller gets None)."""
        judge = copy.copy(self.judge)
        if judge.kind == "metric":
            raise ValueError("a user metric cannot be scored on a subset")
        if judge.labels is not None:
            judge.labels = judge.labels[:n]
        twin = Scorer({k: v[:n] for k, v in self.inputs.items()}, [r[:n] for r in self.reference], judge, self.opts)
        return twin

    def run(self, artifact: bytes) -> Score:
        try:
            out = Runner(artifact, self.opts, self.output_order).run(self.inputs)
        except (EdgempError, RuntimeError, ValueError) as exc:  # e.g. "DEPTHWISE_CONV_2D failed to prepare"
            return Score.infeasible(f"LiteRT refused the candidate: {str(exc).strip().splitlines()[-1][:300]}")
        ms = [compare(np.asarray(r, np.float32).reshape(o.shape), o, axis)
              for r, o, axis in zip(self.reference, out, self.class_axes, strict=True)]
        return Score(
            accuracy=self.judge(out),
            sqnr_db=min(m["sqnr_db"] for m in ms),
            cosine=min(m["cosine"] if math.isfinite(m["cosine"]) else -1.0 for m in ms),
            top1_agreement=next((m["top1_agreement"] for m in ms if m["top1_agreement"] is not None), None),
        )
