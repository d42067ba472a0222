"""edgemp's INT8 (float .tflite -> AI Edge Quantizer, min/max calibration) against the TF converter's own PTQ.

Same trained Keras model (the example Fashion-MNIST CNN), same 200 calibration images, same 10k test images.
Reports size, top-1, agreement with the float model, conversion time, and host latency measured side by side
in one run (interleaved rounds, medians, 1 thread, XNNPACK on). Also fp16 against the converter's fp16.

    source scripts/env.sh && python benchmarks/quantizer_vs_tf_converter.py [--rounds 15]
Writes benchmarks/results/quantizer_vs_tf_converter.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from _common import cpu_description, side_by_side_latency

from edgemp import demo
from edgemp.targets.tflite.census import census
from edgemp.calibration import load_calibration
from edgemp.config import Precision
from edgemp.quantize import apply_recipe, calibrate, recipe_for
from edgemp.sources import load_source
from edgemp.sources.keras import _with_batch, convert_with_tf, import_tf
from edgemp.validation.metrics import compare, topk
from edgemp.validation.runtime import Runner

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "results"


def tf_converter(model, precision: str, calib: list[dict[str, np.ndarray]]) -> bytes:  # type: ignore[no-untyped-def]
    tf = import_tf()

    def make():  # type: ignore[no-untyped-def]
        conv = tf.lite.TFLiteConverter.from_keras_model(model)
        if precision == "fp16":
            conv.optimizations = [tf.lite.Optimize.DEFAULT]
            conv.target_spec.supported_types = [tf.float16]
        else:
            conv.optimizations = [tf.lite.Optimize.DEFAULT]
            conv.representative_dataset = lambda: ([s["image"]] for s in calib)
            conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            conv.inference_input_type = tf.int8
            conv.inference_output_type = tf.int8
        return conv

    return convert_with_tf(make, f"{precision} reference")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()

    model_path = demo.example_model_path()
    source = load_source(model_path)
    keras_b1 = _with_batch(source.model, 1)
    x, y = demo.fashion_mnist("test")
    cal = load_calibration(REPO / "calibration_data" / "fashion_mnist", source.input_specs(), num_samples=200)
    ref = source.predict({"image": x})[0]

    rows, artifacts = {}, {}
    t0 = time.perf_counter()
    float_tflite = source.to_float_tflite()
    t_float = time.perf_counter() - t0
    artifacts["fp32"] = float_tflite
    rows["fp32"] = {"conversion_s": t_float}
    for prec in ("fp16", "int8"):
        t0 = time.perf_counter()
        stats = calibrate(float_tflite, cal.samples) if prec == "int8" else None
        artifacts[f"edgemp {prec}"] = apply_recipe(float_tflite, recipe_for(Precision(prec)), stats)  # type: ignore[arg-type]
        rows[f"edgemp {prec}"] = {"conversion_s": t_float + time.perf_counter() - t0}
        t0 = time.perf_counter()
        artifacts[f"TF converter {prec}"] = tf_converter(keras_b1, prec, cal.samples)
        rows[f"TF converter {prec}"] = {"conversion_s": time.perf_counter() - t0}

    for name, art in artifacts.items():
        out = Runner(art).run({"image": x})[0]
        c = census(art)
        m = compare(ref, out)
        rows[name] |= {"bytes": len(art), "size_ratio_to_fp32": len(art) / len(float_tflite),
                       "top1": topk(out, y, 1), "top1_agreement": m["top1_agreement"], "sqnr_db": m["sqnr_db"],
                       "max_abs_error": m["max_abs_error"], "compute": c.compute_counts,
                       "io": sorted({s.dtype for s in (*c.inputs, *c.outputs)})}
    lat = side_by_side_latency(artifacts, x[:1], args.rounds)
    for name in rows:
        rows[name]["latency_ms"] = lat[name]
        rows[name]["latency_ratio_to_fp32"] = lat[name] / lat["fp32"]
    for prec in ("fp16", "int8"):
        rows[f"edgemp {prec}"]["latency_ratio_to_tf_converter"] = lat[f"edgemp {prec}"] / lat[f"TF converter {prec}"]

    float_top1 = topk(ref, y, 1)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "quantizer_vs_tf_converter.json").write_text(json.dumps({"float_keras_top1": float_top1, "rows": rows,
                                                                    "rounds": args.rounds}, indent=2))
    lines = [f"# edgemp vs TF converter ({model_path.name}, 10,000 Fashion-MNIST test images, float Keras top-1 "
             f"{float_top1:.4f})", "",
             "| artifact | bytes | ×fp32 | top-1 | top-1 agree | SQNR dB | latency ms (median, 1 thr) | ×fp32 | conversion s | ops | I/O |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['bytes']:,} | {r['size_ratio_to_fp32']:.3f} | {r['top1']:.4f} | "
                     f"{r['top1_agreement']:.4f} | {r['sqnr_db']:.1f} | {r['latency_ms']:.4f} | "
                     f"{r['latency_ratio_to_fp32']:.2f} | {r['conversion_s']:.2f} | {r['compute']} | {','.join(r['io'])} |")
    lines += ["", f"Latency: {args.rounds} interleaved rounds of 50 invokes each, batch 1; medians of the per-round means.",
              f"edgemp/TF-converter latency ratio: fp16 {rows['edgemp fp16']['latency_ratio_to_tf_converter']:.2f}, "
              f"int8 {rows['edgemp int8']['latency_ratio_to_tf_converter']:.2f}."]
    e, t = rows["edgemp int8"], rows["TF converter int8"]
    d_top1 = e["top1"] - t["top1"]
    ratio = e["latency_ratio_to_tf_converter"]
    verdict = ("edgemp's quantizer path wins or ties" if d_top1 >= -0.001 and ratio <= 1.05 else
               "the TF converter's PTQ wins on " + ("accuracy" if d_top1 < -0.001 else "") +
               (" and " if d_top1 < -0.001 and ratio > 1.05 else "") + ("latency" if ratio > 1.05 else ""))
    lines += ["", f"Verdict (int8): top-1 difference edgemp - TF converter = {100 * d_top1:+.2f} points, latency ratio "
              f"{ratio:.2f}: {verdict}.", f"Host CPU: {cpu_description()}."]
    (OUT / "quantizer_vs_tf_converter.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
