"""Error metrics between a float reference and an artifact's outputs, task scores, and the collapse checks.

Agreement is measured along the output's class axis, position by position: one argmax per sample for a
classifier's (N, C) logits, one per pixel for a segmentation map (N, H, W, C), one per anchor for a detector's
(N, A, K) scores. Flattening a dense output and taking one argmax over H·W·C values says nothing about it.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def compare(ref: np.ndarray, out: np.ndarray, class_axis: int | None = -1) -> dict[str, Any]:
    """Error metrics of `out` against `ref` (both (N, ...)); top-1 agreement along `class_axis` (an axis of the
    batched array) when it is given and holds more than one class."""
    ref = np.asarray(ref, np.float64)
    out = np.asarray(out, np.float64)
    rf, of = ref.reshape(len(ref), -1), out.reshape(len(out), -1)
    err = of - rf
    finite = bool(np.isfinite(of).all())
    noise = float(np.sum(err**2))
    signal = float(np.sum(rf**2))
    dot = np.sum(rf * of, axis=1)
    norms = np.linalg.norm(rf, axis=1) * np.linalg.norm(of, axis=1)
    cos = np.where(norms > 0, dot / np.where(norms > 0, norms, 1), np.where(np.linalg.norm(err, axis=1) == 0, 1.0, 0.0))
    m: dict[str, Any] = {
        "max_abs_error": float(np.max(np.abs(err))) if finite else float("inf"),
        "mean_abs_error": float(np.mean(np.abs(err))) if finite else float("inf"),
        "rmse": float(np.sqrt(np.mean(err**2))) if finite else float("inf"),
        "cosine": float(np.mean(cos)) if finite else float("nan"),
        "min_cosine": float(np.min(cos)) if finite else float("nan"),
        "sqnr_db": (float(10 * np.log10(signal / noise)) if noise > 0 else float("inf")) if finite else float("-inf"),
        "top1_agreement": None,
        "finite": finite,
    }
    if class_axis is not None and ref.ndim >= 2 and ref.shape[class_axis] > 1:
        m["top1_agreement"] = agreement(ref, out, class_axis) if finite else 0.0
    return m


def agreement(ref: np.ndarray, out: np.ndarray, class_axis: int) -> float:
    """Fraction of positions (samples, pixels, anchors) where both argmaxes along the class axis agree."""
    return float(np.mean(np.argmax(ref, axis=class_axis) == np.argmax(out, axis=class_axis)))


def topk(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    logits = np.asarray(logits).reshape(len(logits), -1)
    top = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    return float(np.mean(np.any(top == np.asarray(labels).reshape(-1, 1), axis=1)))


def dense_scores(scores: np.ndarray, labels: np.ndarray, class_axis: int, ignore_index: int | None = None
                 ) -> dict[str, float]:
    """Pixel accuracy and mean IoU of a dense prediction (argmax along the class axis) against label maps.

    mIoU averages over the classes that occur in the labels or the prediction (a class absent from both has no
    IoU); pixels labelled `ignore_index` count in neither."""
    pred = np.argmax(scores, axis=class_axis)
    labels = np.asarray(labels).reshape(pred.shape)
    keep = labels != ignore_index if ignore_index is not None else np.ones(labels.shape, bool)
    p, t = pred[keep].astype(np.int64), labels[keep].astype(np.int64)
    classes = int(np.shape(scores)[class_axis])
    conf = np.bincount(t * classes + p, minlength=classes * classes).reshape(classes, classes)
    inter = np.diag(conf).astype(np.float64)
    union = conf.sum(0) + conf.sum(1) - inter
    present = union > 0
    return {"pixel_accuracy": float(inter.sum() / max(conf.sum(), 1)),
            "miou": float(np.mean(inter[present] / union[present])) if present.any() else 0.0}


def collapse_reasons(ref: np.ndarray, out: np.ndarray, metrics: dict[str, Any], class_axis: int | None = -1) -> list[str]:
    """Why an output counts as collapsed: non-finite; dead (the artifact gives one value, or each element the
    same value for every sample, while the reference varies); or top-1 agreement near chance."""
    if not metrics["finite"]:
        return ["NaN/Inf in the outputs"]
    reasons = []
    r = np.asarray(ref, np.float64)
    o = np.asarray(out, np.float64)
    rf, of = r.reshape(len(r), -1), o.reshape(len(o), -1)
    ref_range = float(rf.max() - rf.min()) if rf.size else 0.0
    if ref_range > 0 and float(of.max() - of.min()) <= 1e-6 * ref_range:
        reasons.append(f"dead output: every value is {float(of.flat[0]):.6g} while the reference spans "
                       f"[{float(rf.min()):.4g}, {float(rf.max()):.4g}]")
    elif len(r) > 1:
        ref_spread, out_spread = float(rf.std(axis=0).max()), float(of.std(axis=0).max())
        if ref_spread > 0 and out_spread <= 1e-6 * ref_spread:
            reasons.append(f"constant output: the same values for every sample (spread {out_spread:.3g} vs "
                           f"reference {ref_spread:.3g})")
    agree = metrics.get("top1_agreement")
    if agree is not None and class_axis is not None:
        classes = int(r.shape[class_axis])
        positions = r.size // classes
        if classes > 1 and positions >= 2 * classes and agree <= 2.0 / classes:
            reasons.append(f"top-1 agreement {agree:.3f} is near chance (1/{classes})")
    return reasons
