"""Run a .tflite on the host with LiteRT (XNNPACK on by default), quantizing/dequantizing quantized I/O."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from edgemp.bench import harness
from edgemp.bench.harness import delegated_nodes
from edgemp.config import DelegateSpec, RuntimeOptions
from edgemp.errors import ConversionError, DataError, DelegateError, EdgempError, NotATFLiteModelError
from edgemp.validation.inputs import LookupTable, _fmt, _litert_text, _shape_message, _token_message, lookup_tables


def _litert() -> Any:
    return harness.litert()[0]


def load_delegates(specs: tuple[DelegateSpec, ...]) -> list[Any]:
    """Load external delegates; a failure is an error, never a silent CPU fallback."""
    try:
        return [harness.load_delegate(spec.path, dict(spec.options)) for spec in specs]
    except harness.HarnessError as exc:
        raise DelegateError(f"{exc}.") from exc


def make_interpreter(model: bytes, opts: RuntimeOptions, delegates: list[Any] | None = None,
                     xnnpack: bool | None = None, shapes: Mapping[str, tuple[int, ...]] | None = None) -> Any:
    """An allocated interpreter; `shapes` (signature input name -> shape) resizes dynamic inputs first.

    A model with dynamic dimensions (e.g. Input((None, None, 3))) holds 1 in each of them until resized, which its
    convolutions may not accept: without `shapes` it is returned unallocated, and the signature runner allocates it
    at the shape of the data it is given."""
    lib = _litert()
    use_xnnpack = opts.xnnpack if xnnpack is None else xnnpack
    resolver = lib.OpResolverType.AUTO if use_xnnpack else lib.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    try:
        itp = lib.Interpreter(model_content=bytes(model), num_threads=opts.num_threads,
                              experimental_op_resolver_type=resolver, experimental_delegates=delegates or None)
        if shapes:
            _resize_inputs(itp, shapes)
        itp.allocate_tensors()
    except ValueError as exc:
        raise NotATFLiteModelError(f"LiteRT cannot load the model: {_litert_text(exc)}") from exc
    except RuntimeError as exc:
        dynamic = _dynamic_inputs(itp) if "itp" in locals() else {}
        if dynamic and not shapes:
            return itp  # allocated by the signature runner at the data's shape
        if dynamic:
            raise DataError(_shape_message(dynamic, dict(shapes or {}), exc)) from exc
        raise ConversionError(f"LiteRT cannot prepare the model: {_litert_text(exc)}. The artifact loads but one of its "
                              "ops refuses its tensors; convert again, or report it with the model.") from exc
    return itp


def _resize_inputs(itp: Any, shapes: Mapping[str, tuple[int, ...]]) -> None:
    sigs = itp.get_signature_list()
    if not sigs:
        return
    details = itp.get_signature_runner(next(iter(sigs))).get_input_details()
    for name, shape in shapes.items():
        if name in details and tuple(details[name]["shape"]) != tuple(shape):
            itp.resize_tensor_input(details[name]["index"], list(shape))


def _dynamic_inputs(itp: Any) -> dict[str, tuple[int, ...]]:
    """Input name -> shape signature (-1 = dynamic), for the inputs with a dynamic dimension."""
    sigs = itp.get_signature_list()
    details = (itp.get_signature_runner(next(iter(sigs))).get_input_details() if sigs
               else {d["name"]: d for d in itp.get_input_details()})  # signature names: what the data is keyed by
    out = {}
    for name, d in details.items():
        sig = tuple(int(v) for v in d.get("shape_signature", d["shape"]))
        if any(v < 0 for v in sig):
            out[name] = sig
    return out


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
    """Batched inference through the model's signature, float in / float out whatever the artifact's I/O.

    Data the artifact cannot take is refused with a DataError naming the input, what it expects and the fix: strings,
    float values for an integer input (token ids), ids beyond an embedding table, a size a dynamic input's ops do not
    accept. Other LiteRT failures are a ConversionError with LiteRT's reason and the shapes fed."""

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
        raw = self._runner.get_input_details()
        self.inputs = [_detail(k, v) for k, v in raw.items()]
        self.input_shapes = {k: tuple(int(d) for d in v.get("shape_signature", v["shape"])) for k, v in raw.items()}
        details = {k: _detail(k, v) for k, v in self._runner.get_output_details().items()}
        if output_order is not None and set(output_order) == set(details):
            self.outputs = [details[n] for n in output_order]
        else:
            self.outputs = sorted(details.values(), key=lambda d: _natural(d.name))
        self._batching = True
        self._tables: dict[str, list[LookupTable]] | None = None
        self._fed: dict[str, tuple[int, ...]] = {}  # shapes of the last batch fed (dynamic models: for the probes)

    def run(self, inputs: dict[str, np.ndarray], batch_size: int = 64) -> list[np.ndarray]:
        missing = [d.name for d in self.inputs if d.name not in inputs]
        if missing:
            raise DataError(f"no data for input(s) {missing}: the artifact's inputs are {[d.name for d in self.inputs]}, "
                            f"the data has {sorted(map(str, inputs))}.")
        arrays = {d.name: self._checked(d, inputs[d.name]) for d in self.inputs}
        n = len(arrays[self.inputs[0].name]) if self.inputs else 0
        chunks: list[list[np.ndarray]] = []
        for start in range(0, n, batch_size if self._batching else 1):
            stop = min(n, start + (batch_size if self._batching else 1))
            feed = {d.name: self._feed(d, arrays[d.name][start:stop]) for d in self.inputs}
            try:
                out = self._runner(**feed)
            except (ValueError, RuntimeError) as exc:
                if not self._batching or stop - start == 1:
                    raise self._explain(exc, feed, start) from exc
                self._batching = False  # the graph fixes the batch size: fall back to one sample at a time
                return self.run(inputs, batch_size)
            self._fed = {k: (1, *v.shape[1:]) for k, v in feed.items()}
            chunks.append([d.dequantize(out[d.name]) for d in self.outputs])
        if not chunks:
            raise DataError("no samples to run: the data is empty.")
        return [np.concatenate([c[i] for c in chunks]) for i in range(len(self.outputs))]

    def _checked(self, d: IODetail, x: Any) -> np.ndarray:
        """The data for input `d` as an array the artifact can take, or a DataError saying why not."""
        want = f"{d.dtype} of shape {_fmt(self.input_shapes.get(d.name, ()))}"
        if d.dtype.kind in "OSU":
            raise DataError(f"artifact input {d.name!r} takes strings; edgemp feeds numeric arrays. Move the string "
                            "processing (tokenizer, lookup) out of the model, into the app, and feed token ids.")
        try:
            arr = np.asarray(x)
        except Exception as exc:
            raise DataError(f"the data for input {d.name!r} is not a regular array ({exc}); it takes {want}.") from None
        if arr.dtype.kind not in "fiub":
            got = "strings" if arr.dtype.kind in "US" else f"dtype {arr.dtype}"
            raise DataError(f"the data for input {d.name!r} holds {got}; it takes {want}.")
        if arr.ndim == 0:
            raise DataError(f"the data for input {d.name!r} is a scalar; it takes a batch: {want}.")
        if d.dtype.kind in "iu" and not d.quantized:
            return self._integer(d, arr, want)
        if arr.size and arr.dtype.kind == "f":
            finite = np.isfinite(arr)
            if not finite.all():
                raise DataError(f"the data for input {d.name!r} holds {int(arr.size - finite.sum())} NaN/Inf value(s); "
                                "clean or drop those samples.")
            if np.finfo(arr.dtype).max > np.finfo(np.float32).max and np.abs(arr).max() > np.finfo(np.float32).max:
                raise DataError(f"the data for input {d.name!r} holds values beyond float32 (e.g. {np.abs(arr).max():.4g}); "
                                "rescale the data.")
        return arr

    def _integer(self, d: IODetail, arr: np.ndarray, want: str) -> np.ndarray:
        """Integer (not quantized) inputs carry ids or indices: whole numbers in the dtype's range, below the size
        of any table they index."""
        if arr.size and arr.dtype.kind == "f":
            if not np.isfinite(arr).all():
                raise DataError(f"input {d.name!r} takes integers ({want}) but the data holds NaN/Inf.")
            frac = arr != np.round(arr)
            if frac.any():
                unit = " (all in 0..1: normalised values, or the random inputs used when no data is given?)" if (
                    arr.min() >= 0 and arr.max() < 1) else ""
                raise DataError(f"input {d.name!r} takes integers ({want}), e.g. token ids, but the data holds non-integer "
                                f"floats such as {float(arr[frac].flat[0]):g}{unit}: pass the integer ids (not "
                                "embeddings, scores or normalised values) as validation data.")
        if not arr.size:
            return arr
        info = np.iinfo(d.dtype)
        lo, hi = float(arr.min()), float(arr.max())
        if lo < info.min or hi > info.max:
            raise DataError(f"input {d.name!r} takes {d.dtype} but the data holds values {lo:.6g}..{hi:.6g}, outside "
                            f"{info.min}..{info.max}.")
        if self._tables is None:
            self._tables = lookup_tables(self.model)
        for table in self._tables.get(d.name, []):
            if hi >= table.rows:
                raise DataError(_token_message(d.name, arr, table))
        return arr

    def _feed(self, d: IODetail, x: np.ndarray) -> np.ndarray:
        if d.quantized or d.dtype.kind == "f":
            return d.quantize(np.asarray(x, np.float32))
        return np.asarray(x).astype(d.dtype)

    def _explain(self, exc: BaseException, feed: Mapping[str, np.ndarray], start: int) -> EdgempError:
        """LiteRT's failure on a batch, as a typed error naming the input, what it expects and the fix."""
        text = _litert_text(exc)
        fed = ", ".join(f"{k} {tuple(v.shape)} {v.dtype}" for k, v in feed.items())
        dynamic = {k: s for k, s in self.input_shapes.items() if any(v < 0 for v in s)}
        ints = {k: v for k, v in feed.items() if v.dtype.kind in "iu" and v.size}
        low = text.lower()
        if "out of bound" in low or ("index" in low and ints):
            ranges = ", ".join(f"{k!r} {int(v.min())}..{int(v.max())}" for k, v in ints.items()) or "none"
            return DataError(f"the artifact failed on samples {start}..{start + len(next(iter(feed.values()))) - 1}: "
                             f"{text}. An index computed from the inputs is out of range: integer inputs hold {ranges}; "
                             "check token ids against the vocabulary size (and that no id is negative), and class or "
                             "position indices against their tables.")
        if dynamic and any(tuple(v.shape[1:]) != tuple(self.input_shapes[k][1:]) for k, v in feed.items()
                           if k in dynamic):
            return DataError(_shape_message(dynamic, {k: tuple(v.shape) for k, v in feed.items()}, exc))
        if isinstance(exc, ValueError):
            want = ", ".join(f"{d.name!r} {d.dtype} {_fmt(self.input_shapes.get(d.name, ()))}" for d in self.inputs)
            return DataError(f"the artifact refused the inputs ({fed}): {text}. It takes {want}.")
        return ConversionError(f"LiteRT failed to run the artifact on inputs {fed}: {text}. The inputs match its "
                               "signature, so the artifact itself cannot run them: convert again, or report it with "
                               "the model.")

    def delegate_report(self) -> list[dict[str, Any]]:
        """Which delegates run the graph and how many nodes each takes (each probed on its own)."""
        rows = []
        shapes = self._fed or None  # dynamic dims: probe at the size validated
        if self.opts.xnnpack:
            taken, total = delegated_nodes(make_interpreter(self.model, self.opts, xnnpack=True, shapes=shapes))
            rows.append({"name": "XNNPACK", "path": None, "loaded": True, "nodes": taken, "total_nodes": total})
        for spec, delegate in zip(self.opts.delegates, self._delegates, strict=True):
            taken, total = delegated_nodes(make_interpreter(self.model, self.opts, [delegate], xnnpack=False,
                                                            shapes=shapes))
            rows.append({"name": os.path.basename(spec.path), "path": spec.path, "options": dict(spec.options),
                         "loaded": True, "nodes": taken, "total_nodes": total})
        return rows

    def latency(self, sample: dict[str, np.ndarray]) -> dict[str, Any]:
        """Median/p90 of single-sample invokes (batch 1, as on the device), after warm-up. latency_runs=0: not
        measured (the times are None, never NaN)."""
        if self.opts.latency_runs <= 0:
            return {"median_ms": None, "p90_ms": None, "mean_ms": None, "runs": 0, "warmup_runs": 0,
                    "threads": self.opts.num_threads, "xnnpack": self.opts.xnnpack}
        feed = {d.name: self._feed(d, self._checked(d, sample[d.name])[:1]) for d in self.inputs}
        itp = make_interpreter(self.model, self.opts, self._delegates, shapes={k: v.shape for k, v in feed.items()})
        runner_inputs = self._runner.get_input_details()
        try:
            for d in self.inputs:
                itp.set_tensor(runner_inputs[d.name]["index"], feed[d.name])
            itp.invoke()  # one checked run before timing
        except (ValueError, RuntimeError) as exc:
            raise self._explain(exc, feed, 0) from exc
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
