"""Host validation of one artifact against its float reference: per-output error with the right metric for each
output, task accuracy or a user metric, the fidelity gate, collapse checks, latency."""

from __future__ import annotations

import math
import queue
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any

import numpy as np

from edgemp._progress import track
from edgemp.config import GateOptions, Precision, RuntimeOptions
from edgemp.errors import DataError
from edgemp.validation.checks import Check
from edgemp.validation.data import ValidationData
from edgemp.validation.judge import TaskJudge, accuracy_detail
from edgemp.validation.metrics import collapse_reasons, compare
from edgemp.validation.runtime import Runner
from edgemp.validation.tasks import infer_tasks

Predict = Callable[[dict[str, np.ndarray]], list[np.ndarray]]
BATCH = 64  # samples per invoke
SHARED_LIMIT = 256 << 20  # bytes: a larger artifact is validated on one interpreter (each packs its own weights)


def batched(predict: Predict, inputs: dict[str, np.ndarray], batch: int = BATCH, progress: bool | None = None,
            label: str = "Running") -> list[np.ndarray]:
    n = len(next(iter(inputs.values())))
    chunks = [predict({k: v[i : i + batch] for k, v in inputs.items()})
              for i in track(range(0, n, batch), label, total=(n + batch - 1) // batch, enabled=progress)]
    return [np.concatenate([c[j] for c in chunks]) for j in range(len(chunks[0]))]


def evaluate(artifact: bytes, reference: Predict | None, data: ValidationData, opts: RuntimeOptions,
             gate: GateOptions | None = None, *, precision: Precision | None = None,
             reference_outputs: list[np.ndarray] | None = None, fp32_artifact: bytes | None = None,
             progress: bool | None = None, data_note: str | None = None,
             adapt: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] | None = None,
             channels_first: Sequence[bool] = (), class_names: Sequence[str] | None = None,
             output_names: Sequence[str] | None = None,
             make_runner: Callable[[bytes, RuntimeOptions], Any] | None = None,
             interpreters: int = 1) -> tuple[dict[str, Any], list[Check]]:
    """Return the report's "validation" section and the quality checks (collapse, accuracy or metric, fidelity).

    `data` is in the reference's layout; `adapt` lays a batch out for the artifact (e.g. NCHW -> NHWC).
    `channels_first[i]`: output i is NCHW (its class axis is 1). `class_names`: given by the user (checked
    against the class count of the labelled output). `output_names`: the reference's output names in its order.
    `make_runner(artifact, opts)`: what runs the artifact (default: LiteRT's `Runner`; the ONNX target passes
    onnxruntime's). `interpreters`: how many run the validation batches side by side (run_batches).
    """
    gate = gate or GateOptions()
    t0 = time.perf_counter()
    adapt = adapt or (lambda batch: batch)
    order = list(output_names) if output_names is not None else None
    make_runner = make_runner or (lambda model, o: Runner(model, o, order))
    runner = make_runner(artifact, opts)
    n = interpreters if not opts.delegates and len(artifact) <= SHARED_LIMIT else 1  # a device delegate: one
    out = run_batches(runner, lambda: make_runner(artifact, opts), data.inputs, adapt, n, progress)
    ref = reference_outputs
    if ref is None and reference is not None:
        ref = batched(reference, data.inputs, progress=progress, label="Running float reference")
    names = [d.name for d in runner.outputs]
    if ref is not None and len(ref) != len(out):
        raise DataError(f"the reference gives {len(ref)} outputs but the artifact {len(out)} ({names}); validate the "
                        "artifact against the model it was converted from.")
    if ref is not None:
        ref = [np.asarray(r, np.float32).reshape(o.shape) if np.size(r) == np.size(o) else np.asarray(r, np.float32)
               for r, o in zip(ref, out, strict=True)]
    tasks = infer_tasks(names, [o.shape for o in out], channels_first, gate.output_tasks)
    checks: list[Check] = []
    section: dict[str, Any] = {"data": data.summary() | ({"note": data_note} if data_note else {}),
                               "runtime": runner.runtime_info() if hasattr(runner, "runtime_info") else
                               {"interpreter": "ai_edge_litert", "threads": opts.num_threads, "xnnpack": opts.xnnpack,
                                "delegates": runner.delegate_report()},
                               "outputs": [], "accuracy": None, "fidelity_gate": None}
    metrics: dict[str, dict[str, Any]] = {}
    for t, o, r in zip(tasks, out, ref or [None] * len(out), strict=True):
        row: dict[str, Any] = {"name": t.name, "shape": list(o.shape[1:]), "task": t.task.value,
                               "class_axis": t.class_axis, "num_classes": t.num_classes, "task_reason": t.reason}
        if r is not None:
            m = compare(r, o, t.class_axis)
            metrics[t.name] = m
            row |= m
            reasons = collapse_reasons(r, o, m, t.class_axis)
            detail = "; ".join(reasons) if reasons else "outputs vary, are finite and agree above chance"
        else:
            reasons = [] if np.isfinite(o).all() else ["NaN/Inf in the outputs"]
            detail = reasons[0] if reasons else "finite"
        section["outputs"].append(row)
        checks.append(Check(f"not_collapsed[{t.name}]", not reasons, detail))
    section["warnings"] = [w for d, r in zip(runner.outputs, ref or [], strict=False) if (w := range_warning(d, r))]
    judge = TaskJudge(tasks, data.labels, gate, class_names)
    if judge.kind is not None:
        acc = judge.details(out, ref, gate.max_accuracy_drop)
        section["accuracy"] = acc
        if gate.max_accuracy_drop is not None and acc.get("drop") is not None:
            ok = acc["drop"] <= gate.max_accuracy_drop + 1e-9
            checks.append(Check("accuracy_drop", ok, accuracy_detail(acc, gate.max_accuracy_drop)))
    judged = judge.judged
    free = [t.name for t in tasks if t.name not in judged and t.name in metrics]
    if free:
        min_sqnr, min_cos, origin = gate.floor(precision)
        section["fidelity_gate"] = {"min_sqnr_db": min_sqnr, "min_cosine": min_cos, "origin": origin, "outputs": free}
        for name in free:
            m = metrics[name]
            ok = m["sqnr_db"] >= min_sqnr and (m["cosine"] >= min_cos if math.isfinite(m["cosine"]) else False)
            checks.append(Check(f"fidelity[{name}]", ok,
                                f"SQNR {m['sqnr_db']:.2f} dB (min {min_sqnr:g}), cosine {m['cosine']:.5f} "
                                f"(min {min_cos:g}), {origin}"
                                + ("" if ok else "; the artifact's outputs are far from the float model's: give "
                                   "labelled validation data or a metric= to judge the task, try precision 'mixed', "
                                   "or pass lower min_sqnr_db/min_cosine if this fidelity is enough")))
    section["wall_time_s"] = time.perf_counter() - t0
    sample = adapt({k: v[:1] for k, v in data.inputs.items()})
    lat = runner.latency(sample)
    if fp32_artifact is not None and fp32_artifact != artifact and opts.latency_runs:
        base = make_runner(fp32_artifact, RuntimeOptions(num_threads=opts.num_threads, xnnpack=opts.xnnpack,
                                                         latency_runs=opts.latency_runs, warmup_runs=opts.warmup_runs))
        lat["fp32_median_ms"] = base.latency(sample)["median_ms"]
        lat["ratio_to_fp32"] = lat["median_ms"] / lat["fp32_median_ms"] if lat["fp32_median_ms"] else None
    section["latency"] = lat
    return section, checks


def run_batches(runner: Any, another: Callable[[], Any], inputs: dict[str, np.ndarray],
                adapt: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]], interpreters: int,
                progress: bool | None) -> list[np.ndarray]:
    """The artifact's outputs on every sample, in batches of BATCH. With `interpreters` > 1 the batches run side by
    side on that many runners of one configuration (`another()` makes the extra ones): invoke releases the GIL, and a
    batch's outputs depend neither on the interpreter that runs it nor on what ran before, so they are the outputs one
    runner gives, bit for bit (the final validation of an EfficientNet-sized model is seconds on one core)."""
    n = len(next(iter(inputs.values())))
    starts = range(0, n, BATCH)
    if interpreters < 2 or len(starts) < 2:
        return batched(lambda b: runner.run(adapt(b)), inputs, BATCH, progress, "Validating artifact")
    free: queue.SimpleQueue[Any] = queue.SimpleQueue()
    free.put(runner)  # the first batch takes it: the runner the caller keeps has run the data

    def one(start: int) -> list[np.ndarray]:
        try:
            r = free.get_nowait()
        except queue.Empty:  # at most one runner per thread: a thread puts its own back before it takes another
            r = another()
        try:
            return r.run(adapt({k: v[start : start + BATCH] for k, v in inputs.items()}))
        finally:
            free.put(r)

    with ThreadPoolExecutor(min(interpreters, len(starts)), thread_name_prefix="edgemp-validate") as pool:
        futures = [pool.submit(one, s) for s in starts]
        try:
            for _ in track(as_completed(futures), "Validating artifact", total=len(futures), enabled=progress):
                pass
            chunks = [f.result() for f in futures]  # in order; a batch's DataError surfaces here
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return [np.concatenate([c[j] for c in chunks]) for j in range(len(chunks[0]))]


