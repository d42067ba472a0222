"""Error metrics between a float reference and an artifact's outputs, and the collapse checks."""

from __future__ import annotations

from typing import Any

import numpy as np


def compare(ref: np.ndarray, out: np.ndarray) -> dict[str, Any]:
    ref = np.asarray(ref, np.float64).reshape(len(ref), -1)
    out = np.asarray(out, np.float64).reshape(len(out), -1)
    err = out - ref
    finite = bool(np.isfinite(out).all())
    noise = float(np.sum(err**2))
    signal = float(np.sum(ref**2))
    dot = np.sum(ref * out, axis=1)
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(out, axis=1)
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
    if ref.shape[1] > 1:
        m["top1_agreement"] = float(np.mean(np.argmax(ref, 1) == np.argmax(out, 1))) if finite else 0.0
    return m


def topk(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    logits = np.asarray(logits).reshape(len(logits), -1)
    top = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    return float(np.mean(np.any(top == np.asarray(labels).reshape(-1, 1), axis=1)))


def collapse_reasons(ref: np.ndarray, out: np.ndarray, metrics: dict[str, Any]) -> list[str]:
    """Why an output counts as collapsed: non-finite, constant while the reference varies, or chance-level top-1."""
    reasons = []
    if not metrics["finite"]:
        reasons.append("NaN/Inf in the outputs")
        return reasons
    r = np.asarray(ref, np.float64).reshape(len(ref), -1)
    o = np.asarray(out, np.float64).reshape(len(out), -1)
    if len(r) > 1:
        ref_spread, out_spread = float(r.std(axis=0).max()), float(o.std(axis=0).max())
        if ref_spread > 0 and out_spread <= 1e-6 * ref_spread:
            reasons.append(f"constant output (spread {out_spread:.3g} vs reference {ref_spread:.3g})")
    classes = r.shape[1]
    agree = metrics.get("top1_agreement")
    if agree is not None and classes > 1 and len(r) >= 2 * classes and agree <= 2.0 / classes:
        reasons.append(f"top-1 agreement {agree:.3f} is near chance (1/{classes})")
    return reasons
