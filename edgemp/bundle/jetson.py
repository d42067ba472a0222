"""The jetson bundle of ONNX models: build_engine.sh (trtexec with the flags each precision needs), run.sh (build the
engines when trtexec is there, then benchmark them with TensorRT, or the .onnx with onnxruntime), the TensorRT/ONNX
harness and its pinned requirements. Engines are never shipped: one is specific to the GPU, the TensorRT version and
the flags it was built with, so it is built on the device.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from importlib import resources
from typing import Any

# trtexec flags per precision. A Q/DQ (explicitly quantized) graph needs --int8 to get INT8 kernels; --fp16 lets the
# layers outside Q/DQ pairs (and the ones `mixed` keeps in FP16) run in FP16 instead of FP32.
TRT_FLAGS = {"fp32": [], "fp16": ["--fp16"], "int8": ["--int8", "--fp16"], "mixed": ["--int8", "--fp16"]}

NOTES = ["sh build_engine.sh builds a TensorRT engine per model on this Jetson (trtexec; DLA_CORE=0 for the DLA with "
         "GPU fallback); sh run.sh builds them when missing, then benchmarks them with TensorRT (onnxruntime on the "
         ".onnx when TensorRT is not there). For stable numbers first: sudo nvpmodel -m 0 && sudo jetson_clocks.",
         "TensorRT's Python bindings come with JetPack (python3-libnvinfer): run.sh makes its environment with "
         "--system-site-packages so the harness sees them."]


def _shapes(model: dict[str, Any], batch: str) -> str:
    return ",".join(f"{t['name']}:" + "x".join(batch if d < 0 else str(d) for d in t["shape"]) for t in model["inputs"])


def build_engine_sh(models: Sequence[dict[str, Any]]) -> str:
    lines = []
    for m in models:
        flags = list(TRT_FLAGS[m["precision"]])
        if any(d < 0 for t in m["inputs"] for d in t["shape"]):  # a dynamic batch: an optimization profile
            flags += [f"--minShapes={_shapes(m, '1')}", f"--optShapes={_shapes(m, '${OPT_BATCH:-1}')}",
                      f"--maxShapes={_shapes(m, '${MAX_BATCH:-8}')}"]
        stem = m["file"].removesuffix(".onnx")
        lines.append(f'build {shlex.quote(m["file"])} "$ENGINE_DIR/{stem}.engine" '
                     + " ".join(f'"{f}"' if "$" in f else shlex.quote(f) for f in flags))
    return f"""#!/bin/sh
# Build TensorRT engines from this bundle's ONNX model(s) with trtexec, on the Jetson itself.
#   sh build_engine.sh               every model; <model>.engine beside it, kernel timings cached in timing.cache
#   DLA_CORE=0 sh build_engine.sh    on a DLA core (Xavier/Orin); layers it cannot run fall back to the GPU
# Also: TRTEXEC=/path/to/trtexec, ENGINE_DIR=dir, OPT_BATCH/MAX_BATCH (dynamic-batch models),
# EXTRA_FLAGS="--memPoolSize=workspace:2048" (anything trtexec takes). Each build's log: <engine>.log.
# Flags per precision: fp16 --fp16; int8 and mixed (a Q/DQ graph) --int8 --fp16, so layers outside Q/DQ pairs
# and the ones mixed keeps in FP16 run in FP16.
set -eu
cd "$(dirname "$0")"
TRTEXEC="${{TRTEXEC:-$(command -v trtexec || echo /usr/src/tensorrt/bin/trtexec)}}"
if [ ! -x "$TRTEXEC" ]; then
    echo "trtexec not found (JetPack installs it in /usr/src/tensorrt/bin); set TRTEXEC=/path/to/trtexec" >&2
    exit 3
fi
ENGINE_DIR="${{ENGINE_DIR:-.}}"
mkdir -p "$ENGINE_DIR"
DLA=""
if [ -n "${{DLA_CORE:-}}" ]; then
    DLA="--useDLACore=$DLA_CORE --allowGPUFallback"
fi
build() {{  # model engine flags...: built under a temporary name, moved into place when trtexec succeeds
    model="$1"; engine="$2"; shift 2
    echo "building $engine from $model ($*${{DLA:+ $DLA}})" >&2
    # shellcheck disable=SC2086
    if ! "$TRTEXEC" --onnx="$model" --saveEngine="$engine.tmp" --timingCacheFile="$ENGINE_DIR/timing.cache" \\
            "$@" $DLA ${{EXTRA_FLAGS:-}} > "$engine.log" 2>&1; then
        tail -n 30 "$engine.log" >&2
        echo "trtexec failed on $model; full log: $engine.log" >&2
        rm -f "$engine.tmp"
        exit 4
    fi
    mv "$engine.tmp" "$engine"
}}
{chr(10).join(lines)}
"""


def run_sh(models: Sequence[str]) -> str:
    from edgemp.bundle.writer import harness_python

    names = " ".join(shlex.quote(m) for m in models)
    return f"""#!/bin/sh
# Benchmark this bundle's model(s) on the Jetson: the TensorRT engines (built first with build_engine.sh when trtexec
# is there and an engine is missing), else the .onnx with onnxruntime. NO_BUILD=1 skips building; HARNESS_PYTHON=
# uses an interpreter that already has the runtime. Extra arguments go to the harness (python3 harness_trt.py --help).
{harness_python("--system-site-packages")}have_trt=no
if "$py" -c "import tensorrt" >/dev/null 2>&1; then have_trt=yes; fi
missing=no
for m in {names}; do
    [ -f "${{m%.onnx}}.engine" ] || missing=yes
done
if [ "$have_trt" = yes ] && [ "$missing" = yes ] && [ -z "${{NO_BUILD:-}}" ]; then
    sh build_engine.sh
fi
models=""
for m in {names}; do
    e="${{m%.onnx}}.engine"
    if [ "$have_trt" = yes ] && [ -f "$e" ]; then models="$models $e"; else models="$models $m"; fi
done
# shellcheck disable=SC2086
exec "$py" harness_trt.py $models --json bench.json "$@"
"""


def files(models: Sequence[dict[str, Any]]) -> dict[str, bytes]:
    bench = resources.files("edgemp.bench")
    return {"harness.py": bench.joinpath("harness.py").read_bytes(),
            "harness_trt.py": bench.joinpath("harness_trt.py").read_bytes(),
            "requirements.txt": resources.files("edgemp.bundle").joinpath("jetson_requirements.txt").read_bytes(),
            "build_engine.sh": build_engine_sh(models).encode(),
            "run.sh": run_sh([m["file"] for m in models]).encode()}
