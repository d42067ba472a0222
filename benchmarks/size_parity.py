"""Artifact size against the official converters, before and after compact(), with host latency beside it.

edgemp's int8 (and, for Keras, fp16) artifact of each model against the anchor a user would otherwise make:
- torchvision mobilenet_v3_small / resnet18 / squeezenet1_1 / shufflenet_v2_x0_5 (weights=None, 1x3x96x96):
  litert-torch's own PT2E int8 (code as in pytorch_vs_references.py);
- Keras MobileNetV2 (alpha 0.35, 96x96, weights=None, classifier_activation=None) and the example Fashion-MNIST
  CNN: the TFLite converter's int8 PTQ (int8 I/O) and fp16, from the Keras model as given.
Random-init nets get batch-norm statistics from real photos first (crops of the photos that ship with
matplotlib and scikit-learn), or their outputs are degenerate (shared/STACK.md). Every converter gets the same 32
calibration samples. edgemp's artifact is made by its own engine, as convert() makes it (float .tflite ->
calibrate -> apply_recipe). For each: bytes, ratio to the anchor, the same after compact(), after compact() with
pure index names (what readable names cost), tensor-name bytes, whether compact() left outputs bit-identical
(XNNPACK on and off) and the op census unchanged, and latency medians side by side (1 thread, XNNPACK on).

    source scripts/env.sh && python benchmarks/size_parity.py [--rounds 7] [--invokes 200] [--models resnet18,...]
Writes benchmarks/results/size_parity.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
from _common import (cpu_description, imagenet, interleaved_latency, photo_crops, pt2e_int8, round_ratio,
                     tf_converter)

import edgemp.targets.tflite.compat as compat
from edgemp import demo
from edgemp.targets.tflite.census import census
from edgemp.calibration import load_calibration
from edgemp.config import Precision, RuntimeOptions
from edgemp.quantize import apply_recipe, calibrate, recipe_for
from edgemp.sources import load_source
from edgemp.validation.runtime import make_interpreter

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "results"
TORCH = ["mobilenet_v3_small", "resnet18", "squeezenet1_1", "shufflenet_v2_x0_5"]
KERAS = ["mobilenetv2_035_96", "example_cnn"]
SIZE = 96


def edgemp_artifacts(source: Any, calib: np.ndarray, precisions: list[str]) -> dict[str, bytes]:
    """What convert() writes: the source's float .tflite, min/max calibration, the precision's recipe."""
    float_tflite = source.to_float_tflite(1)
    name = source.input_specs()[0].name
    stats = calibrate(float_tflite, [source.artifact_inputs({name: calib[i : i + 1]}) for i in range(len(calib))])
    return {p: apply_recipe(float_tflite, recipe_for(Precision(p)), stats if p == "int8" else None) for p in precisions}


def torch_case(name: str, attempts: int) -> tuple[dict[str, tuple[bytes, bytes]], np.ndarray, str]:
    import torch
    import torchvision

    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None)
    for mod in model.modules():
        if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
            mod.momentum = None  # cumulative average over the batches below
    model.train()
    with torch.no_grad():
        for i in range(4):
            model(torch.from_numpy(imagenet(photo_crops(16, SIZE, 100 + i)).transpose(0, 3, 1, 2).copy()))
    model.eval()
    calib = imagenet(photo_crops(32, SIZE, 7)).transpose(0, 3, 1, 2).copy()
    example = torch.zeros(1, 3, SIZE, SIZE)
    ours = edgemp_artifacts(load_source(model, example_input=example), calib, ["int8"])
    notes = []
    for _ in range(attempts):  # prepare_pt2e fails intermittently (shared/STACK.md)
        try:
            anchor = pt2e_int8(model, example, calib)
            break
        except Exception as exc:  # noqa: BLE001 - a failed attempt is reported, then retried
            notes.append(f"{type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}")
            traceback.print_exc(limit=1)
    else:
        return {}, calib, f"PT2E failed {attempts} times: {notes[-1]}"
    sample = imagenet(photo_crops(8, SIZE, 3))
    return {"int8": (ours["int8"], anchor)}, sample, f"PT2E retries: {len(notes)}" if notes else ""


def keras_case(name: str) -> tuple[dict[str, tuple[bytes, bytes]], np.ndarray, str]:
    import keras

    keras.utils.set_random_seed(0)
    if name == "example_cnn":
        source = load_source(demo.example_model_path())
        cal = load_calibration(REPO / "calibration_data" / "fashion_mnist", source.input_specs(), num_samples=40,
                               progress=False)
        data = np.concatenate([s[source.input_specs()[0].name] for s in cal.samples])
        calib, sample, model = data[:32], data[32:40], source.model
    else:
        model = keras.applications.MobileNetV2(input_shape=(SIZE, SIZE, 3), alpha=0.35, weights=None,
                                               classifier_activation=None)
        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = 0.0  # moving statistics := those of the batch below
        model(photo_crops(64, SIZE, 100) / 127.5 - 1.0, training=True)
        calib = (photo_crops(32, SIZE, 7) / 127.5 - 1.0).astype(np.float32)
        sample = (photo_crops(8, SIZE, 3) / 127.5 - 1.0).astype(np.float32)
        source = load_source(model)
    ours = edgemp_artifacts(source, calib, ["int8", "fp16"])
    return {p: (ours[p], tf_converter(model, p, calib)) for p in ("int8", "fp16")}, sample, ""


def outputs(model: bytes, xs: np.ndarray, xnnpack: bool) -> list[np.ndarray]:
    itp = make_interpreter(model, RuntimeOptions(num_threads=1), xnnpack=xnnpack)
    d, outs = itp.get_input_details()[0], []
    for x in xs:
        if d["dtype"] != np.float32:
            scale, zp = d["quantization"]
            x = np.clip(np.round(x / scale + zp), -128, 127)
        itp.set_tensor(d["index"], x[None].astype(d["dtype"]))
        itp.invoke()
        outs += [itp.get_tensor(o["index"]).copy() for o in itp.get_output_details()]
    return outs


def bit_identical(a: bytes, b: bytes, xs: np.ndarray) -> bool:
    return all(len(oa) == len(ob) and all(x.dtype == y.dtype and np.array_equal(x, y) for x, y in zip(oa, ob))
               for oa, ob in ((outputs(a, xs, f), outputs(b, xs, f)) for f in (True, False)))


def signatures(model: bytes) -> dict[str, Any]:
    """signature key -> input and output names with the tensor index each points at."""
    itp = make_interpreter(model, RuntimeOptions(num_threads=1))
    return {key: [{n: d["index"] for n, d in details.items()}
                  for details in (r.get_input_details(), r.get_output_details())]
            for key in itp.get_signature_list() for r in [itp.get_signature_runner(key)]}


def byte_split(model: bytes) -> dict[str, int]:
    """Bytes of tensor names and of constant data (what compact() shortens and shares)."""
    from ai_edge_litert import schema_py_generated as schema

    m = schema.ModelT.InitFromPackedBuf(model, 0)
    return {"names": sum(len(t.name or b"") for sg in m.subgraphs for t in sg.tensors),
            "constants": sum(len(b.data) for b in m.buffers if b.data is not None), "buffers": len(m.buffers)}


def compact_with_index_names(model: bytes) -> bytes:
    """compact() with `t<index>` names: the size readable names are measured against."""
    readable = compat._short_name
    compat._short_name = lambda name, index: b"t%d" % index  # type: ignore[assignment]
    try:
        return compat.compact(model)
    finally:
        compat._short_name = readable


def measure(model: str, prec: str, anchor_name: str, ours: bytes, anchor: bytes, sample: np.ndarray,
            rounds: tuple[int, int]) -> dict[str, Any]:
    small = compat.compact(ours)
    index = compact_with_index_names(ours)
    c0, c1 = census(ours), census(small)
    lat, per_round = interleaved_latency({"edgemp": ours, "compact": small, "anchor": anchor}, sample[:1], *rounds)
    a = len(anchor)
    return {
        "model": model, "precision": prec, "anchor": anchor_name, "anchor_bytes": a, "edgemp_bytes": len(ours),
        "compact_bytes": len(small), "index_names_bytes": len(index), "ratio": len(ours) / a,
        "ratio_compact": len(small) / a, "ratio_index_names": len(index) / a,
        "bytes_split": {"edgemp": byte_split(ours), "compact": byte_split(small), "anchor": byte_split(anchor)},
        "bit_identical": bit_identical(ours, small, sample), "deterministic": compat.compact(ours) == small,
        "census_unchanged": (c0.op_counts, c0.compute_counts, c0.inputs, c0.outputs)
        == (c1.op_counts, c1.compute_counts, c1.inputs, c1.outputs),
        "signatures_unchanged": signatures(ours) == signatures(small),
        "ops": {"edgemp": len(c0.ops), "anchor": len(census(anchor).ops)},
        "latency_ms": lat, "latency_ms_per_round": per_round,
        "latency_ratio_compact_to_anchor": round_ratio(per_round, "compact", "anchor"),
        "latency_ratio_compact_to_edgemp": round_ratio(per_round, "compact", "edgemp"),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--invokes", type=int, default=200, help="per model and round")
    ap.add_argument("--pt2e-attempts", type=int, default=5)
    ap.add_argument("--models", default=",".join(TORCH + KERAS))
    args = ap.parse_args()
    t_start = time.perf_counter()
    rows, notes = [], {}
    for name in args.models.split(","):
        t0 = time.perf_counter()
        if name in TORCH:
            pairs, sample, note = torch_case(name, args.pt2e_attempts)
            anchor = "litert-torch PT2E"
        else:
            pairs, sample, note = keras_case(name)
            anchor = "TFLiteConverter"
        if note:
            notes[name] = note
        for prec, (ours, ref) in pairs.items():
            rows.append(measure(name, prec, anchor, ours, ref, sample, (args.rounds, args.invokes)))
            r = rows[-1]
            print(f"{name} {prec}: {r['ratio']:.4f} -> {r['ratio_compact']:.4f} ({time.perf_counter() - t0:.0f} s)",
                  flush=True)

    host = cpu_description()
    over = [f"{r['model']} {r['precision']}" for r in rows if r["ratio_compact"] > 1.0]
    bad = [f"{r['model']} {r['precision']}" for r in rows
           if not (r["bit_identical"] and r["deterministic"] and r["census_unchanged"] and r["signatures_unchanged"])]
    OUT.mkdir(parents=True, exist_ok=True)
    result = {"rows": rows, "notes": notes, "rounds": args.rounds, "invokes": args.invokes, "input_size": SIZE, "host": host,
              "runtime_s": round(time.perf_counter() - t_start, 1)}
    (OUT / "size_parity.json").write_text(json.dumps(result, indent=2, default=str))

    lines = ["# Artifact size: edgemp vs the official converters, before and after compact()", "",
             "| model | prec | anchor | anchor bytes | edgemp bytes | ×anchor | compact bytes | ×anchor | ×anchor, index "
             "names | tensor-name bytes (edgemp → compact; anchor) | constant bytes (edgemp → compact; anchor) | "
             "bit-identical | latency ms edgemp / compact / anchor | latency compact/anchor | compact/edgemp (A/A) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        sp, lat = r["bytes_split"], r["latency_ms"]
        lines.append(
            f"| {r['model']} | {r['precision']} | {r['anchor']} | {r['anchor_bytes']:,} | {r['edgemp_bytes']:,} | "
            f"{r['ratio']:.4f} | {r['compact_bytes']:,} | **{r['ratio_compact']:.4f}** | {r['ratio_index_names']:.4f} | "
            f"{sp['edgemp']['names']:,} → {sp['compact']['names']:,}; {sp['anchor']['names']:,} | "
            f"{sp['edgemp']['constants']:,} → {sp['compact']['constants']:,}; {sp['anchor']['constants']:,} | "
            f"{'yes' if r['bit_identical'] else 'NO'} | {lat['edgemp']:.3f} / {lat['compact']:.3f} / {lat['anchor']:.3f} | "
            f"{r['latency_ratio_compact_to_anchor']:.3f} | {r['latency_ratio_compact_to_edgemp']:.3f} |")
    verdict = ("size ≤ 1.00× the anchor for every model after compact()" if not over else
               f"compact() leaves {', '.join(over)} above the anchor")
    gaps = [f"{r['model']} {r['precision']} +{r['edgemp_bytes'] - r['anchor_bytes']:,} B "
            f"(names {sp['edgemp']['names'] - sp['anchor']['names']:+,}, constants "
            f"{sp['edgemp']['constants'] - sp['anchor']['constants']:+,})"
            for r in rows if r["ratio"] > 1.0 for sp in [r["bytes_split"]]]
    lines += [
        "",
        f"**Verdict:** {verdict}; compact() kept outputs bit-identical (XNNPACK on and off), the op census and the "
        "signatures unchanged, and was deterministic" + (" everywhere." if not bad else f" except for {', '.join(bad)}."),
        "",
        "Where the extra bytes were before compact(), edgemp − anchor: " + ("; ".join(gaps) or "none") + ". The "
        "rest is flatbuffer structure (tensors, ops, quantization parameters). int8 constants differ where the "
        "quantizer stored equal constants (all-zero biases) once per tensor; compact() stores them once, and what "
        "remains is value-dependent (mobilenet_v3_small: biases that PT2E's folding made exactly zero). fp16: "
        "edgemp keeps biases in float32 where TF casts them to fp16 behind extra DEQUANTIZE ops.",
        "",
        "Latency (host, 1 thread): compact/anchor {:.3f}–{:.3f}; compact/edgemp, the same graph, {:.3f}–{:.3f}, which "
        "bounds the noise: names and shared constants do not change speed.".format(
            min(r["latency_ratio_compact_to_anchor"] for r in rows), max(r["latency_ratio_compact_to_anchor"] for r in rows),
            min(r["latency_ratio_compact_to_edgemp"] for r in rows), max(r["latency_ratio_compact_to_edgemp"] for r in rows)),
        "",
        f"Models: torchvision (weights=None, 1x3x{SIZE}x{SIZE}, NHWC artifact) against litert-torch PT2E int8; Keras "
        f"MobileNetV2 α=0.35 {SIZE}x{SIZE} and the trained example CNN against TFLiteConverter int8 PTQ (int8 I/O) and "
        "fp16 from the Keras model as given. Batch-norm statistics of random-init nets from crops of real photos; "
        "the same 32 calibration samples for every converter. edgemp's artifact is the engine's (float .tflite -> "
        "min/max calibration -> AI Edge Quantizer recipe -> constants inlined), as convert() writes it.",
        "'index names': compact() with `t<index>` names instead of readable ones, to show what the readable names "
        "(`features.3.block.1.0#57`, `conv2d_1/convolution#7`) cost.",
        f"Latency: {args.rounds} rounds × {args.invokes} invokes per artifact, batch 1, 1 thread, XNNPACK on, the "
        "three artifacts taking turns invoke by invoke (order rotated every step); ms = median over all invokes, "
        "ratio = median of the per-round ratios. Absolute times move with the load of this shared machine; "
        "compact/edgemp (same graph, same buffers) is the noise control.",
        f"Host CPU: {host}. Runtime: {result['runtime_s']:.0f} s.",
    ]
    if notes:
        lines.append("Notes: " + "; ".join(f"{k}: {v}" for k, v in notes.items()) + ".")
    (OUT / "size_parity.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
