"""How much two processes on this host's cores can do side by side: the ceiling of any 2-worker executor (threads or
Ray) for the analysis' candidates, measured without edgemp's executors in the way.

The same EfficientNetB0 candidates (4 "only this layer int8" and 4 "only this layer float", each quantized with
edgemp's recipe and scored on the 132 validation samples, `edgemp.mixed.executor.build_and_score`: what a worker runs)
are run in one process alone, then in two processes at once (each the whole set, started together), alternately for
--rounds rounds. The ceiling is 2 x alone / together: 2.0 when the two cores do not slow each other down. On a
shared VM, the second core's memory bandwidth and caches are shared, and the figure says how much.

    source scripts/env.sh && python benchmarks/parallel_ceiling.py [--rounds 2]
Writes benchmarks/results/parallel_ceiling.{json,md}.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import pickle
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import cpu_description, cpu_flags, work_dir, write_results  # noqa: E402


def prepare(work: Path) -> Path:
    """The float model ready for quantization, statistics from 32 calibration samples, 8 recipes and the scorer a
    Ray worker receives (validation inputs and the float reference), pickled for the scoring processes."""
    from benchmarks.analysis_scale import model
    from edgemp.config import RuntimeOptions
    from edgemp.mixed.executor import Executor
    from edgemp.mixed.session import MixedSession
    from edgemp.quantize import calibrate
    from edgemp.quantize.rewrites import prepare_for_quantization
    from edgemp.sources import load_source
    from edgemp.validation.data import ValidationData

    net, cal, val = model("efficientnetb0")
    source = load_source(net)
    qbase = prepare_for_quantization(source.to_float_tflite(1)).model
    name = source.input_specs()[0].name
    stats = calibrate(qbase, [{name: cal[i : i + 1]} for i in range(32)])
    os.environ["EDGEMP_ARTIFACT_CACHE"] = "0"
    session = MixedSession(source, qbase, stats, ValidationData({name: val}, None, None, "validation", []),
                           RuntimeOptions(latency_runs=0), executor=Executor(1))
    graph = session.graph
    everything = frozenset(lay.tensor for lay in graph.layers)
    picks = graph.ranked[40:44]
    recipes = [graph.recipe(everything - {lay.tensor}) for lay in picks] + [graph.recipe(frozenset({lay.tensor}))
                                                                             for lay in picks]
    path = work / "job.pkl"
    path.write_bytes(pickle.dumps({"qbase": qbase, "stats": stats, "scorer": session.scorer.portable(),
                                   "recipes": recipes}))
    return path


def score_all(job: str, start: Any, out: Any) -> None:
    """One process: get ready (the job unpickled, the libraries a worker warms up imported), wait until every
    process is, build and score every candidate, report the seconds."""
    from edgemp.mixed.executor import build_and_score, warm_up

    d = pickle.loads(Path(job).read_bytes())
    warm_up()
    start.wait()
    t0 = time.perf_counter()
    for r in d["recipes"]:
        build_and_score(r, d["qbase"], d["stats"], d["scorer"])
    out.put(time.perf_counter() - t0)


def run(job: Path, processes: int) -> list[float]:
    ctx = mp.get_context("spawn")
    start, out = ctx.Barrier(processes + 1), ctx.Queue()  # passed when every process is ready, and this one
    procs = [ctx.Process(target=score_all, args=(str(job), start, out)) for _ in range(processes)]
    for p in procs:
        p.start()
    start.wait()
    times = [out.get() for _ in procs]
    for p in procs:
        p.join()
    return times


def _earlier_runs(keep: int = 6) -> list[dict[str, Any]]:
    """The last runs' figures from the results file, newest first (this host's ceiling varies between runs)."""
    import json

    path = Path(__file__).resolve().parent / "results" / "parallel_ceiling.json"
    try:
        last = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    fields = ("date", "alone_median_s", "together_median_s", "ceiling")
    runs = [{k: last[k] for k in fields}] + list(last.get("earlier_runs", []))
    return runs[:keep]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    if args.rounds < 1:
        ap.error(f"--rounds must be 1 or more, got {args.rounds}")
    job = prepare(work_dir("edgemp-ceiling-"))
    alone: list[float] = []
    together: list[float] = []
    for _ in range(args.rounds):
        alone += run(job, 1)
        together += run(job, 2)
    alone += run(job, 1)
    a, t = float(np.median(alone)), float(np.median(together))
    data = {"host": cpu_description(), "cpu_flags": cpu_flags(), "usable_cpus": len(os.sched_getaffinity(0)),
            "candidates": 8, "samples": 132, "alone_s": alone, "together_s": together, "alone_median_s": a,
            "together_median_s": t, "ceiling": round(2 * a / t, 2), "date": time.strftime("%Y-%m-%d %H:%M")}
    earlier = _earlier_runs()
    data["earlier_runs"] = earlier
    md = (f"# Two processes side by side: the ceiling of a 2-worker executor on this host\n\nHost: {data['host']} "
          f"({data['usable_cpus']} usable). Reproduce: `source scripts/env.sh && python benchmarks/parallel_ceiling.py`"
          f". Run {data['date']}.\n\n8 EfficientNetB0 candidates (built with edgemp's recipes and scored on 132 "
          "samples, what an executor's worker runs), in one process alone and in two processes at once, alternately."
          "\n\n| alone, s (median) | each of two at once, s (median) | ceiling: 2 x alone / together |\n|---|---|---|\n"
          f"| {a:.1f} ({', '.join(f'{x:.1f}' for x in alone)}) | {t:.1f} ({', '.join(f'{x:.1f}' for x in together)})"
          f" | **{data['ceiling']}x** |\n\nA 2-worker executor cannot run the candidate phase faster than this ratio "
          "on this host, whatever it does; benchmarks/results/analysis_scale.md measures what the executors reach.\n")
    if earlier:
        md += ("\nEarlier runs on this host (the second core is shared with other machines: the ceiling moves from run "
               "to run): " + "; ".join(f"{r['date']}: {r['alone_median_s']:.1f} s alone, "
                                      f"{r['together_median_s']:.1f} s together, {r['ceiling']}x" for r in earlier)
               + ".\n")
    write_results("parallel_ceiling", data, md)


if __name__ == "__main__":
    main()
