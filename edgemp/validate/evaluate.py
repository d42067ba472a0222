"""Host validation of one artifact against its float reference: per-output error, accuracy, collapse, latency."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from edgemp._progress import track
from edgemp.config import RuntimeOptions
from edgemp.validate.checks import Check
from edgemp.validate.data import ValidationData
from edgemp.validate.metrics import collapse_reasons, compare, topk
from edgemp.validate.runtime import Runner

Predict = Callable[[dict[str, np.ndarray]], list[np.ndarray]]


def batched(predict: Predict, inputs: dict[str, np.ndarray], batch: int = 64, progress: bool | None = None,
            label: str = "Running") -> list[np.ndarray]:
    n = len(next(iter(inputs.values())))
    chunks = [predict({k: v[i : i + batch] for k, v in inputs.items()})
              for i in track(range(0, n, batch), label, total=(n + batch - 1) // batch, enabled=progress)]
    return [np.concatenate([c[j] for c in chunks]) for j in range(len(chunks[0]))]


def evaluate(artifact: bytes, reference: Predict | None, data: ValidationData, opts: RuntimeOptions, *,
             max_accuracy_drop: float | None = 0.01, reference_outputs: list[np.ndarray] | None = None,
             fp32_artifact: bytes | None = None, progress: bool | None = None,
             data_note: str | None = None,
             adapt: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] | None = None,
             ) -> tuple[dict[str, Any], list[Check]]:
    """Return the report's "validation" section and the quality checks (collapse, accuracy gate).

    `data` is in the reference's layout; `adapt` lays a batch out for the artifact (e.g. NCHW -> NHWC).
    """
    t0 = time.perf_counter()
    adapt = adapt or (lambda batch: batch)
    runner = Runner(artifact, opts)
    out = batched(lambda b: runner.run(adapt(b)), data.inputs, progress=progress, label="Validating artifact")
    ref = reference_outputs
    if ref is None and reference is not None:
        ref = batched(reference, data.inputs, progress=progress, label="Running float reference")
    checks: list[Check] = []
    section: dict[str, Any] = {"data": data.summary() | ({"note": data_note} if data_note else {}),
                               "runtime": {"interpreter": "ai_edge_litert", "threads": opts.num_threads,
                                           "xnnpack": opts.xnnpack, "delegates": runner.delegate_report()},
                               "outputs": [], "accuracy": None}
    if ref is not None:
        if len(ref) != len(out):
            raise ValueError(f"the reference gives {len(ref)} outputs but the artifact {len(out)}")
        for detail, r, o in zip(runner.outputs, ref, out, strict=True):
            r = np.asarray(r, np.float32).reshape(o.shape) if np.size(r) == np.size(o) else np.asarray(r, np.float32)
            m = compare(r, o)
            reasons = collapse_reasons(r, o, m)
            section["outputs"].append({"name": detail.name, "shape": list(o.shape[1:])} | m)
            checks.append(Check(f"not_collapsed[{detail.name}]", not reasons,
                                "; ".join(reasons) if reasons else "outputs vary, are finite and agree above chance"))
    else:
        for detail, o in zip(runner.outputs, out, strict=True):
            finite = bool(np.isfinite(o).all())
            checks.append(Check(f"not_collapsed[{detail.name}]", finite, "finite" if finite else "NaN/Inf in the outputs"))
    if data.labels is not None:
        logits = out[0].reshape(len(out[0]), -1)
        acc: dict[str, Any] = {"top1": topk(logits, data.labels, 1), "num_classes": int(logits.shape[1])}
        if ref is not None:
            ref_logits = np.asarray(ref[0]).reshape(len(ref[0]), -1)
            acc["float_top1"] = topk(ref_logits, data.labels, 1)
            acc["drop"] = acc["float_top1"] - acc["top1"]
        if logits.shape[1] > 5:
            acc["top5"] = topk(logits, data.labels, 5)
            if ref is not None:
                acc["float_top5"] = topk(np.asarray(ref[0]).reshape(len(ref[0]), -1), data.labels, 5)
        acc["max_accuracy_drop"] = max_accuracy_drop
        section["accuracy"] = acc
        if max_accuracy_drop is not None and "drop" in acc:
            ok = acc["drop"] <= max_accuracy_drop + 1e-9
            checks.append(Check("accuracy_drop", ok, f"top-1 {acc['float_top1']:.4f} -> {acc['top1']:.4f} "
                                f"(drop {100 * acc['drop']:.2f} points, budget {100 * max_accuracy_drop:.2f})"))
    section["wall_time_s"] = time.perf_counter() - t0
    sample = adapt({k: v[:1] for k, v in data.inputs.items()})
    lat = runner.latency(sample)
    if fp32_artifact is not None and fp32_artifact != artifact:
        base = Runner(fp32_artifact, RuntimeOptions(num_threads=opts.num_threads, xnnpack=opts.xnnpack,
                                                    latency_runs=opts.latency_runs, warmup_runs=opts.warmup_runs))
        lat["fp32_median_ms"] = base.latency(sample)["median_ms"]
        lat["ratio_to_fp32"] = lat["median_ms"] / lat["fp32_median_ms"] if lat["fp32_median_ms"] else None
    section["latency"] = lat
    return section, checks
