#!/usr/bin/env python3
"""edgemp benchmark harness: one file, needs only numpy and ai_edge_litert (or tflite_runtime).

Copy it onto the device beside the model and run it there, where latency means something:

    python3 harness.py model_int8.tflite [model_fp32.tflite ...] --threads 4 --runs 100 --json bench.json

It measures what an app pays: interpreter creation (init), the first inference, then warm-up and timed runs
(mean/std/min/p50/p90/p99), the peak resident memory while the model is loaded and run, how many nodes the
delegates took, and the facts of the device (CPU, cores, int8 dot-product support, OS, runtime versions).
Several models give a comparison table, each model measured in turn in this one process.

It deliberately imports nothing but the standard library, numpy and the LiteRT runtime: `edgemp bench` runs this
same file on the host, and device bundles ship a copy of it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time
from typing import Any

import numpy as np

SCHEMA = "edgemp-bench/1"
EXIT_INPUT, EXIT_DELEGATE, EXIT_RUNTIME = 2, 5, 6


class HarnessError(Exception):
    """A problem with what the harness was given; `kind` lets callers map it to their own error types."""

    kind = "input"
    exit_code = EXIT_INPUT


class NotTFLiteError(HarnessError):
    kind = "not_tflite"


class DelegateLoadError(HarnessError):
    kind = "delegate"
    exit_code = EXIT_DELEGATE


class RuntimeMissingError(HarnessError):
    kind = "runtime"
    exit_code = EXIT_RUNTIME


# -- runtime ---------------------------------------------------------------------------------------------------
def litert() -> tuple[Any, str, str]:
    """(interpreter module, distribution name, version): ai_edge_litert, else the legacy tflite_runtime."""
    from importlib import metadata

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    for module, dist in (("ai_edge_litert.interpreter", "ai-edge-litert"), ("tflite_runtime.interpreter", "tflite-runtime")):
        try:
            mod = __import__(module, fromlist=["Interpreter"])
        except ImportError:
            continue
        try:
            version = metadata.version(dist)
        except metadata.PackageNotFoundError:
            version = "unknown"
        return mod, dist, version
    raise RuntimeMissingError("no LiteRT runtime: pip install ai-edge-litert (or tflite-runtime where that is all "
                              "the device has; see requirements.txt)")


def check_tflite(data: bytes, name: str) -> None:
    """Refuse what is not a TFLite flatbuffer before the runtime sees it (a truncated file can crash it)."""
    if len(data) < 16 or data[4:8] != b"TFL3":
        raise NotTFLiteError(f"{name} is not a TFLite model (no 'TFL3' flatbuffer identifier); pass a .tflite file")
    root = int.from_bytes(data[:4], "little")
    if root + 4 > len(data):
        raise NotTFLiteError(f"{name} is truncated or corrupt: its root table lies past the end of the file "
                             f"({len(data)} bytes); copy the model again")


def check_delegate_library(path: str) -> None:
    """Refuse a library that is not an external delegate before LiteRT half-constructs one from it."""
    import ctypes

    if not os.path.exists(path):
        raise DelegateLoadError(f"delegate library {path} does not exist; check the path")
    try:
        lib = ctypes.CDLL(path)
    except OSError as exc:
        raise DelegateLoadError(f"delegate {path} failed to load as a shared library: {exc}") from exc
    if not hasattr(lib, "tflite_plugin_create_delegate"):
        raise DelegateLoadError(f"delegate {path} failed to load: it is not a TFLite external delegate (no "
                                "tflite_plugin_create_delegate symbol). Pass the delegate's plugin library "
                                "(e.g. libedgetpu.so.1, libQnnTFLiteDelegate.so)")


def load_delegate(path: str, options: dict[str, str] | None = None) -> Any:
    """An external delegate, or DelegateLoadError: never a silent fallback to the CPU."""
    check_delegate_library(path)
    lib = litert()[0]
    try:
        return lib.load_delegate(path, dict(options or {}) or None)
    except (ValueError, RuntimeError, OSError) as exc:
        raise DelegateLoadError(f"delegate {path} failed to load: {str(exc).strip().splitlines()[-1]}. Check it is a "
                                "TFLite external delegate built for this platform and that its options are valid") from exc


def delegated_nodes(itp: Any) -> tuple[int, int]:
    """(nodes taken by delegates, original nodes)."""
    taken, original = delegated_node_indices(itp)
    return len(taken), len(original)


def delegated_node_indices(itp: Any) -> tuple[set[int], list[dict[str, Any]]]:
    """(indices of the nodes delegates took, the original nodes): walk each DELEGATE node's partition back to its
    inputs."""
    ops = itp._get_ops_details()
    original = [o for o in ops if o["op_name"] != "DELEGATE"]
    producer = {t: o["index"] for o in original for t in o["outputs"]}
    taken: set[int] = set()
    for d in (o for o in ops if o["op_name"] == "DELEGATE"):
        boundary, stack, seen = set(d["inputs"]), list(d["outputs"]), set()
        while stack:
            t = stack.pop()
            if t in boundary or t in seen or t not in producer:
                continue
            seen.add(t)
            taken.add(producer[t])
            stack.extend(i for i in ops[producer[t]]["inputs"] if i >= 0)
    return taken, original


def interpreter(data: bytes, threads: int, xnnpack: bool, delegates: list[Any]) -> Any:
    lib = litert()[0]
    kwargs: dict[str, Any] = {"model_content": data, "num_threads": threads, "experimental_delegates": delegates or None}
    if hasattr(lib, "OpResolverType"):
        kwargs["experimental_op_resolver_type"] = (lib.OpResolverType.AUTO if xnnpack
                                                   else lib.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    elif not xnnpack:
        raise HarnessError("this runtime cannot switch XNNPACK off (no OpResolverType); drop --no-xnnpack")
    try:
        itp = lib.Interpreter(**kwargs)
        itp.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        raise NotTFLiteError(f"the runtime cannot load the model: {str(exc).strip().splitlines()[-1]}") from exc
    return itp


# -- inputs ----------------------------------------------------------------------------------------------------
def _io(d: dict[str, Any]) -> dict[str, Any]:
    scale, zp = d.get("quantization", (0.0, 0))
    return {"name": d["name"], "shape": [int(x) for x in d.get("shape_signature", d["shape"])],
            "dtype": np.dtype(d["dtype"]).name, "scale": float(scale) if scale else None,
            "zero_point": int(zp) if scale else None}


def random_inputs(details: list[dict[str, Any]], seed: int, value_range: tuple[float, float] | None) -> list[np.ndarray]:
    """One sample per input: integers over the whole quantized range (every value is valid after calibration),
    floats uniform in [0, 1) unless a range is given."""
    rng = np.random.default_rng(seed)
    out = []
    for d in details:
        dt, shape = np.dtype(d["dtype"]), tuple(int(x) for x in d["shape"])
        if dt == np.bool_:
            out.append(rng.integers(0, 2, shape).astype(bool))
        elif dt.kind in "iu":
            if value_range:
                lo, hi = int(value_range[0]), int(value_range[1])
            elif dt.itemsize <= 2:  # quantized activations: the whole range
                lo, hi = int(np.iinfo(dt).min), int(np.iinfo(dt).max)
            else:  # int32/int64 inputs are usually indices or ids: small non-negative values
                lo, hi = 0, 9
            out.append(rng.integers(lo, hi + 1, shape).astype(dt))
        else:
            lo, hi = value_range or (0.0, 1.0)
            out.append((lo + (hi - lo) * rng.random(shape)).astype(dt))
    return out


def file_inputs(path: str, details: list[dict[str, Any]]) -> list[list[np.ndarray]]:
    """Samples from .npy (one input) or .npz (keys = input names, else arr_0...), float data quantized with the
    input's scale/zero-point. Returns one list of arrays per sample; runs cycle through them."""
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise HarnessError(f"cannot read inputs from {path}: {exc}; pass a .npy or .npz file") from exc
    if isinstance(loaded, np.ndarray):
        arrays = [loaded]
    else:
        keys = list(loaded.keys())
        by_name = [next((k for k in keys if k == d["name"] or d["name"].endswith(":" + k) or
                         d["name"].split(":")[0].endswith(k)), None) for d in details]
        arrays = [loaded[k] for k in (by_name if all(by_name) else keys)]
    if len(arrays) != len(details):
        raise HarnessError(f"{path} holds {len(arrays)} array(s) but the model has {len(details)} input(s)")
    per_input = []
    for d, a in zip(details, arrays):
        shape = tuple(int(x) for x in d["shape"])
        if a.shape == shape[1:]:
            a = a[None]
        if a.shape[1:] != shape[1:]:
            raise HarnessError(f"inputs for {d['name']} have shape {a.shape[1:]} per sample, the model wants {shape[1:]}")
        dt = np.dtype(d["dtype"])
        scale, zp = d.get("quantization", (0.0, 0))
        if dt.kind in "iu" and a.dtype.kind == "f" and scale:
            info = np.iinfo(dt)
            a = np.clip(np.round(a / scale + zp), info.min, info.max)
        per_input.append(a.astype(dt))
    n = min(len(a) for a in per_input)
    return [[a[i : i + 1] for a in per_input] for i in range(n)]


