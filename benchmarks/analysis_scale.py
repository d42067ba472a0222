"""Sensitivity analysis and mixed precision at scale: `analyze` + `convert(precision="mixed")` against one plain
int8 conversion of the same model and data, in this process and with Ray workers (issue: ≤ 3x one conversion on
one machine; ≥ 1.7x speed-up with 2 local Ray workers on the largest model).

For each model, in one run (side by side, so machine noise hits all alike):
  int8      one plain int8 conversion (the unit)
  serial    analyze, then mixed (which reuses the analysis' scores: the usual sequence), cold caches, candidates
            one after another (executor="local", num_workers=1)
  local     the same with the default in-process executor (one thread per CPU, at most 4)
  ray       the same with executor="ray" (a local Ray with --workers workers, started by each call and shut down
            after it), its own cold caches
  ray_up    the same on a Ray the application started before (ray.init(num_cpus=--workers)), as a cluster that is
            already running: no start-up in the figures, workers stay warm between analyze and mixed
and checks that every executor chose the same layers and wrote the same artifact bytes.
The mixed budget is output SQNR 1 dB above what full INT8 reaches (these models have no labels), so the search
has to keep layers in float.

    source scripts/env.sh && python benchmarks/analysis_scale.py [--models fashion,mobilenetv2,efficientnetb0]
        [--rounds N]   # N side-by-side rounds of serial and Ray already running; their median speed-up
Writes benchmarks/results/analysis_scale.{json,md}.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import (write_results, MEAN, STD, CpuSteal, cpu_description, photo_crops,  # noqa: E402
                               work_dir)



def model(kind: str) -> tuple[Any, np.ndarray, np.ndarray]:
    """(Keras model, calibration, validation inputs). Applications have random weights with batch-norm statistics
    from real photos (nothing is downloaded), so their activations have real ranges."""
    from edgemp.sources.keras import import_tf

    import_tf()
    import keras

    if kind == "fashion":
        from edgemp.demo import example_model_path, fashion_mnist

        x, _ = fashion_mnist("test")
        return keras.saving.load_model(example_model_path(), compile=False), x[:200], x[200:332]
    keras.utils.set_random_seed(0)
    build = {"mobilenetv2": keras.applications.MobileNetV2, "efficientnetb0": keras.applications.EfficientNetB0}[kind]
    net = build(weights=None, input_shape=(224, 224, 3), classifier_activation=None)
    crops = photo_crops(332, 224, seed=3).astype(np.float32)
    if kind == "mobilenetv2":
        crops = ((crops / 255.0 - MEAN) / STD).astype(np.float32)
    for i in range(0, 64, 16):
        net(crops[i : i + 16], training=True)
    return net, crops[:200], crops[200:]


def timed(fn: Any) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def one(kind: str, workers: int, rounds: int = 1) -> dict[str, Any]:
    saved = os.environ.get("EDGEMP_CACHE")
    try:
        return _one(kind, workers, rounds)
    finally:  # the trained example models live in the user's cache
        os.environ.pop("EDGEMP_CACHE", None) if saved is None else os.environ.__setitem__("EDGEMP_CACHE", saved)


EXECUTORS = ("serial", "local", "ray", "ray_up")


def _one(kind: str, workers: int, rounds: int) -> dict[str, Any]:
    import edgemp

    net, cal, val = model(kind)
    work = work_dir(f"edgemp-scale-{kind}-")
    net.save(work / f"{kind}.keras")  # a model file, as the CLI gets it (the float conversion can then be reused)
    net = str(work / f"{kind}.keras")
    kw: dict[str, Any] = {"progress": False}
    # twice, each from cold caches: the first pays the process's one-off costs (lazy imports, TF's first trace),
    # which every run after it is spared; the second is the unit (the stricter comparison)
    t_first = 0.0
    for i in range(2):
        os.environ["EDGEMP_CACHE"] = str(work / f"cache-int8-{i}")
        t_int8, r = timed(lambda i=i: edgemp.convert(net, "int8", cal, val, work / f"int8-{i}", **kw,
                                                     runtime=edgemp.RuntimeOptions(latency_runs=0)))
        t_first = t_first or t_int8
    int8_sqnr = min(o["sqnr_db"] for o in r.report["validation"]["outputs"])
    gate = edgemp.GateOptions(min_sqnr_db=round(int8_sqnr + 1.0, 1))

    def run(ex: str, tag: str) -> dict[str, Any]:
        os.environ["EDGEMP_CACHE"] = str(work / f"cache-{tag}")  # cold for each run: scores, float model, statistics
        opts = {"serial": {"num_workers": 1}, "local": {}}.get(ex, {"executor": "ray", "num_workers": workers})
        if ex == "ray_up":
            import ray

            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, logging_level="ERROR")

        def run_mixed(opts: dict[str, Any]) -> tuple[dict[str, Any], bytes, dict[str, float]]:
            try:
                m = edgemp.convert(net, "mixed", cal, val, work / f"mixed-{tag}", gate=gate,
                                   mixed=edgemp.MixedOptions(**opts),
                                   runtime=edgemp.RuntimeOptions(latency_runs=0), **kw)
                return m.report["mixed"], m.artifacts["tflite"].read_bytes(), m.report["timings_s"]
            except edgemp.errors.MixedPrecisionError as exc:  # not met under the cap: still a result to compare
                return exc.report["mixed"], Path(exc.result.artifacts["tflite"]).read_bytes(), exc.report["timings_s"]

        with CpuSteal() as steal:
            t_a, a = timed(lambda: edgemp.analyze(net, cal, val, work / f"analysis-{tag}", **kw, **opts))
            t_m, (sec, art, stages) = timed(lambda: run_mixed(opts))
        if ex == "ray_up":
            ray.shutdown()
        return {"analyze_s": round(t_a, 1), "mixed_s": round(t_m, 1), "total_s": round(t_a + t_m, 1),
                "ratio_to_int8": round((t_a + t_m) / t_int8, 2), "float_layers": sec["float_layers"],
                "met": sec["met"], "score": sec["score"], "scores_from_cache": sec["scores_from_cache"],
                "quantize_runs_analyze": a.summary["quantize_runs"], "quantize_runs_mixed": sec["quantize_runs"],
                "measured_on_all_samples": a.summary["measured_on_all_samples"],
                "analyze_candidates_s": a.summary["executor_seconds"],
                "calibration_shards": a.summary["calibration_shards"], "mixed_stages_s": stages,
                "first_pass": a.summary["first_pass"], "artifact_sha256": hashlib.sha256(art).hexdigest(),
                "ranking": [row["label"] for row in a.layers if row["rank"] is not None][:10],
                "mixed_steps": [st["action"] for st in sec["steps"]], "cpu_steal": steal.share}

    runs = {ex: run(ex, ex) for ex in EXECUTORS}
    # more rounds of the pair the Ray target is about, in alternating order (a slow minute of the shared host then
    # falls on each side in turn): serial against Ray already running, each from cold caches
    pairs = [(runs["serial"], runs["ray_up"])]
    for k in range(1, rounds):
        order = ("ray_up", "serial") if k % 2 else ("serial", "ray_up")
        done = {ex: run(ex, f"{ex}-{k}") for ex in order}
        pairs.append((done["serial"], done["ray_up"]))
    same = all(r["float_layers"] == runs["serial"]["float_layers"] and r["artifact_sha256"] ==
               runs["serial"]["artifact_sha256"] for p in pairs for r in p)
    ser, loc, ray, up = runs["serial"], runs["local"], runs["ray"], runs["ray_up"]
    return {"model": kind, "ops": len(r.report["census"]["ops"]), "validation_samples": len(val),
            "int8_s": round(t_int8, 1), "int8_first_s": round(t_first, 1), "int8_sqnr_db": round(int8_sqnr, 2), "budget": gate.min_sqnr_db,
            "runs": runs, "ray_speedup": round(ser["total_s"] / ray["total_s"], 2),
            "ray_up_speedup": round(ser["total_s"] / up["total_s"], 2),
            "ray_up_speedup_candidates": round(ser["analyze_candidates_s"] / up["analyze_candidates_s"], 2),
            "threads_speedup": round(ser["total_s"] / loc["total_s"], 2),
            "ray_speedup_candidates": round(ser["analyze_candidates_s"] / ray["analyze_candidates_s"], 2),
            "threads_speedup_candidates": round(ser["analyze_candidates_s"] / loc["analyze_candidates_s"], 2),
            "same_result": same and all(r["float_layers"] == ser["float_layers"] and r["artifact_sha256"] ==
                                        ser["artifact_sha256"] and r["ranking"] == ser["ranking"]
                                        for r in (loc, ray, up)),
            "rounds": [{"serial_s": a["total_s"], "ray_up_s": b["total_s"],
                        "cpu_steal": [a.get("cpu_steal"), b.get("cpu_steal")],
                        "speedup": round(a["total_s"] / b["total_s"], 2), "candidates_speedup": round(a["analyze_candidates_s"] / b["analyze_candidates_s"], 2)}
                       for a, b in pairs],
            "ray_up_speedup_median": round(float(np.median([a["total_s"] / b["total_s"] for a, b in pairs])), 2)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="fashion,mobilenetv2,efficientnetb0")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=1,
                    help="side-by-side rounds of serial and Ray already running (the first with every executor); the "
                         "speed-up reported is their median")
    args = ap.parse_args()
    if args.rounds < 1:
        ap.error(f"--rounds must be at least 1, got {args.rounds}")
    warnings.simplefilter("ignore")
    stamp = time.strftime("%Y-%m-%d %H:%M")
    rows = [one(k, args.workers, args.rounds) | {"run": stamp, "host": cpu_description()} for k in args.models.split(",")]
    # models not run this time keep their rows from the last run (each row is one side-by-side run, dated)
    old = Path(__file__).parent / "results" / "analysis_scale.json"
    before = [m for m in (json.loads(old.read_text())["models"] if old.exists() else []) if "threads_speedup" in m]
    kept = [m for m in before if m["model"] not in {r["model"] for r in rows}]
    for r in rows:  # this host's second core comes and goes: the earlier runs' ratios stay beside the new one
        r["earlier_runs"] = [h for m in before if m["model"] == r["model"]
                             for h in (*m.get("earlier_runs", []), headline(m))][-HISTORY:]
    order = {k: i for i, k in enumerate(("fashion", "mobilenetv2", "efficientnetb0"))}
    rows = sorted(kept + rows, key=lambda m: order.get(m["model"], 99))
    data = {"host": cpu_description(), "workers": args.workers, "models": rows}
    write_results("analysis_scale", data, to_markdown(data))


HISTORY = 6  # earlier runs kept per model


def headline(m: dict[str, Any]) -> dict[str, Any]:
    """One run's ratios, as kept beside later runs."""
    up = m["runs"].get("ray_up", {})
    return {"run": m.get("run", "?"), "int8_s": m["int8_s"], "threads_ratio_to_int8": m["runs"]["local"]["ratio_to_int8"],
            "serial_s": m["runs"]["serial"]["total_s"], "ray_up_s": up.get("total_s"),
            "ray_up_speedup": m.get("ray_up_speedup"), "ray_speedup": m.get("ray_speedup"),
            "ray_up_speedup_candidates": m.get("ray_up_speedup_candidates"),
            "ray_up_speedup_median": m.get("ray_up_speedup_median"), "rounds": len(m.get("rounds", [])) or 1}


