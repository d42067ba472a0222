#!/usr/bin/env python3
"""edgemp TensorRT/ONNX benchmark harness for Jetson: a TensorRT engine through TensorRT's Python API, or an .onnx
through onnxruntime (TensorRT, CUDA or CPU execution provider, the first available), in the same JSON as harness.py.

    sh build_engine.sh                      # model.onnx -> model.engine with trtexec, on the device
    python3 harness_trt.py model.engine --runs 200 --json bench.json
    python3 harness_trt.py model.onnx --providers CPUExecutionProvider

Needs numpy, and tensorrt (JetPack's python3-libnvinfer) for engines or onnxruntime for .onnx. Device buffers are
allocated through the CUDA runtime library with ctypes: no pycuda or cuda-python to install. Timed runs are
inference only (inputs are copied to the GPU before the loop), synchronised on the stream each run.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import hashlib
import json
import os
import sys
import time
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (SCHEMA, HarnessError, RuntimeMissingError, _peak_rss_process, _proc_status,  # noqa: E402
                     _reset_peak_rss, device_facts, emit, random_inputs, stats)


class CudaRuntime:
    """The few CUDA runtime calls a benchmark needs, through libcudart (present on every JetPack)."""

    H2D, D2H = 1, 2

    def __init__(self) -> None:
        names = ["libcudart.so", ctypes.util.find_library("cudart"), "libcudart.so.13", "libcudart.so.12",
                 "libcudart.so.11.0", "/usr/local/cuda/lib64/libcudart.so"]
        self.lib = None
        for n in names:
            if not n:
                continue
            try:
                self.lib = ctypes.CDLL(n)
                break
            except OSError:
                continue
        if self.lib is None:
            raise RuntimeMissingError("the CUDA runtime (libcudart) was not found: run on a Jetson with JetPack, or set "
                                      "LD_LIBRARY_PATH to CUDA's lib64 folder")
        self.stream = ctypes.c_void_p()
        self._check(self.lib.cudaStreamCreate(ctypes.byref(self.stream)), "cudaStreamCreate")
        self._buffers: list[ctypes.c_void_p] = []

    def _check(self, rc: int, what: str) -> None:
        if rc != 0:
            raise RuntimeMissingError(f"{what} failed with CUDA error {rc}")

    def malloc(self, nbytes: int) -> ctypes.c_void_p:
        p = ctypes.c_void_p()
        self._check(self.lib.cudaMalloc(ctypes.byref(p), ctypes.c_size_t(max(nbytes, 1))), "cudaMalloc")
        self._buffers.append(p)
        return p

    def copy_in(self, dst: ctypes.c_void_p, arr: np.ndarray) -> None:
        arr = np.ascontiguousarray(arr)
        self._check(self.lib.cudaMemcpy(dst, arr.ctypes.data_as(ctypes.c_void_p), ctypes.c_size_t(arr.nbytes),
                                        self.H2D), "cudaMemcpy to the device")

    def copy_out(self, arr: np.ndarray, src: ctypes.c_void_p) -> None:
        self._check(self.lib.cudaMemcpy(arr.ctypes.data_as(ctypes.c_void_p), src, ctypes.c_size_t(arr.nbytes),
                                        self.D2H), "cudaMemcpy from the device")

    def sync(self) -> None:
        self._check(self.lib.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")

    def free_memory_mb(self) -> float | None:
        free, total = ctypes.c_size_t(), ctypes.c_size_t()
        if self.lib.cudaMemGetInfo(ctypes.byref(free), ctypes.byref(total)) != 0:
            return None
        return free.value / 2**20

    def close(self) -> None:
        for p in self._buffers:
            self.lib.cudaFree(p)
        self._buffers = []


class TensorRTEngine:
    """A serialized engine (built on this device by build_engine.sh), run with execute_async_v3 (TensorRT >= 8.5)."""

    def __init__(self, data: bytes, cuda: CudaRuntime) -> None:
        try:
            import tensorrt as trt
        except ImportError as exc:
            raise RuntimeMissingError("the tensorrt Python module is missing: install JetPack's python3-libnvinfer and "
                                      "create the environment with --system-site-packages (run.sh does)") from exc
        self.trt, self.cuda = trt, cuda
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(data)
        if self.engine is None:
            raise HarnessError("TensorRT could not deserialize the engine: engines are specific to the GPU and the "
                               "TensorRT version; build it on this device (sh build_engine.sh)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        for n in names:
            if is_input[n]:
                shape = [1 if d < 0 else d for d in self.engine.get_tensor_shape(n)]  # dynamic batch: 1
                self.context.set_input_shape(n, shape)
        self.details: dict[str, dict[str, Any]] = {}
        for n in names:
            shape = tuple(int(d) for d in self.context.get_tensor_shape(n))
            dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(n)))
            ptr = cuda.malloc(int(np.prod(shape)) * dtype.itemsize)
            self.context.set_tensor_address(n, ptr.value)
            self.details[n] = {"name": n, "shape": list(shape), "dtype": dtype.name, "ptr": ptr, "input": is_input[n]}
        self.inputs = [d for d in self.details.values() if d["input"]]
        self.outputs = [d for d in self.details.values() if not d["input"]]

    def feed(self, arrays: list[np.ndarray]) -> None:
        for d, x in zip(self.inputs, arrays):
            self.cuda.copy_in(d["ptr"], x.astype(d["dtype"], copy=False))

    def run(self) -> None:
        if not self.context.execute_async_v3(self.cuda.stream.value):
            raise HarnessError("TensorRT execute_async_v3 failed (see the TensorRT log above)")
        self.cuda.sync()

    def fetch(self) -> list[np.ndarray]:
        out = []
        for d in self.outputs:
            arr = np.empty(d["shape"], d["dtype"])
            self.cuda.copy_out(arr, d["ptr"])
            out.append(arr)
        return out


class OrtModel:
    def __init__(self, data: bytes, providers: list[str] | None, threads: int) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise RuntimeMissingError("onnxruntime is missing: pip install -r requirements.txt") from exc
        available = ort.get_available_providers()
        wanted = providers or ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
        chosen = [p for p in wanted if p in available]
        if not chosen:
            raise RuntimeMissingError(f"none of the providers {wanted} is available (this onnxruntime has {available})")
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        self.session = ort.InferenceSession(data, so, providers=chosen)
        self.providers = self.session.get_providers()
        kinds = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64",
                 "tensor(int32)": "int32", "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(bool)": "bool"}

        def detail(a: Any) -> dict[str, Any]:
            return {"name": a.name, "shape": [d if isinstance(d, int) else 1 for d in a.shape],
                    "dtype": kinds.get(a.type, "float32")}

        self.inputs = [detail(a) for a in self.session.get_inputs()]
        self.outputs = [detail(a) for a in self.session.get_outputs()]
        self._feed: dict[str, np.ndarray] = {}
        self._out: list[np.ndarray] = []

    def feed(self, arrays: list[np.ndarray]) -> None:
        self._feed = {d["name"]: x.astype(d["dtype"], copy=False) for d, x in zip(self.inputs, arrays)}

    def run(self) -> None:
        self._out = self.session.run(None, self._feed)

    def fetch(self) -> list[np.ndarray]:
        return [np.asarray(o) for o in self._out]


def bench_model(path: str, *, threads: int = 1, warmup: int = 10, runs: int | None = 50,
                time_budget: float | None = None, providers: list[str] | None = None, seed: int = 0,
                inputs: str | None = None) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise HarnessError(f"cannot read model {path}: {exc.strerror}") from exc
    per_model_peak = _reset_peak_rss()
    rss_before = _proc_status("VmRSS")
    cuda = None
    gpu_free_before = None
    t0 = time.perf_counter()
    if path.endswith((".engine", ".plan")):
        cuda = CudaRuntime()
        gpu_free_before = cuda.free_memory_mb()
        model: Any = TensorRTEngine(data, cuda)
        engine = {"runtime": "TensorRT", "version": model.trt.__version__}
    elif path.endswith(".onnx"):
        model = OrtModel(data, providers, threads)
        import onnxruntime

        engine = {"runtime": "onnxruntime", "version": onnxruntime.__version__, "providers": model.providers}
    else:
        raise HarnessError(f"{path}: give a TensorRT engine (.engine/.plan) or an .onnx model (.tflite: harness.py)")
    init_ms = (time.perf_counter() - t0) * 1e3
    if inputs:
        from harness import file_inputs

        samples = file_inputs(inputs, model.inputs)
    else:
        samples = [random_inputs(model.inputs, seed, None)]
    model.feed(samples[0])
    t = time.perf_counter()
    model.run()
    first_ms = (time.perf_counter() - t) * 1e3
    for i in range(warmup):
        model.run()
    times: list[float] = []
    start = time.perf_counter()
    while (runs is None or len(times) < runs) and (time_budget is None or time.perf_counter() - start < time_budget):
        if len(samples) > 1:
            model.feed(samples[len(times) % len(samples)])
        t = time.perf_counter()
        model.run()
        times.append((time.perf_counter() - t) * 1e3)
    outputs = model.fetch()
    peak = _proc_status("VmHWM") if per_model_peak else None
    gpu_used = None
    if cuda is not None:
        free_after = cuda.free_memory_mb()
        gpu_used = gpu_free_before - free_after if gpu_free_before is not None and free_after is not None else None
        cuda.close()

    def io(d: dict[str, Any]) -> dict[str, Any]:
        return {"name": d["name"], "shape": d["shape"], "dtype": d["dtype"], "scale": None, "zero_point": None}

    return {
        "model": os.path.basename(path), "path": os.path.abspath(path), "size_bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(), "inputs": [io(d) for d in model.inputs],
        "outputs": [io(d) for d in model.outputs], "init_ms": init_ms, "first_inference_ms": first_ms,
        "warmup_runs": warmup, "latency_ms": stats(times) if times else None,
        "timed_duration_s": time.perf_counter() - start,
        "memory": {"peak_rss_mb": peak if peak is not None else _peak_rss_process(), "rss_before_load_mb": rss_before,
                   "peak_rss_delta_mb": (peak - rss_before) if peak is not None and rss_before is not None else None,
                   "gpu_memory_used_mb": gpu_used,
                   "method": "VmHWM reset per model" if peak is not None else "process peak (ru_maxrss)"},
        "engine": engine, "delegation": None,
        "outputs_finite": bool(all(np.isfinite(o.astype(np.float64)).all() for o in outputs)),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="harness_trt.py", description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+", help=".engine/.plan (TensorRT) or .onnx (onnxruntime) files")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime CPU threads (default 1)")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--runs", type=int, default=None, help="timed runs (default 50 without --time-budget)")
    p.add_argument("--time-budget", type=float, default=None, help="seconds of timed runs per model")
    p.add_argument("--providers", help="onnxruntime providers in order, comma-separated (default: TensorRT, CUDA, CPU)")
    p.add_argument("--inputs", help=".npy/.npz with real input samples (default: random values)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", dest="json_path", help="write the JSON result here ('-' for stdout)")
    args = p.parse_args(argv)
    if args.runs is None and args.time_budget is None:
        args.runs = 50
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    providers = args.providers.split(",") if args.providers else None
    try:
        results = [bench_model(m, threads=args.threads, warmup=args.warmup, runs=args.runs,
                               time_budget=args.time_budget, providers=providers, seed=args.seed,
                               inputs=args.inputs) for m in args.models]
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if args.json_path:
            print(json.dumps({"error": {"kind": exc.kind, "message": str(exc)}}), file=sys.stderr)
        return exc.exit_code
    engines = [r["engine"] for r in results]
    out = {"schema": SCHEMA, "tool": "edgemp-harness-trt",
           "device": device_facts((engines[0]["runtime"], engines[0]["version"])),
           "options": {"threads": args.threads, "warmup_runs": args.warmup, "runs": args.runs,
                       "time_budget_s": args.time_budget, "providers": providers, "inputs": args.inputs or "random",
                       "seed": args.seed}, "results": results}
    emit(out, args.json_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