def range_warning(detail: Any, ref: np.ndarray, min_levels: int = 16) -> str | None:
    """An int8 output holding channels of very different ranges (boxes in pixels beside probabilities, say): one
    scale for the whole tensor leaves the small channels a handful of levels. Found from the float outputs."""
    if not detail.quantized or ref.ndim < 2 or ref.shape[-1] < 2:
        return None
    flat = ref.reshape(-1, ref.shape[-1])
    spans = flat.max(0) - flat.min(0)
    levels = spans / detail.scale
    small = np.flatnonzero((levels < min_levels) & (spans > 0))
    if not len(small) or float(levels.max()) < 8 * min_levels:
        return None
    big = int(np.argmax(spans))
    return (f"output {detail.name!r} holds values of very different ranges in one int8 tensor: channel {big} spans "
            f"{spans[big]:.4g} but {len(small)} channel(s) ({_ranges(small)}) span at most {spans[small].max():.3g}, so "
            f"one scale ({detail.scale:.4g}) leaves them under {min_levels} levels. Split the output (e.g. a dict of "
            "boxes and scores), or keep it float: precision 'mixed' with io_dtype='float'.")


def _ranges(idx: np.ndarray) -> str:
    return f"{idx[0]}..{idx[-1]}" if len(idx) > 1 and idx[-1] - idx[0] == len(idx) - 1 else ", ".join(map(str, idx[:8]))