# -- measurement -----------------------------------------------------------------------------------------------
def _proc_status(key: str) -> float | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024.0  # kB -> MB
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    try:  # Linux >= 4.0: writing 5 resets VmHWM to the current RSS, so each model gets its own peak
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _peak_rss_process() -> float:
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0


def stats(times_ms: list[float]) -> dict[str, Any]:
    a = np.asarray(times_ms, dtype=np.float64)
    return {"count": int(a.size), "mean": float(a.mean()), "std": float(a.std()), "min": float(a.min()),
            "max": float(a.max()), "p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)),
            "p99": float(np.percentile(a, 99))}


def bench_model(path: str, *, threads: int = 1, warmup: int = 10, runs: int | None = 50, time_budget: float | None = None,
                xnnpack: bool = True, delegates: list[tuple[str, dict[str, str]]] = (),  # type: ignore[assignment]
                inputs: str | None = None, seed: int = 0, value_range: tuple[float, float] | None = None) -> dict[str, Any]:
    """Measure one model. `runs` and `time_budget` both bound the timed loop (whichever comes first)."""
    if runs is None and time_budget is None:
        raise HarnessError("give --runs, --time-budget or both")
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise HarnessError(f"cannot read model {path}: {exc.strerror}") from exc
    check_tflite(data, path)
    per_model_peak = _reset_peak_rss()
    rss_before = _proc_status("VmRSS")
    t0 = time.perf_counter()
    loaded = [load_delegate(p, o) for p, o in delegates]
    itp = interpreter(data, threads, xnnpack, loaded)
    init_ms = (time.perf_counter() - t0) * 1e3
    in_details = itp.get_input_details()
    for d in in_details:  # dynamic dimensions (-1): batch 1
        sig = list(d.get("shape_signature", d["shape"]))
        if any(x < 0 for x in sig):
            if any(x < 0 for x in sig[1:]) and inputs is None:
                raise HarnessError(f"input {d['name']} has dynamic dimensions {sig}; pass --inputs with real samples")
            itp.resize_tensor_input(d["index"], [1 if x < 0 else x for x in sig])
    itp.allocate_tensors()
    in_details = itp.get_input_details()
    samples = file_inputs(inputs, in_details) if inputs else [random_inputs(in_details, seed, value_range)]

    def feed(i: int) -> None:
        for d, x in zip(in_details, samples[i % len(samples)]):
            itp.set_tensor(d["index"], x)

    feed(0)
    t = time.perf_counter()
    itp.invoke()
    first_ms = (time.perf_counter() - t) * 1e3
    for i in range(warmup):
        feed(i)
        itp.invoke()
    times: list[float] = []
    start = time.perf_counter()
    while (runs is None or len(times) < runs) and (time_budget is None or time.perf_counter() - start < time_budget):
        feed(len(times))
        t = time.perf_counter()
        itp.invoke()
        times.append((time.perf_counter() - t) * 1e3)
    outputs = [np.asarray(itp.get_tensor(d["index"])) for d in itp.get_output_details()]
    try:
        taken, total = delegated_nodes(itp)
    except (AttributeError, KeyError, IndexError):  # runtimes without op details
        taken = total = None
    peak = _proc_status("VmHWM") if per_model_peak else None
    return {
        "model": os.path.basename(path), "path": os.path.abspath(path), "size_bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "inputs": [_io(d) for d in in_details], "outputs": [_io(d) for d in itp.get_output_details()],
        "init_ms": init_ms, "first_inference_ms": first_ms, "warmup_runs": warmup,
        "latency_ms": stats(times) if times else None, "timed_duration_s": time.perf_counter() - start,
        "memory": {"peak_rss_mb": peak if peak is not None else _peak_rss_process(),
                   "rss_before_load_mb": rss_before,
                   "peak_rss_delta_mb": (peak - rss_before) if peak is not None and rss_before is not None else None,
                   "method": "VmHWM reset per model" if peak is not None else "process peak (ru_maxrss)"},
        "delegation": {"xnnpack": xnnpack, "external": [{"path": p, "options": o, "loaded": True} for p, o in delegates],
                       "delegated_nodes": taken, "total_nodes": total},
        "outputs_finite": bool(all(np.isfinite(o.astype(np.float64)).all() for o in outputs)),
    }


