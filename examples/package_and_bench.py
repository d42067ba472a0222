"""Package and bench: converted models -> device bundles (android, ios, jetson, linux-arm64) -> benchmark.

    source scripts/env.sh && python examples/package_and_bench.py [output_dir]

Converts the example Fashion-MNIST CNN to fp32 and full INT8 (plus a Core ML package when coremltools is
installed), writes one verified bundle per device, then runs the same standalone harness the jetson/linux-arm64
bundles carry, here on the host, over both models side by side. On a device: unzip the bundle and `sh run.sh`;
on a phone: `edgemp bench MODEL.tflite --adb --benchmark-binary android_aarch64_benchmark_model`.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import edgemp
from edgemp.demo import CLASSES, example_model_path

REPO = Path(__file__).resolve().parents[1]

if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "dist" / "package_and_bench"
    data = dict(calibration=REPO / "calibration_data" / "fashion_mnist",
                validation=REPO / "examples" / "data" / "fashion_mnist_val", class_names=list(CLASSES),
                output_dir=out / "models", force=True, latency_runs=10)
    with_coreml = importlib.util.find_spec("coremltools") is not None
    int8 = edgemp.convert(example_model_path(), "int8", targets=("tflite", "coreml") if with_coreml else ("tflite",),
                          **data)
    fp32 = edgemp.convert(example_model_path(), "fp32", **data)
    print(f"int8: {'PASSED' if int8.passed else 'FAILED'}, top-1 drop "
          f"{100 * int8.report['validation']['accuracy']['drop']:.2f} points")

    devices = ["android", "jetson", "linux-arm64"] + (["ios"] if with_coreml else [])
    for device in devices:
        # the first result is the bundle's default model; Core ML goes into the ios bundle only
        bundle = edgemp.package([int8, fp32] if device != "ios" else [int8], device, out / "bundles", force=True)
        checked = edgemp.read_bundle(bundle.path)  # schema, checksums, safe paths
        model = checked.default_model
        q = model["inputs"][0]["quantization"]
        print(f"{device:12s} {bundle.path.name}: {len(checked.manifest['files'])} files verified; "
              f"{model['file']} ({model['precision']}) input {model['inputs'][0]['dtype']}"
              + (f" scale={q['scale']:.6g} zero_point={q['zero_point']}" if q else ""))

    result = edgemp.benchmark([fp32.artifacts["tflite"], int8.artifacts["tflite"]], threads=1, runs=100, warmup=10)
    print(result.table())
    result.to_json(out / "bench_host.json")
    print(f"wrote {out / 'bench_host.json'}")
    sys.exit(0 if int8.passed else 3)
