"""The task score that judges an artifact: the user's metric, else top-1 (class ids) or mIoU (label maps) of the
labelled output. One object serves the accuracy gate and the mixed-precision search, so both judge alike."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from edgemp.config import GateOptions
from edgemp.errors import DataError
from edgemp.validation.metrics import dense_scores, topk
from edgemp.validation.tasks import OutputTask, check_labels, labelled_output


class TaskJudge:
    """`judge(outputs) -> float | None` (higher is better); `kind` is None when nothing can be scored (no labels,
    no metric): the fidelity gate judges every output then."""

    def __init__(self, tasks: Sequence[OutputTask], labels: Any, gate: GateOptions,
                 class_names: Sequence[str] | None = None) -> None:
        self.tasks = list(tasks)
        self.names = [t.name for t in tasks]
        self.labels = labels
        self.metric = gate.metric
        self.ignore: int | None = None
        self.task: OutputTask | None = None
        if gate.metric is not None:
            self.kind: str | None = "metric"
            self.name = getattr(gate.metric, "__name__", "metric")
            self.judged = set(self.names)
        elif labels is not None:
            self.task = labelled_output(tasks, labels, gate.label_output)
            self.ignore = check_labels(labels, self.task, class_names)
            self.kind = "segmentation" if self.task.dense else "classification"
            self.name = "mIoU" if self.task.dense else "top-1"
            self.judged = {self.task.name}
        else:
            self.kind, self.name, self.judged = None, "", set()

    def __call__(self, outputs: Sequence[np.ndarray]) -> float | None:
        if self.kind is None:
            return None
        if self.kind == "metric":
            assert self.metric is not None
            return call_metric(self.metric, dict(zip(self.names, outputs, strict=True)), self.labels)
        assert self.task is not None and self.task.class_axis is not None
        out = outputs[self.names.index(self.task.name)]
        if self.kind == "segmentation":
            return dense_scores(out, self.labels, self.task.class_axis, self.ignore)["miou"]
        return topk(out.reshape(len(out), -1), self.labels, 1)

    def details(self, out: Sequence[np.ndarray], ref: Sequence[np.ndarray] | None, budget: float | None) -> dict[str, Any]:
        """The report's validation.accuracy section."""
        if self.kind == "metric":
            acc: dict[str, Any] = {"task": "metric", "metric": self.name, "artifact": self(out)}
            if ref is not None:
                acc["float"] = self(ref)
                acc["drop"] = acc["float"] - acc["artifact"]
        elif self.kind == "segmentation":
            assert self.task is not None and self.task.class_axis is not None
            i = self.names.index(self.task.name)
            s = dense_scores(out[i], self.labels, self.task.class_axis, self.ignore)
            acc = {"task": "segmentation", "output": self.task.name, "num_classes": self.task.num_classes,
                   "ignore_index": self.ignore, "miou": s["miou"], "pixel_accuracy": s["pixel_accuracy"]}
            if ref is not None:
                f = dense_scores(ref[i], self.labels, self.task.class_axis, self.ignore)
                acc |= {"float_miou": f["miou"], "float_pixel_accuracy": f["pixel_accuracy"],
                        "drop": f["miou"] - s["miou"]}
        else:
            assert self.task is not None
            i = self.names.index(self.task.name)
            logits = out[i].reshape(len(out[i]), -1)
            acc = {"task": "classification", "output": self.task.name, "num_classes": self.task.num_classes,
                   "top1": topk(logits, self.labels, 1)}
            if ref is not None:
                acc["float_top1"] = topk(ref[i].reshape(len(ref[i]), -1), self.labels, 1)
                acc["drop"] = acc["float_top1"] - acc["top1"]
            if logits.shape[1] > 5:
                acc["top5"] = topk(logits, self.labels, 5)
                if ref is not None:
                    acc["float_top5"] = topk(ref[i].reshape(len(ref[i]), -1), self.labels, 5)
        acc["max_accuracy_drop"] = budget
        return acc


def call_metric(metric: Callable[..., Any], outputs: dict[str, np.ndarray], labels: Any) -> float:
    """Run the user's metric; anything but a finite number is a DataError that names the metric."""
    name = getattr(metric, "__name__", "metric")
    try:
        value = metric(outputs, labels)
    except Exception as exc:
        raise DataError(f"metric {name!r} raised {type(exc).__name__}: {exc}. It is called as metric(outputs, labels) "
                        f"with outputs a dict of arrays {sorted(outputs)} and the validation labels.") from exc
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise DataError(f"metric {name!r} returned {value!r}; it must return one number (higher is better).") from None
    if not math.isfinite(v):
        raise DataError(f"metric {name!r} returned {v}; it must return a finite number (higher is better).")
    return v


def accuracy_detail(acc: dict[str, Any], budget: float) -> str:
    if acc["task"] == "metric":
        return f"{acc['metric']} {acc['float']:.4f} -> {acc['artifact']:.4f} (drop {acc['drop']:.4g}, budget {budget:g})"
    if acc["task"] == "segmentation":
        return (f"mIoU of {acc['output']} {acc['float_miou']:.4f} -> {acc['miou']:.4f} (drop {100 * acc['drop']:.2f} "
                f"points, budget {100 * budget:.2f})")
    return (f"top-1 {acc['float_top1']:.4f} -> {acc['top1']:.4f} (drop {100 * acc['drop']:.2f} points, "
            f"budget {100 * budget:.2f})")