# -- the device ------------------------------------------------------------------------------------------------
def _read(path: str) -> str | None:
    try:
        with open(path, "rb") as fh:
            return fh.read().decode(errors="replace").replace("\x00", "").strip() or None
    except OSError:
        return None


def device_facts(runtime: tuple[str, str] | None = None) -> dict[str, Any]:
    """What the numbers depend on: CPU model and flags (int8 dot product: ARM dotprod/i8mm, x86 VNNI), cores, OS.
    `runtime`: (name, version) of what ran the models (default: the LiteRT runtime)."""
    cpuinfo = _read("/proc/cpuinfo") or ""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        if ":" in line:
            k, v = (s.strip() for s in line.split(":", 1))
            fields.setdefault(k.lower(), v)
    flags = set((fields.get("flags") or fields.get("features") or "").split())
    cpu = fields.get("model name") or fields.get("hardware") or fields.get("cpu model") or fields.get("processor") \
        or platform.processor() or platform.machine()
    meminfo = _read("/proc/meminfo") or ""
    mem = next((int(line.split()[1]) // 1024 for line in meminfo.splitlines() if line.startswith("MemTotal:")), None)
    lib_version = runtime or litert()[1:]
    tegra = _read("/etc/nv_tegra_release")
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = None
    return {
        "cpu_model": cpu, "board": _read("/proc/device-tree/model"), "machine": platform.machine(),
        "cores": os.cpu_count(), "cores_usable": affinity, "memory_mb": mem,
        "int8_dot_product": bool(flags & {"asimddp", "i8mm", "avx512_vnni", "avx_vnni", "avxvnni"}) if flags else None,
        "cpu_flags_of_note": sorted(flags & {"asimddp", "i8mm", "asimdhp", "sve", "avx2", "avx512f", "avx512_vnni",
                                             "avx_vnni", "avxvnni", "fma"}),
        "os": platform.platform(), "jetson_release": tegra.splitlines()[0] if tegra else None,
        "python": platform.python_version(), "numpy": np.__version__,
        "runtime": {"name": lib_version[0], "version": lib_version[1]},
    }


# -- output ----------------------------------------------------------------------------------------------------
def headline(out: dict[str, Any]) -> str:
    """One line above the table: the device and how it was run (harness and adb results alike)."""
    d, o = out["device"], out["options"]
    runtime = d.get("runtime") or {}
    return (f"{d.get('board') or d.get('cpu_model')} ({d.get('machine')}, {d.get('cores')} cores, int8 dot product: "
            f"{d.get('int8_dot_product')}), {out.get('tool')} {runtime.get('name', '')} {runtime.get('version', '')}"
            f"".rstrip() + f", {o['threads']} thread(s)"
            + (f", XNNPACK {'on' if o['xnnpack'] else 'off'}" if "xnnpack" in o else ""))


def table(results: list[dict[str, Any]]) -> str:
    """Plain-text comparison table (the harness stays dependency-free); ratio is p50 against the first model."""
    head = ["model", "size KB", "init ms", "first ms", "p50 ms", "p90 ms", "p99 ms", "mean±std ms", "peak RSS MB",
            "delegated", "p50 ratio"]
    base = results[0]["latency_ms"]["p50"] if results and results[0].get("latency_ms") else None
    rows = []
    for r in results:
        lat, mem, dg = r.get("latency_ms"), r["memory"], r.get("delegation") or {}
        lat = lat or {}
        rows.append([r["model"], _num(r.get("size_bytes"), 1 / 1024, 1), _num(r.get("init_ms")),
                     _num(r.get("first_inference_ms"), digits=3), *(_num(lat.get(k), digits=3) for k in ("p50", "p90", "p99")),
                     f"{lat['mean']:.3f}±{_num(lat.get('std'), digits=3)}" if lat.get("mean") is not None else "-",
                     _num(mem.get("peak_rss_mb"), digits=1),
                     f"{dg['delegated_nodes']}/{dg['total_nodes']}" if dg.get("total_nodes") is not None else "-",
                     f"{lat['p50'] / base:.2f}" if lat.get("p50") and base else "-"])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    fmt = "  ".join("{:<%d}" % w if i == 0 else "{:>%d}" % w for i, w in enumerate(widths))
    return "\n".join([fmt.format(*head), fmt.format(*("-" * w for w in widths))] + [fmt.format(*r) for r in rows])


def _num(x: float | None, factor: float = 1.0, digits: int = 2) -> str:
    return "-" if x is None else f"{x * factor:.{digits}f}"


def _range(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LO,HI (e.g. 0,1), got {text!r}") from None
    return lo, hi


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="harness.py", description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+", help=".tflite files; several give a comparison table")
    p.add_argument("--threads", type=int, default=1, help="interpreter threads (default 1)")
    p.add_argument("--warmup", type=int, default=10, help="untimed runs after the first inference (default 10)")
    p.add_argument("--runs", type=int, default=None, help="timed runs (default 50 without --time-budget)")
    p.add_argument("--time-budget", type=float, default=None, help="seconds of timed runs per model")
    p.add_argument("--no-xnnpack", action="store_true", help="run without the default XNNPACK delegate")
    p.add_argument("--delegate", action="append", default=[], help="external delegate library (.so); repeatable")
    p.add_argument("--delegate-option", action="append", default=[], metavar="KEY=VALUE",
                   help="option passed to every --delegate; repeatable")
    p.add_argument("--inputs", help=".npy/.npz with real input samples (default: random values in each input's range)")
    p.add_argument("--input-range", type=_range, help="LO,HI for random float inputs (default 0,1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cpus", help="pin to these CPUs, e.g. 4-7 or 0,2 (Linux)")
    p.add_argument("--json", dest="json_path", help="write the JSON result here ('-' for stdout)")
    args = p.parse_args(argv)
    if args.runs is None and args.time_budget is None:
        args.runs = 50
    return args


def _cpus(text: str) -> set[int]:
    out: set[int] = set()
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out |= set(range(int(lo), int(hi or lo) + 1))
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, str] = {}
    for kv in args.delegate_option:
        if "=" not in kv:
            raise HarnessError(f"--delegate-option expects KEY=VALUE, got {kv!r}")
        k, v = kv.split("=", 1)
        options[k] = v
    if args.cpus:
        try:
            os.sched_setaffinity(0, _cpus(args.cpus))
        except (AttributeError, OSError, ValueError) as exc:
            raise HarnessError(f"cannot pin to CPUs {args.cpus!r}: {exc}") from exc
    results = [bench_model(m, threads=args.threads, warmup=args.warmup, runs=args.runs, time_budget=args.time_budget,
                           xnnpack=not args.no_xnnpack, delegates=[(d, options) for d in args.delegate],
                           inputs=args.inputs, seed=args.seed, value_range=args.input_range) for m in args.models]
    return {"schema": SCHEMA, "tool": "edgemp-harness", "device": device_facts(),
            "options": {"threads": args.threads, "warmup_runs": args.warmup, "runs": args.runs,
                        "time_budget_s": args.time_budget, "xnnpack": not args.no_xnnpack, "delegates": args.delegate,
                        "delegate_options": options, "inputs": args.inputs or "random", "seed": args.seed,
                        "cpus": args.cpus},
            "results": results}


def emit(out: dict[str, Any], json_path: str | None) -> None:
    """The headline and table on stdout, the JSON written atomically to json_path ('-': the JSON on stdout only)."""
    text = json.dumps(out, indent=2)
    if json_path == "-":
        print(text)
        return
    print(headline(out))
    print(table(out["results"]))
    if json_path:
        tmp = json_path + ".tmp"
        with open(tmp, "w") as fh:
            fh.write(text + "\n")
        os.replace(tmp, json_path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        out = run(args)
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if args.json_path:  # machine-readable too, for callers that map errors to their own types
            print(json.dumps({"error": {"kind": exc.kind, "message": str(exc)}}), file=sys.stderr)
        return exc.exit_code
    emit(out, args.json_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