def _pct(share: float | None) -> str:
    return "n/a" if share is None else f"{100 * share:.1f}%"


def _hosts(d: dict[str, Any]) -> str:
    """One host, or each model's (rows kept from an earlier run may come from another machine of this kind)."""
    hosts = {m.get("host", "?"): None for m in d["models"]}
    if len(hosts) == 1:
        return next(iter(hosts)) if "?" not in hosts else d["host"]
    return "; ".join(f"{m['model']}: {m.get('host', 'not recorded')}" for m in d["models"])


def to_markdown(d: dict[str, Any]) -> str:
    lines = ["# Analysis + mixed precision at scale: time against one int8 conversion", "",
             f"Host: {_hosts(d)}. Reproduce: `source scripts/env.sh && python benchmarks/analysis_scale.py`. "
             "serial: candidates one after another in this process; threads: the default in-process executor (one "
             f"thread per CPU); Ray: a local Ray with {d['workers']} workers, started by each call (its start-up is in "
             "the figures) or already running (ray.init() before the calls, as a cluster is). Times in seconds; ratios are "
             "analyze + mixed against one int8 conversion: the second of two in the process, each from cold caches "
             "(rows with a 'first' figure; older rows timed one, the process's first). Each row is one "
             "run, all executors side by side: " + ", ".join(f"{m['model']} {m.get('run', '?')}" for m in d["models"])
             + ".", "",
             "| model | ops | val. samples | int8 s | serial analyze + mixed | threads analyze + mixed | "
             "serial / int8 | threads / int8 | float layers (budget) | same result on every executor |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for m in d["models"]:
        se, lo = m["runs"]["serial"], m["runs"]["local"]
        first = f" (first: {m['int8_first_s']})" if "int8_first_s" in m else ""
        lines.append(f"| {m['model']} | {m['ops']} | {m['validation_samples']} | {m['int8_s']}{first} | "
                     f"{se['analyze_s']} + {se['mixed_s']} | {lo['analyze_s']} + {lo['mixed_s']} | "
                     f"{se['ratio_to_int8']}x | **{lo['ratio_to_int8']}x** | {', '.join(lo['float_layers']) or 'none'} "
                     f"(SQNR >= {m['budget']} dB: {'met' if lo['met'] else 'not met'}) | {m['same_result']} |")
    lines += ["", f"With {d['workers']} Ray workers (speed-ups against serial, the same run):", "",
              "| model | Ray started by each call: analyze + mixed | speed-up | Ray already running: analyze + mixed | "
              "speed-up | threads speed-up | candidate phase of analyze: serial / threads / Ray / Ray running | "
              "calibration shards on Ray |", "|---|---|---|---|---|---|---|---|"]
    for m in d["models"]:
        se, lo, ra = (m["runs"][k] for k in ("serial", "local", "ray"))
        up = m["runs"].get("ray_up")
        upc = f"{up['analyze_s']} + {up['mixed_s']}" if up else "– (not run then)"
        ups = f"**{m['ray_up_speedup']}x**" if up else "–"
        cand = (f"{se['analyze_candidates_s']} / {lo['analyze_candidates_s']} / {ra['analyze_candidates_s']} / "
                f"{up['analyze_candidates_s'] if up else '–'} ({m['threads_speedup_candidates']}x, "
                f"{m['ray_speedup_candidates']}x" + (f", {m['ray_up_speedup_candidates']}x)" if up else ")"))
        lines.append(f"| {m['model']} | {ra['analyze_s']} + {ra['mixed_s']} | {m['ray_speedup']}x | {upc} | {ups} | "
                     f"{m['threads_speedup']}x | {cand} | {ra.get('calibration_shards', '1 (before sharding)')} |")
    multi = [m for m in d["models"] if len(m.get("rounds", [])) > 1]
    if multi:
        lines += ["", "Rounds of serial against Ray already running, each pair side by side from cold caches (the first "
                  "is the row above; later rounds alternate which goes first): serial -> Ray running s, speed-up "
                  "(candidate phase of analyze), and the share of CPU time the hypervisor gave to other VMs during each run "
                  "(steal, /proc/stat: serial / Ray).", ""]
        for m in multi:
            lines.append(f"- {m['model']}: " + "; ".join(
                f"{r['serial_s']} -> {r['ray_up_s']} s, {r['speedup']}x ({r['candidates_speedup']}x)"
                + (f", CPU steal {_pct(r['cpu_steal'][0])} / {_pct(r['cpu_steal'][1])}" if r.get("cpu_steal") else "")
                for r in m["rounds"]) + f"; **median {m['ray_up_speedup_median']}x** over {len(m['rounds'])} rounds.")
    earlier = [m for m in d["models"] if m.get("earlier_runs")]
    if earlier:
        lines += ["", "The same ratios in earlier runs on this host (each a side-by-side run; the code of its day, the "
                  "second core as shared then): run: threads / int8; serial s -> Ray running s, speed-up (candidate "
                  "phase); Ray started by each call.", ""]
        for m in earlier:
            lines.append(f"- {m['model']}: " + "; ".join(
                f"{h['run']}: {h['threads_ratio_to_int8']}x; {h['serial_s']} -> {h['ray_up_s']} s, "
                f"{h['ray_up_speedup']}x ({h['ray_up_speedup_candidates']}x); {h['ray_speedup']}x"
                + (f"; median of {h['rounds']} rounds {h['ray_up_speedup_median']}x" if h.get("rounds", 1) > 1 else "")
                for h in m["earlier_runs"]) + ".")
    lines += ["", "Each executor starts from cold caches. analyze runs the full-INT8 model once with preserved tensors "
              "and sends the layers that add the most noise to a first pass on a few samples, then "
              "measures the 12 most damaging on all samples with their 'float alone' gain. mixed, run next on the same "
              "file and data, reuses the float conversion, the calibration statistics and the scores (all on disk), "
              "and builds only the candidates its search steps need."]
    for m in d["models"]:
        lo = m["runs"]["local"]
        fp = lo.get("first_pass") or {}
        first = f", {fp['layers']} more on the first {fp['samples']} samples" if fp.get("samples") else ""
        lines.append(f"- {m['model']}: analyze quantized {lo['quantize_runs_analyze']} candidates "
                     f"({lo['measured_on_all_samples']} on all samples{first}); mixed quantized {lo['quantize_runs_mixed']} and "
                     f"took {lo['scores_from_cache']} scores from the cache"
                     + (f"; its search steps: {'; '.join(lo['mixed_steps'])}." if lo.get("mixed_steps") else "."))
    lines += [f"- {m['model']}: {m['note']}" for m in d["models"] if m.get("note")]  # what the figures alone hide
    for m in d["models"]:
        ra = m["runs"]["ray"]
        if "mixed_stages_s" not in ra:  # rows from before these were recorded
            continue
        stages = ", ".join(f"{k} {v:.1f}" for k, v in ra["mixed_stages_s"].items() if v >= 0.5)
        lines.append(f"- {m['model']}, Ray: calibration in {ra['calibration_shards']} shard(s); the mixed run's "
                     f"stages (s): {stages}.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
