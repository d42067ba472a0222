"""Mixed precision study: FP32 vs full INT8 vs `precision="mixed"` on trained models.

Models (all trained on Fashion-MNIST by edgemp.demo, cached):
  - fashion_cnn: the Keras example (batch norm; full INT8 is already within a point),
  - fashion_cnn_torch: the PyTorch example (same situation, through litert-torch),
  - sensitive_cnn: trained honestly, but its head joins an L2-normalised embedding (0..0.8) with the raw mean
    brightness (8..160); an int8 CONCATENATION has one scale for both, so full INT8 loses tens of points.
The mixed search sees test images 0..1999 (budget: top-1 drop <= 0.3 points, at most 10% of layers in float);
accuracy is reported on the other 8,000 test images. Latency: side by side in one run, 1 thread, medians.

    source scripts/env.sh && python benchmarks/mixed_precision.py [--rounds 15]
Writes benchmarks/results/mixed_precision.{json,md}.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
from _common import cpu_description, side_by_side_latency, work_dir

import edgemp
from edgemp import demo
from edgemp.targets.tflite.census import census
from edgemp.validation.metrics import topk
from edgemp.validation.runtime import Runner

REPO = Path(__file__).resolve().parents[1]
CAL = REPO / "calibration_data" / "fashion_mnist"
OUT = REPO / "benchmarks" / "results"
SEARCH = slice(0, 2000)
HELD_OUT = slice(2000, None)


def models() -> list[tuple[str, Any, dict[str, Any], float]]:
    """(name, model, convert kwargs, input scale)."""
    import torch

    return [
        ("fashion_cnn (Keras)", demo.example_model_path(), {}, 1.0),
        ("fashion_cnn_torch (PyTorch)", demo.torch_example_model(),
         {"example_input": torch.zeros(1, 1, 28, 28), "input_layout": "NHWC"}, 1.0),
        ("sensitive_cnn (Keras)", demo.sensitive_model_path(), {"preprocessing": {"scale": 1.0}}, 255.0),
    ]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    x, y = demo.fashion_mnist("test")
    rows: list[dict[str, Any]] = []
    lat_models: dict[str, bytes] = {}
    work = work_dir("edgemp-mixed-")
    for name, model, kw, scale in models():
        torch_src = "example_input" in kw
        xs = x * scale
        data = np.ascontiguousarray(xs.transpose(0, 3, 1, 2)) if torch_src else xs
        held = xs[HELD_OUT]  # artifacts are NHWC in every case
        results = {}
        for prec in ("fp32", "int8", "mixed"):
            extra = {"max_accuracy_drop": 0.003, "max_float_layers": 0.1} if prec == "mixed" else {}
            r = edgemp.convert(model, prec, CAL, (data[SEARCH], y[SEARCH]), work / f"{len(rows)}-{prec}",
                               latency_runs=5, progress=False, **kw, **extra)
            results[prec] = r
        float_top1 = None
        for prec, r in results.items():
            art = r.artifacts["tflite"].read_bytes()
            c = census(art)
            out = Runner(art).run({c.inputs[0].name: held})[0]
            top1 = topk(out, y[HELD_OUT], 1)
            float_top1 = top1 if prec == "fp32" else float_top1
            m = r.report["mixed"] or {}
            n_ops = sum(1 for o in c.ops if o.op not in ("QUANTIZE", "DEQUANTIZE"))
            rows.append({
                "model": name, "precision": prec, "top1": top1, "drop_points": 100 * (float_top1 - top1),
                "float_layers": m.get("float_layers", []) if prec == "mixed" else ("all" if prec == "fp32" else []),
                "float_ops": c.compute_counts.get("float32", 0), "ops": n_ops,
                "boundaries": c.op_counts.get("QUANTIZE", 0) + c.op_counts.get("DEQUANTIZE", 0),
                "bytes": len(art), "search_steps": len(m.get("steps", [])), "scored_artifacts": m.get("scored_artifacts"),
                "calibration_runs": m.get("calibration_runs"), "search_s": r.report["timings_s"].get("mixed_search"),
            })
            lat_models[f"{name} {prec}"] = art
    lat = side_by_side_latency(lat_models, x[:1], args.rounds)
    for r in rows:
        r["latency_ms"] = lat[f"{r['model']} {r['precision']}"]
        r["latency_ratio_to_fp32"] = r["latency_ms"] / lat[f"{r['model']} fp32"]
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "mixed_precision.json").write_text(json.dumps({"rows": rows, "rounds": args.rounds,
                                                          "host": cpu_description()}, indent=2))
    lines = ["# Mixed precision: FP32 vs full INT8 vs mixed (top-1 on 8,000 held-out Fashion-MNIST test images)", "",
             "| model | precision | top-1 | drop (points) | layers in float | float ops / ops | Q+DQ ops | bytes | "
             "latency ms | ×fp32 | search |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        fl = r["float_layers"]
        fl_txt = "all" if fl == "all" else (", ".join(fl) if fl else "none")
        search = (f"{r['search_steps']} steps, {r['scored_artifacts']} artifacts scored, "
                  f"{r['calibration_runs']} calibration, {r['search_s']:.1f} s") if r["precision"] == "mixed" else ""
        lines.append(f"| {r['model']} | {r['precision']} | {r['top1']:.4f} | {r['drop_points']:+.2f} | {fl_txt} | "
                     f"{r['float_ops']} / {r['ops']} | {r['boundaries']} | {r['bytes']:,} | {r['latency_ms']:.4f} | "
                     f"{r['latency_ratio_to_fp32']:.2f} | {search} |")
    lines += ["", "Budget for mixed: top-1 drop <= 0.3 points on the 2,000 search images, at most 10% of the layers "
              "(ops of the float graph) in float. Q+DQ ops include the int8 I/O converters.",
              f"Latency: {args.rounds} interleaved rounds of 50 invokes, batch 1, 1 thread, XNNPACK; host: "
              f"{cpu_description()}."]
    lines += verdict(rows)
    (OUT / "mixed_precision.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def verdict(rows: list[dict[str, Any]]) -> list[str]:
    """The issue's target, checked on the rows: where full INT8 loses more than 1 point, mixed must be within
    0.3 points of float with at most 10% of the layers (ops) in float."""
    out = ["", "## Target", "", "Where full INT8 loses more than 1 point, mixed gets within 0.3 points of float with at "
           "most 10% of the layers in float.", ""]
    by = {(r["model"], r["precision"]): r for r in rows}
    for model in dict.fromkeys(r["model"] for r in rows):
        i8, mx = by[(model, "int8")], by[(model, "mixed")]
        if i8["drop_points"] <= 1.0:
            out.append(f"- {model}: full INT8 loses {i8['drop_points']:.2f} points (within 1): the target does not "
                       "apply; mixed rightly keeps nothing in float.")
            continue
        share = mx["float_ops"] / mx["ops"]
        met = mx["drop_points"] <= 0.3 and share <= 0.10
        out.append(f"- {model}: full INT8 loses {i8['drop_points']:.2f} points; mixed is {mx['drop_points']:+.2f} "
                   f"points from float with {mx['float_ops']} of {mx['ops']} ops ({100 * share:.0f}%) in float: "
                   f"**{'met' if met else 'MISSED'}**.")
    out += ["", "How sensitive_cnn was made (edgemp.demo.build_sensitive_model): a CNN without batch norm trained honestly on "
            "Fashion-MNIST given as raw 0..255 pixels for 3 epochs; its head L2-normalises the pooled 64-d features "
            "(values 0..~0.8) and concatenates them with the raw mean brightness (8..160) before the logits. Nothing "
            "is rigged after training: an int8 CONCATENATION has one scale for all its inputs, set by the brightness "
            "range (~0.63 per step), so most of the embedding rounds to zero and full INT8 loses tens of points; "
            "keeping the join and the logits layer in float restores it."]
    return out


if __name__ == "__main__":
    main()
