"""The ONNX artifact on the host: onnxruntime's CPU execution provider, with the interface the validation uses for
LiteRT (`run`, `outputs`, `latency`, `runtime_info`). The QDQ graph's numerics on ORT's CPU stand in for TensorRT's
INT8 numerics; TensorRT itself runs only where an NVIDIA GPU is (the bundle's harness and the `gpu` test)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from edgemp.config import RuntimeOptions
from edgemp.errors import ConversionError, DataError


@dataclasses.dataclass(frozen=True)
class OrtDetail:
    name: str
    dtype: np.dtype
    shape: tuple[Any, ...]
    scale: float = 0.0
    quantized: bool = False  # ONNX I/O is float: the graph quantizes at its first Q node


class OrtRunner:
    def __init__(self, model: bytes, opts: RuntimeOptions | None = None, output_order: list[str] | None = None,
                 channel_last_outputs: Sequence[int] = ()) -> None:
        """`channel_last_outputs`: outputs moved from NCHW to NHWC after each run, so they line up with a reference
        that gives them channel-last (a PyTorch source whose TFLite artifact is NHWC)."""
        import onnxruntime as ort

        self.model = bytes(model)
        self.opts = opts or RuntimeOptions()
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.opts.num_threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(self.model, so, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
            raise ConversionError(f"onnxruntime cannot load the ONNX artifact: {str(exc).splitlines()[0]}") from exc
        self.inputs = [_detail(i) for i in self.session.get_inputs()]
        details = {o.name: _detail(o) for o in self.session.get_outputs()}
        order = output_order if output_order is not None and set(output_order) == set(details) else list(details)
        self.outputs = [details[n] for n in order]
        self._last = set(channel_last_outputs)
        self._batch = next((d.shape[0] for d in self.inputs if isinstance(d.shape[0], int)), None)

    def run(self, inputs: dict[str, np.ndarray], batch_size: int = 64) -> list[np.ndarray]:
        missing = [d.name for d in self.inputs if d.name not in inputs]
        if missing:
            raise DataError(f"no data for input(s) {missing}: the ONNX artifact's inputs are "
                            f"{[d.name for d in self.inputs]}, the data has {sorted(map(str, inputs))}.")
        arrays = {d.name: np.asarray(inputs[d.name]).astype(d.dtype, copy=False) for d in self.inputs}
        n = len(next(iter(arrays.values())))
        step = self._batch or batch_size
        names = [d.name for d in self.outputs]
        chunks = []
        for start in range(0, n, step):
            feed = {k: v[start : start + step] for k, v in arrays.items()}
            pad = step - len(next(iter(feed.values()))) if self._batch else 0
            if pad:  # a fixed batch larger than what is left: pad, then drop the padding's outputs
                feed = {k: np.concatenate([v, np.repeat(v[-1:], pad, 0)]) for k, v in feed.items()}
            try:
                out = self.session.run(names, feed)
            except Exception as exc:  # noqa: BLE001
                raise ConversionError(f"onnxruntime failed to run the ONNX artifact on inputs "
                                      f"{ {k: v.shape for k, v in feed.items()} }: {str(exc).splitlines()[0]}") from exc
            chunks.append([o[: len(o) - pad] if pad else o for o in out])
        if not chunks:
            raise DataError("no samples to run: the data is empty.")
        res = [np.concatenate([c[i] for c in chunks]).astype(np.float32, copy=False) for i in range(len(names))]
        return [np.moveaxis(r, 1, -1) if i in self._last and r.ndim == 4 else r for i, r in enumerate(res)]

    def latency(self, sample: dict[str, np.ndarray]) -> dict[str, Any]:
        """Median/p90 of single-batch runs after warm-up, as for LiteRT (host CPU: not the Jetson's GPU)."""
        o = self.opts
        if o.latency_runs <= 0:
            return {"median_ms": None, "p90_ms": None, "mean_ms": None, "runs": 0, "warmup_runs": 0,
                    "threads": o.num_threads, "provider": "CPUExecutionProvider"}
        feed = {d.name: np.asarray(sample[d.name][:1]).astype(d.dtype, copy=False) for d in self.inputs}
        if self._batch and self._batch > 1:
            feed = {k: np.repeat(v, self._batch, 0) for k, v in feed.items()}
        for _ in range(1 + o.warmup_runs):
            self.session.run(None, feed)
        times = []
        for _ in range(o.latency_runs):
            t0 = time.perf_counter()
            self.session.run(None, feed)
            times.append((time.perf_counter() - t0) * 1e3)
        arr = np.asarray(times)
        return {"median_ms": float(np.median(arr)), "p90_ms": float(np.percentile(arr, 90)), "mean_ms": float(arr.mean()),
                "runs": len(times), "warmup_runs": o.warmup_runs, "threads": o.num_threads,
                "provider": "CPUExecutionProvider"}

    def delegate_report(self) -> list[dict[str, Any]]:
        return []

    def runtime_info(self) -> dict[str, Any]:
        import onnxruntime as ort

        return {"interpreter": f"onnxruntime {ort.__version__}", "providers": self.session.get_providers(),
                "threads": self.opts.num_threads,
                "not_run": "TensorRT (no NVIDIA GPU on this host): the QDQ graph's numerics on ORT's CPU stand in for "
                           "the engine's INT8/FP16 numerics; the bundle's build_engine.sh and harness run TensorRT on "
                           "the Jetson"}


def _detail(arg: Any) -> OrtDetail:
    kinds = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
             "tensor(int32)": np.int32, "tensor(int8)": np.int8, "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_,
             "tensor(double)": np.float64}
    return OrtDetail(arg.name, np.dtype(kinds.get(arg.type, np.float32)), tuple(arg.shape))
