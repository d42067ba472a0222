"""Where the time of `edgemp.analyze` and `precision="mixed"` goes, against one plain int8 conversion of the same
model and data (issue: sensitivity analysis and mixed precision at the scale of real models). cProfile over each
run; the time is attributed to edgemp's stages (inclusive times of the functions below, so nested stages overlap:
read each line as "time spent inside this").

    source scripts/env.sh && python benchmarks/analysis_profile.py [--model mobilenetv2|fashion|efficientnetb0]   # ~5 min
Writes benchmarks/results/analysis_profile.{json,md}.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import MEAN, STD, cpu_description, photo_crops, work_dir  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"

# (label, module path fragment, function name): the stages the time is attributed to
STAGES = [
    ("float conversion (Keras -> .tflite)", "sources/keras.py", "to_float_tflite"),
    ("calibration (AI Edge Quantizer calibrate)", "quantize/engine.py", "calibrate"),
    ("quantizing candidates (apply_recipe)", "quantize/engine.py", "apply_recipe"),
    ("scoring candidates (Scorer: interpreter runs + metrics)", "mixed/scoring.py", "run"),
    ("  of which: LiteRT interpreter creation", "validation/runtime.py", "make_interpreter"),
    ("  of which: batched invokes (Runner.run)", "validation/runtime.py", "run"),
    ("per-layer tensor errors (preserved tensors)", "mixed/sensitivity.py", "tensor_errors"),
    ("first pass + head: 'int8 alone' ranking", "mixed/sensitivity.py", "ranked_int8_alone"),
    ("'float alone' effects (one candidate per layer)", "mixed/sensitivity.py", "float_alone_effects"),
    ("'int8 alone' effects (one candidate per layer)", "mixed/sensitivity.py", "int8_alone_effects"),
    ("greedy search", "mixed/search.py", "search"),
    ("float reference predictions (source.predict)", "sources/keras.py", "predict"),
    ("validation of the final artifact (evaluate)", "validation/evaluate.py", "evaluate"),
    ("reports and plots (sensitivity md/png/html)", "mixed/report.py", "plot_png"),
]


def profiled(fn: Any) -> tuple[float, pstats.Stats, Any]:
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    try:
        out = fn()
    finally:
        prof.disable()
    return time.perf_counter() - t0, pstats.Stats(prof), out


def by_stage(stats: pstats.Stats) -> dict[str, float]:
    out = {}
    for label, path, name in STAGES:
        total = 0.0
        for (file, _line, func), (_cc, _nc, _tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
            if func == name and file.replace("\\", "/").endswith(path):
                total += ct
        out[label] = round(total, 2)
    return out


def model(kind: str) -> tuple[Any, np.ndarray, Any]:
    """(Keras model, calibration, validation): MobileNetV2 (random weights, batch-norm statistics from photos) on
    photo crops, or the trained Fashion-MNIST CNN on its test images."""
    from edgemp.sources.keras import import_tf

    import_tf()
    import keras

    if kind == "fashion":
        from edgemp.demo import example_model_path, fashion_mnist

        x, y = fashion_mnist("test")
        return keras.saving.load_model(example_model_path(), compile=False), x[:200], (x[200:332], y[200:332])
    if kind == "efficientnetb0":  # the largest model of benchmarks/analysis_scale.py, built the same way
        from benchmarks.analysis_scale import model as scale_model

        return scale_model(kind)
    keras.utils.set_random_seed(0)
    net = keras.applications.MobileNetV2(weights=None, input_shape=(224, 224, 3), classifier_activation=None)
    crops = ((photo_crops(332, 224, seed=3) / 255.0 - MEAN) / STD).astype(np.float32)
    for i in range(0, 64, 16):  # batch-norm statistics from real photos, so activations have real ranges
        net(crops[i : i + 16], training=True)
    return net, crops[:200], crops[200:]


def main() -> None:
    import edgemp

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=["mobilenetv2", "fashion", "efficientnetb0"], default="mobilenetv2")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    net, cal, val = model(args.model)
    work = work_dir("edgemp-analysis-profile-")
    os.environ["EDGEMP_SCORE_CACHE_DIR"] = str(work / "scores")  # cold at first: this run's own score cache
    kw: dict[str, Any] = {"progress": False}
    serial = edgemp.MixedOptions(num_workers=1)  # candidates on this thread, where cProfile sees them
    runs = {}
    t, st, r = profiled(lambda: edgemp.convert(net, "int8", cal, val, work / "int8", **kw))
    runs["int8 conversion"] = {"seconds": round(t, 1), "stages": by_stage(st), "ops": len(r.report["census"]["ops"])}
    t, st, a = profiled(lambda: edgemp.analyze(net, cal, val, work / "analysis", num_workers=1, **kw))
    runs["analyze"] = {"seconds": round(t, 1), "stages": by_stage(st)}
    t, st, a2 = profiled(lambda: edgemp.analyze(net, cal, val, work / "analysis2", num_workers=1, **kw))
    runs["analyze again (scores cached)"] = {"seconds": round(t, 1), "stages": by_stage(st),
                                             "scores_from_cache": a2.summary["scores_from_cache"],
                                             "same_table": a2.layers == a.layers}
    gate = {} if isinstance(val, tuple) else {"gate": edgemp.GateOptions(max_accuracy_drop=None, min_sqnr_db=30)}
    t, st, m = profiled(lambda: edgemp.convert(net, "mixed", cal, val, work / "mixed", mixed=serial, **kw, **gate))
    mixed = m.report["mixed"]
    runs["mixed conversion"] = {"seconds": round(t, 1), "stages": by_stage(st),
                                "scores_from_cache": mixed["scores_from_cache"],
                                "float_layers": mixed["float_layers"], "met": mixed["met"],
                                "quantize_runs": mixed["quantize_runs"], "scored_artifacts": mixed["scored_artifacts"]}
    host = cpu_description()
    data = {"host": host, "model": args.model, "validation_samples": len(val if not isinstance(val, tuple) else val[0]),
            "runs": runs}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"analysis_profile_{args.model}.json").write_text(json.dumps(data, indent=2) + "\n")
    md = to_markdown(data)
    (RESULTS / f"analysis_profile_{args.model}.md").write_text(md)
    print(md)


def to_markdown(d: dict[str, Any]) -> str:
    runs = d["runs"]
    base = runs["int8 conversion"]["seconds"]
    lines = [f"# Where analysis and mixed precision spend their time: {d['model']}", "",
             f"Host: {d['host']}; {runs['int8 conversion']['ops']} ops, {d['validation_samples']} validation samples. "
             "Reproduce: `source scripts/env.sh && python benchmarks/analysis_profile.py --model "
             f"{d['model']}`. Inclusive cProfile times per stage (nested stages overlap).", "",
             "| stage | " + " | ".join(f"{k} ({v['seconds']} s, {v['seconds'] / base:.1f}x int8)" for k, v in runs.items())
             + " |", "|---|" + "---|" * len(runs)]
    for label, _, _ in STAGES:
        lines.append(f"| {label} | " + " | ".join(f"{v['stages'][label]:.1f}" for v in runs.values()) + " |")
    m = runs["mixed conversion"]
    again = runs["analyze again (scores cached)"]
    lines += ["", f"The second analysis took {again['scores_from_cache']} scores from the cache the first wrote "
              f"(same table: {again['same_table']}); the mixed run after it took {m['scores_from_cache']}."]
    lines += ["", "Budget of the mixed run: top-1 drop <= 1 point with labels, else output SQNR >= 30 dB"
              + (" (MobileNetV2 here has random weights with batch-norm statistics from photos and no labels: full INT8 "
                 "met the SQNR budget, so the search itself did not run)." if d["model"] == "mobilenetv2" else "."), "",
              f"Mixed: {m['quantize_runs']} candidates quantized, {m['scored_artifacts']} scored; float layers "
              f"{m['float_layers']} (budget met: {m['met']})."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
