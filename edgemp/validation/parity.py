"""Cross-format parity: per output, the source model vs the TFLite artifact vs the Core ML artifact.

The Core ML column is the real model on macOS; elsewhere Core ML cannot run, so it is the source model run in
float16 (weights and compute: what Core ML fp16 computes), labelled "emulated" — weight compression
(int8/palettized) and Core ML's own kernels are not emulated.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Any

import numpy as np

from edgemp.validation.metrics import compare

Predict = Callable[[dict[str, np.ndarray]], list[np.ndarray]]


def parity(reference: list[np.ndarray], tflite: list[np.ndarray] | None, coreml: list[np.ndarray] | None, *,
           coreml_kind: str, output_names: list[str], note: str, coreml_nchw: Collection[int] = (),
           class_axes: Sequence[int | None] = ()) -> dict[str, Any]:
    """`coreml_kind`: "real" (macOS predictions), "emulated-fp16" or "emulated-fp32". `coreml_nchw`: outputs the
    Core ML column gives in NCHW while the reference and the TFLite artifact give them channel-last (PyTorch
    sources with an NHWC artifact: Core ML keeps PyTorch's layout). `class_axes[i]`: the class axis of output i
    as the artifact gives it (agreement is counted along it: per sample, per pixel), None for regression."""
    rows = []
    for i, name in enumerate(output_names):
        axis = class_axes[i] if i < len(class_axes) else -1
        r = _batch(reference[i])
        t = _batch(tflite[i]) if tflite is not None else None
        pairs = {"tflite_vs_source": pair(r, t.reshape(r.shape) if t.size == r.size else t, axis)} if t is not None else {}
        if coreml is not None:
            c = _batch(coreml[i], channels_last=i in coreml_nchw)
            c = c.reshape(r.shape) if c.size == r.size else c
            pairs["coreml_vs_source"] = pair(r, c, axis)
            if t is not None:
                pairs["tflite_vs_coreml"] = pair(c, t.reshape(c.shape) if t.size == c.size else t, axis)
        rows.append({"output": name, **pairs})
    worst = max(((row["output"], k, v) for row in rows for k, v in row.items() if k != "output"),
                key=lambda x: x[2]["max_abs_error"], default=None)
    return {"coreml_column": coreml_kind, "note": note, "samples": int(len(reference[0])), "outputs": rows,
            "largest_disagreement": {"output": worst[0], "pair": worst[1], **worst[2]} if worst else None}


def pair(a: np.ndarray, b: np.ndarray, class_axis: int | None = -1) -> dict[str, Any]:
    m = compare(a, b, class_axis if a.shape == b.shape else None)
    return {k: m[k] for k in ("max_abs_error", "mean_abs_error", "cosine", "sqnr_db", "top1_agreement")}


def _batch(x: np.ndarray, channels_last: bool = False) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return np.moveaxis(x, 1, -1) if channels_last and x.ndim == 4 else x


def flat(x: np.ndarray, channels_last: bool = False) -> np.ndarray:
    """(n, ...) -> (n, k) for element-wise comparison; `channels_last` first moves an NCHW batch to NHWC. Said
    explicitly, not guessed from shapes: an (n, 8, 8, 8) output looks the same in both layouts."""
    x = np.asarray(x, np.float32)
    if channels_last and x.ndim == 4:
        x = np.moveaxis(x, 1, -1)
    return x.reshape(len(x), -1)


def to_markdown(p: dict[str, Any]) -> list[str]:
    label = "Core ML" if p["coreml_column"] == "real" else "Core ML (**emulated**: source in float16)"
    lines = ["", "## Parity: source vs TFLite vs Core ML", "", f"{p['samples']} samples; Core ML column: {label}. {p['note']}",
             "", "| output | pair | max abs err | mean abs err | cosine | SQNR dB | top-1 agreement |",
             "|---|---|---|---|---|---|---|"]
    worst = p["largest_disagreement"] or {}
    for row in p["outputs"]:
        for k, v in row.items():
            if k == "output":
                continue
            mark = " **(largest)**" if worst.get("output") == row["output"] and worst.get("pair") == k else ""
            lines.append(f"| {row['output']} | {k.replace('_', ' ')}{mark} | {v['max_abs_error']:.5g} | "
                         f"{v['mean_abs_error']:.5g} | {v['cosine']:.6f} | {v['sqnr_db']:.2f} | "
                         f"{'' if v['top1_agreement'] is None else format(v['top1_agreement'], '.4f')} |")
    return lines
