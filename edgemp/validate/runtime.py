"""Run a .tflite on the host with LiteRT (XNNPACK on by default), quantizing/dequantizing quantized I/O."""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

import numpy as np

from edgemp.bench import harness
from edgemp.bench.harness import delegated_nodes
from edgemp.config import DelegateSpec, RuntimeOptions
from edgemp.errors import DelegateError, NotATFLiteModelError


def _litert() -> Any:
    return harness.litert()[0]


def load_delegates(specs: tuple[DelegateSpec, ...]) -> list[Any]:
    """Load external delegates; a failure is an error, never a silent CPU fallback."""
    try:
        return [harness.load_delegate(spec.path, dict(spec.options)) for spec in specs]
    except harness.HarnessError as exc:
        raise DelegateError(f"{exc}.") from exc


def make_interpreter(model: bytes, opts: RuntimeOptions, delegates: list[Any] | None = None,
                     xnnpack: bool | None = None) -> Any:
    lib = _litert()
    use_xnnpack = opts.xnnpack if xnnpack is None else xnnpack
    resolver = lib.OpResolverType.AUTO if use_xnnpack else lib.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    try:
        itp = lib.Interpreter(model_content=bytes(model), num_threads=opts.num_threads,
                              experimental_op_resolver_type=resolver, experimental_delegates=delegates or None)
        itp.allocate_tensors()
    except ValueError as exc:
        raise NotATFLiteModelError(f"LiteRT cannot load the model: {str(exc).strip().splitlines()[-1]}") from exc
    return itp


@dataclasses.dataclass(frozen=True)
class IODetail:
    name: str
    dtype: np.dtype
    scale: float
    zero_point: int

    @property
    def quantized(self) -> bool:
        return self.dtype.kind in "iu" and self.scale > 0

    def quantize(self, x: np.ndarray) -> np.ndarray:
        if not self.quantized:
            return x.astype(self.dtype, copy=False)
        info = np.iinfo(self.dtype)
        return np.clip(np.round(x / self.scale + self.zero_point), info.min, info.max).astype(self.dtype)

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        if not self.quantized:
            return q.astype(np.float32, copy=False)
        return ((q.astype(np.float32) - self.zero_point) * self.scale).astype(np.float32)


class Runner:
    """Batched inference through the model's signature, float in / float out whatever the artifact's I/O."""

    def __init__(self, model: bytes, opts: RuntimeOptions | None = None, output_order: list[str] | None = None) -> None:
        """`output_order`: the source's output names in its own order. The interpreter lists signature outputs
        by name (`aux` before `out`); with the source's order, results line up with the source's outputs."""
        self.model = bytes(model)
        self.opts = opts or RuntimeOptions()
        self._delegates = load_delegates(self.opts.delegates)
        self.interpreter = make_interpreter(self.model, self.opts, self._delegates)
        sigs = self.interpreter.get_signature_list()
        self.signature = next(iter(sigs)) if sigs else None
        if self.signature is None:
            raise NotATFLiteModelError("the model has no signature; convert it with a signature (TF 2 converters do).")
        self._runner = self.interpreter.get_signature_runner(self.signature)
        self.inputs = [_detail(k, v) for k, v in self._runner.get_input_details().items()]
        details = {k: _detail(k, v) for k, v in self._runner.get_output_details().items()}
        if output_order is not None and set(output_order) == set(details):
            self.outputs = [details[n] for n in output_order]
        else:
            self.outputs = sorted(details.values(), key=lambda d: _natural(d.name))
        self._batching = True

    def run(self, inputs: dict[str, np.ndarray], batch_size: int = 64) -> list[np.ndarray]:
        n = len(next(iter(inputs.values())))
        chunks: list[list[np.ndarray]] = []
        for start in range(0, n, batch_size if self._batching else 1):
            stop = min(n, start + (batch_size if self._batching else 1))
            feed = {d.name: d.quantize(np.asarray(inputs[d.name][start:stop], np.float32)) for d in self.inputs}
            try:
                out = self._runner(**feed)
            except (ValueError, RuntimeError):
                if not self._batching or stop - start == 1:
                    raise
                self._batching = False  # the graph fixes the batch size: fall back to one sample at a time
                return self.run(inputs, batch_size)
            chunks.append([d.dequantize(out[d.name]) for d in self.outputs])
        return [np.concatenate([c[i] for c in chunks]) for i in range(len(self.outputs))]

    def delegate_report(self) -> list[dict[str, Any]]:
        """Which delegates run the graph and how many nodes each takes (each probed on its own)."""
        rows = []
        if self.opts.xnnpack:
            taken, total = delegated_nodes(make_interpreter(self.model, self.opts, xnnpack=True))
            rows.append({"name": "XNNPACK", "path": None, "loaded": True, "nodes": taken, "total_nodes": total})
        for spec, delegate in zip(self.opts.delegates, self._delegates, strict=True):
            taken, total = delegated_nodes(make_interpreter(self.model, self.opts, [delegate], xnnpack=False))
            rows.append({"name": os.path.basename(spec.path), "path": spec.path, "options": dict(spec.options),
                         "loaded": True, "nodes": taken, "total_nodes": total})
        return rows

    def latency(self, sample: dict[str, np.ndarray]) -> dict[str, Any]:
        """Median/p90 of single-sample invokes (batch 1, as on the device), after warm-up. latency_runs=0: not
        measured (the times are None, never NaN)."""
        if self.opts.latency_runs <= 0:
            return {"median_ms": None, "p90_ms": None, "mean_ms": None, "runs": 0, "warmup_runs": 0,
                    "threads": self.opts.num_threads, "xnnpack": self.opts.xnnpack}
        itp = make_interpreter(self.model, self.opts, self._delegates)
        details = {d["name"]: d for d in itp.get_input_details()}
        runner_inputs = self._runner.get_input_details()
        for d in self.inputs:
            idx = runner_inputs[d.name]["index"]
            x = d.quantize(np.asarray(sample[d.name][:1], np.float32))
            shape = next(v["shape"] for v in details.values() if v["index"] == idx)
            if tuple(shape) != x.shape:
                itp.resize_tensor_input(idx, x.shape)
                itp.allocate_tensors()
            itp.set_tensor(idx, x)
        for _ in range(self.opts.warmup_runs):
            itp.invoke()
        times = []
        for _ in range(self.opts.latency_runs):
            t0 = time.perf_counter()
            itp.invoke()
            times.append((time.perf_counter() - t0) * 1e3)
        arr = np.asarray(times)
        return {"median_ms": float(np.median(arr)), "p90_ms": float(np.percentile(arr, 90)),
                "mean_ms": float(arr.mean()), "runs": len(times), "warmup_runs": self.opts.warmup_runs,
                "threads": self.opts.num_threads, "xnnpack": self.opts.xnnpack}


def _detail(name: str, d: dict[str, Any]) -> IODetail:
    q = d.get("quantization_parameters", {})
    scales, zps = q.get("scales", np.zeros(0)), q.get("zero_points", np.zeros(0))
    scale = float(scales[0]) if len(scales) else float(d.get("quantization", (0.0, 0))[0])
    zp = int(zps[0]) if len(zps) else int(d.get("quantization", (0.0, 0))[1])
    return IODetail(name, np.dtype(d["dtype"]), scale, zp)


def _natural(name: str) -> tuple[Any, ...]:
    import re

    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))
