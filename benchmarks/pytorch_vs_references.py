"""The PyTorch side: edgemp's INT8 against litert-torch's own PT2E INT8, and a PyTorch-sourced artifact against
its Keras-sourced twin (same architecture, same weights) to show there is no layout tax.

Model: the trained PyTorch example CNN (edgemp.demo.torch_example_model, Fashion-MNIST). Calibration: the same
200 images of calibration_data/fashion_mnist for every path. Accuracy on the 10,000 test images. Latency side
by side in one run (interleaved rounds, medians, 1 thread, XNNPACK on); compare like with like (int8 with int8).

    source scripts/env.sh && python benchmarks/pytorch_vs_references.py [--rounds 15] [--pt2e-attempts 5]
Writes benchmarks/results/pytorch_vs_references.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
from _common import cpu_description, pt2e_int8, side_by_side_latency, work_dir

import edgemp
from edgemp import demo
from edgemp.targets.tflite.census import census
from edgemp.calibration import load_calibration
from edgemp.config import Preprocessing
from edgemp.sources import load_source
from edgemp.validation.metrics import compare, topk
from edgemp.validation.runtime import Runner

REPO = Path(__file__).resolve().parents[1]
CAL = REPO / "calibration_data" / "fashion_mnist"
OUT = REPO / "benchmarks" / "results"


def constant_bytes(art: bytes) -> int:
    """Bytes of constant buffers (weights, biases): separates weight size from flatbuffer overhead."""
    from ai_edge_litert import schema_py_generated as schema

    m = schema.ModelT.InitFromPackedBuf(art, 0)
    return sum(len(b.data) for b in m.buffers or [] if b.data is not None)


def evaluate(art: bytes, x_nhwc: np.ndarray, y: np.ndarray, ref: np.ndarray) -> dict[str, Any]:
    c = census(art)
    out = Runner(art).run({c.inputs[0].name: x_nhwc})[0]
    m = compare(ref, out)
    return {"bytes": len(art), "constant_bytes": constant_bytes(art), "top1": topk(out, y, 1), "top1_agreement": m["top1_agreement"],
            "sqnr_db": m["sqnr_db"], "cosine": m["cosine"], "op_counts": c.op_counts, "compute": c.compute_counts,
            "transposes": c.transpose_count, "io": sorted({s.dtype for s in (*c.inputs, *c.outputs)})}


def edgemp_convert(model: Any, precision: str, work: Path, **kw: Any) -> tuple[bytes, float]:
    """edgemp's artifact and its conversion time (export + calibration + quantization; no validation)."""
    r = edgemp.convert(model, precision, CAL, output_dir=work / f"{precision}-{id(model)}", latency_runs=1,
                       progress=False, **kw)
    t = r.report["timings_s"]
    return r.artifacts["tflite"].read_bytes(), sum(v for k, v in t.items() if k not in ("census", "validate"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--pt2e-attempts", type=int, default=5)
    args = ap.parse_args()
    import torch

    tm = demo.torch_example_model()
    x, y = demo.fashion_mnist("test")
    x_nchw = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    with torch.no_grad():
        ref = tm(torch.from_numpy(x_nchw)).numpy()
    example = torch.zeros(1, 1, 28, 28)
    src = load_source(tm, example_input=example)
    cal = load_calibration(CAL, src.input_specs(), num_samples=200, progress=False,
                           preprocessing=Preprocessing(layout=src.data_layout))
    calib_nchw = np.concatenate([s["args_0"] for s in cal.samples])
    work = work_dir("edgemp-bench-")

    arts: dict[str, bytes] = {}
    rows: dict[str, dict[str, Any]] = {}
    for prec in ("fp32", "int8"):
        arts[f"edgemp {prec} (PyTorch)"], t = edgemp_convert(tm, prec, work, example_input=example, input_layout="NHWC")
        rows[f"edgemp {prec} (PyTorch)"] = {"conversion_s": t}

    attempts: list[str] = []
    for _ in range(args.pt2e_attempts):
        t0 = time.perf_counter()
        try:
            arts["litert-torch PT2E int8"] = pt2e_int8(tm, example, calib_nchw)
            rows["litert-torch PT2E int8"] = {"conversion_s": time.perf_counter() - t0}
            attempts.append("ok")
            break
        except Exception as exc:  # noqa: BLE001 - the failure itself is a result of this benchmark
            attempts.append(f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}")
            traceback.print_exc(limit=2)

    import sys

    sys.path.insert(0, str(REPO))  # tests.models holds the Keras twin (the test suite's model)
    from tests.models import keras_twin_of_torch_example

    km = keras_twin_of_torch_example(tm)
    for prec in ("fp32", "int8"):
        arts[f"edgemp {prec} (Keras twin)"], t = edgemp_convert(km, prec, work)
        rows[f"edgemp {prec} (Keras twin)"] = {"conversion_s": t}

    for name, art in arts.items():
        rows[name] |= evaluate(art, x, y, ref)
    lat = side_by_side_latency(arts, x[:1], args.rounds)
    for name in rows:
        rows[name]["latency_ms"] = lat[name]
    float_top1 = topk(ref, y, 1)
    ratios = {
        "edgemp int8 / PT2E int8 latency": lat["edgemp int8 (PyTorch)"] / lat["litert-torch PT2E int8"]
        if "litert-torch PT2E int8" in lat else None,
        "PyTorch / Keras twin fp32 latency": lat["edgemp fp32 (PyTorch)"] / lat["edgemp fp32 (Keras twin)"],
        "PyTorch / Keras twin int8 latency": lat["edgemp int8 (PyTorch)"] / lat["edgemp int8 (Keras twin)"],
    }
    OUT.mkdir(parents=True, exist_ok=True)
    result = {"float_torch_top1": float_top1, "rows": rows, "latency_ratios": ratios, "pt2e_attempts": attempts,
              "rounds": args.rounds, "host": cpu_description()}
    (OUT / "pytorch_vs_references.json").write_text(json.dumps(result, indent=2))

    lines = [f"# PyTorch: edgemp vs litert-torch PT2E, and vs the Keras twin (10,000 Fashion-MNIST test images, "
             f"float PyTorch top-1 {float_top1:.4f})", "",
             "| artifact | bytes (constants) | top-1 | top-1 agree | SQNR dB | latency ms (median, 1 thr) | conversion s | "
             "TRANSPOSE | ops | compute | I/O |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['bytes']:,} ({r['constant_bytes']:,}) | {r['top1']:.4f} | {r['top1_agreement']:.4f} | {r['sqnr_db']:.1f} | "
                     f"{r['latency_ms']:.4f} | {r['conversion_s']:.2f} | {r['transposes']} | {r['op_counts']} | "
                     f"{r['compute']} | {','.join(r['io'])} |")
    lines += ["", f"Latency: {args.rounds} interleaved rounds of 50 invokes each, batch 1; medians of per-round means.",
              "Ratios: " + ", ".join(f"{k} = {v:.2f}" if v is not None else f"{k}: n/a" for k, v in ratios.items()) + ".",
              f"PT2E attempts: {attempts}.", f"Host CPU: {cpu_description()}."]
    a, b = rows["edgemp int8 (PyTorch)"]["op_counts"], rows["edgemp int8 (Keras twin)"]["op_counts"]
    diff = {k: (a.get(k, 0), b.get(k, 0)) for k in sorted(set(a) | set(b)) if a.get(k, 0) != b.get(k, 0)}
    lines.append(f"Op census, PyTorch-sourced int8 vs Keras twin int8: {sum(a.values())} vs {sum(b.values())} ops, "
                 f"TRANSPOSE {rows['edgemp int8 (PyTorch)']['transposes']} vs "
                 f"{rows['edgemp int8 (Keras twin)']['transposes']}; differing op types (PyTorch, Keras): {diff or 'none'}.")
    (OUT / "pytorch_vs_references.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
