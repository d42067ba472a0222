"""Which metric judges which output.

An output is either *classification* (scores or logits along a class axis: judged by the agreement of the
argmax with the float model, position by position, and by top-1 / mIoU against labels) or *regression*
(values such as boxes, depth or embeddings: judged by error and fidelity only). The task is inferred from the
output's name and shape, recorded in the report with the reason, and can be set with `output_tasks=`.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from edgemp.errors import DataError, InputError


class Task(str, enum.Enum):
    CLASSIFICATION = "classification"
    REGRESSION = "regression"


_REGRESSION_NAME = re.compile(r"box|bbox|loc(?!al)|regress|coord|offset|delta|depth|disp|landmark|keypoint|kpt|"
                              r"embed|feature|hidden|pose|flow", re.I)
_CLASSIFICATION_NAME = re.compile(r"logit|score|prob|class|cls|conf|seg|mask|label|heatmap", re.I)


@dataclasses.dataclass(frozen=True)
class OutputTask:
    name: str
    shape: tuple[int, ...]  # batched shape of the output as the artifact gives it
    task: Task
    class_axis: int | None  # axis of the batched array holding the classes (classification only)
    reason: str

    @property
    def num_classes(self) -> int | None:
        return int(self.shape[self.class_axis]) if self.class_axis is not None else None

    @property
    def position_shape(self) -> tuple[int, ...]:
        """Per-sample shape of one argmax map: () for a classifier, (H, W) for a segmentation map."""
        if self.class_axis is None:
            return tuple(self.shape[1:])
        axis = self.class_axis % len(self.shape)
        return tuple(d for i, d in enumerate(self.shape) if i not in (0, axis))

    @property
    def dense(self) -> bool:
        return self.task is Task.CLASSIFICATION and bool(self.position_shape)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "task": self.task.value, "class_axis": self.class_axis,
                "num_classes": self.num_classes, "reason": self.reason}


def infer_tasks(names: Sequence[str], shapes: Sequence[tuple[int, ...]], channels_first: Sequence[bool] = (),
                given: Mapping[str, str | Task] | None = None) -> list[OutputTask]:
    """One OutputTask per output. `channels_first[i]`: output i is NCHW (its class axis is 1, not -1)."""
    given = dict(given or {})
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise InputError(f"output_tasks names {unknown}, but the model's outputs are {list(names)}.")
    tasks = []
    for i, (name, shape) in enumerate(zip(names, shapes, strict=True)):
        shape = tuple(int(d) for d in shape)
        axis = 1 if (i < len(channels_first) and channels_first[i] and len(shape) >= 3) else -1
        if name in given:
            task = _parse(given[name])
            reason = "given (output_tasks)"
        else:
            task, reason = _infer(name, shape, axis)
        classes = shape[axis] if len(shape) >= 2 else 1
        if task is Task.CLASSIFICATION and classes < 2:
            if name in given:
                raise InputError(f"output {name!r} is given as classification but has {classes} class along axis "
                                 f"{axis} (shape {shape}); classification needs at least 2 scores per position.")
            task, reason = Task.REGRESSION, f"one value per position (shape {list(shape)})"
        tasks.append(OutputTask(name, shape, task, axis if task is Task.CLASSIFICATION else None, reason))
    return tasks


def _parse(value: str | Task) -> Task:
    try:
        return Task(value) if not isinstance(value, Task) else value
    except ValueError:
        raise InputError(f"unknown output task {value!r}; valid: 'classification', 'regression'.") from None


def _infer(name: str, shape: tuple[int, ...], axis: int) -> tuple[Task, str]:
    if _REGRESSION_NAME.search(name):
        return Task.REGRESSION, f"name {name!r}"
    if _CLASSIFICATION_NAME.search(name):
        return Task.CLASSIFICATION, f"name {name!r}"
    per_sample = shape[1:]
    if len(per_sample) == 2 and per_sample[-1] in (2, 4):
        return Task.REGRESSION, f"shape {list(shape)}: {per_sample[-1]} values per position look like coordinates"
    return Task.CLASSIFICATION, f"shape {list(shape)}: scores along axis {axis}"


def labelled_output(tasks: Sequence[OutputTask], labels: np.ndarray, label_output: str | None = None) -> OutputTask:
    """The output the labels judge: the one named, else the first classification output whose argmax map has the
    labels' per-sample shape (() for class ids, (H, W) for label maps)."""
    want = tuple(labels.shape[1:])
    if label_output is not None:
        match = [t for t in tasks if t.name == label_output]
        if not match:
            raise InputError(f"label_output {label_output!r} is not an output of the model: {[t.name for t in tasks]}.")
        t = match[0]
        if t.task is not Task.CLASSIFICATION or t.position_shape != want:
            raise DataError(f"labels of per-sample shape {list(want)} cannot judge output {t.name!r} ({t.task.value}, "
                            f"shape {list(t.shape)}).")
        return t
    for t in tasks:
        if t.task is Task.CLASSIFICATION and t.position_shape == want:
            return t
    described = ", ".join(f"{t.name} {list(t.shape)} ({t.task.value})" for t in tasks)
    raise DataError(f"labels of per-sample shape {list(want)} match no classification output ({described}). Class ids "
                    "need an (N, C) output, label maps (N, H, W) an (N, H, W, C) one; name the output with "
                    "label_output= or set output_tasks=, or judge the model with metric=.")


def check_labels(labels: np.ndarray, task: OutputTask, class_names: Sequence[str] | None = None) -> int | None:
    """Refuse labels no output class can match (silently 0% accuracy otherwise). Returns the ignore index of
    label maps (255, the usual 'void' label, when the model has fewer classes), else None."""
    classes = task.num_classes or 0
    if labels.size and labels.dtype.kind == "f" and not np.all(np.equal(np.mod(labels, 1), 0)):
        raise DataError("labels must be integer class ids; got non-integer values.")
    ignore = 255 if task.dense and classes < 255 else None
    valid = labels[labels != ignore] if ignore is not None else labels
    if valid.size and (valid.min() < 0 or valid.max() >= classes):
        bad = sorted({int(v) for v in np.unique(valid) if v < 0 or v >= classes})[:8]
        raise DataError(f"labels {bad} are outside the {classes} classes of output {task.name!r} (valid: 0..{classes - 1}"
                        + (", 255 = ignore" if ignore is not None else "") + "). Check the label encoding, or the "
                        "class_names order.")
    if class_names is not None and len(class_names) != classes:
        raise DataError(f"{len(class_names)} class names given but output {task.name!r} has {classes} classes; give one "
                        "name per class in output order.")
    return ignore
