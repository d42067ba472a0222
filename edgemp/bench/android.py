"""Benchmark on an Android phone over adb with LiteRT's official tools, parsed into the harness's result format.

Two tools, two output formats:
- the command-line `benchmark_model` binary (pushed to /data/local/tmp, run with `adb shell`, prints to stdout,
  lines optionally prefixed with `INFO: `);
- the benchmark APK (`org.tensorflow.lite.benchmark`, started with `am start`, logs to logcat under the `tflite`
  tag, every line prefixed with logcat's date, pids and level).
Every adb call has a timeout, so a missing phone or a stuck tool is an error, never a hang.
"""

from __future__ import annotations

import hashlib
import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from edgemp.bench import BenchResult
from edgemp.bench.harness import SCHEMA
from edgemp.errors import DeviceError, InputError, ModelLoadError

REMOTE_DIR = "/data/local/tmp/edgemp"
APK_PACKAGE = "org.tensorflow.lite.benchmark"
APK_ACTIVITY = f"{APK_PACKAGE}/.BenchmarkModelActivity"
_LOGCAT = re.compile(r"^\d\d-\d\d \d\d:\d\d:\d\d\.\d+\s+\d+\s+\d+\s+[VDIWEF]\s+tflite\s*:\s?")
_LEVEL = re.compile(r"^(?:INFO|WARNING|ERROR|VERBOSE): ")
_NUM = r"([-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)"


def parse_benchmark_output(text: str) -> dict[str, Any]:
    """One result entry (harness format) from benchmark_model's stdout or the benchmark APK's logcat."""
    fmt = "benchmark_apk" if any(_LOGCAT.match(line) for line in text.splitlines()) else "benchmark_model"
    lines = [_LEVEL.sub("", _LOGCAT.sub("", line)).strip() for line in text.replace("\r", "").splitlines()]
    summary = next((m for line in lines if (m := re.match(
        rf"Inference timings in us: Init: {_NUM}, First inference: {_NUM}, Warmup \(avg\): {_NUM}, "
        rf"Inference \(avg\): {_NUM}", line))), None)
    if summary is None:
        tail = "\n".join(line for line in lines if line)[-800:]
        raise DeviceError(f"the benchmark did not finish (no 'Inference timings' line); its last output:\n{tail}")
    runs = [dict(re.findall(rf"(\w+)={_NUM}", line)) for line in lines if line.startswith("count=")]
    timed = runs[-1] if runs else {}
    us = {k: float(v) for k, v in timed.items()}

    def ms(key: str) -> float | None:
        return us[key] / 1e3 if key in us else None

    latency = {"count": int(us["count"]) if "count" in us else None, "mean": float(summary.group(4)) / 1e3,
               "std": ms("std"), "min": ms("min"), "max": ms("max"), "p50": ms("median"), "p90": None, "p99": None,
               "p5": ms("p5"), "p95": ms("p95")}
    found = {k: _find(lines, pattern) for k, pattern in {
        "size_mb": rf"The input model file size \(MB\): {_NUM}",
        "graph": r"Graph: \[(.*)\]", "threads": r"Num threads: \[(\d+)\]",
        "mem": rf"(?:Memory footprint delta from the start of the tool|Peak memory footprint) \(MB\): init={_NUM} overall={_NUM}",
        "peak": rf"Overall peak memory footprint \(MB\) via periodic monitoring: {_NUM}",
    }.items()}
    replaced = [re.search(r"Replacing (\d+)(?: out of (\d+))? node\(s\) with delegate \(([^)]*)\) node, "
                          r"yielding (\d+) partitions", line) for line in lines]
    split = _find(lines, r"(\d+) operations will run on the GPU, and the remaining (\d+) operations? will run on the CPU")
    gpu_total = int(split.group(1)) + int(split.group(2)) if split else None  # older tools omit "out of N"
    delegates = [{"name": m.group(3), "nodes": int(m.group(1)),
                  "total_nodes": int(m.group(2)) if m.group(2) else gpu_total, "partitions": int(m.group(4))}
                 for m in replaced if m]
    mem = found["mem"]
    return {
        "model": Path(found["graph"].group(1)).name if found["graph"] else None,
        "path": found["graph"].group(1) if found["graph"] else None,
        "size_bytes": round(float(found["size_mb"].group(1)) * 1024 * 1024) if found["size_mb"] else None,
        "init_ms": float(summary.group(1)) / 1e3, "first_inference_ms": float(summary.group(2)) / 1e3,
        "warmup_avg_ms": float(summary.group(3)) / 1e3, "warmup_runs": int(float(runs[0]["count"])) if len(runs) > 1 else None,
        "latency_ms": latency,
        "memory": {"peak_rss_mb": float(found["peak"].group(1)) if found["peak"] else None,
                   "init_delta_mb": float(mem.group(1)) if mem else None,
                   "overall_delta_mb": float(mem.group(2)) if mem else None,
                   "method": "benchmark_model memory footprint (approximate, as the tool says)"},
        "delegation": {"delegates": delegates,
                       "delegated_nodes": sum(d["nodes"] for d in delegates) if delegates else None,
                       "total_nodes": max((d["total_nodes"] for d in delegates if d["total_nodes"]), default=None)},
        "threads": int(found["threads"].group(1)) if found["threads"] else None,
        "tool": fmt,
    }


def _find(lines: list[str], pattern: str) -> re.Match[str] | None:
    return next((m for line in lines if (m := re.search(pattern, line))), None)


def benchmark_command(remote_model: str, *, binary: str = f"{REMOTE_DIR}/benchmark_model", threads: int = 1,
                      warmup: int = 10, runs: int | None = 50, time_budget: float | None = None, xnnpack: bool = True,
                      use_gpu: bool = False, use_nnapi: bool = False, delegate: str | None = None,
                      delegate_options: Mapping[str, str] | None = None, cpu_mask: str | None = None,
                      extra_args: Sequence[str] = ()) -> list[str]:
    """The benchmark_model argument list (the binary first; the APK takes the flags after it)."""
    args = [binary, f"--graph={remote_model}", f"--num_threads={threads}", f"--warmup_runs={warmup}",
            f"--use_xnnpack={'true' if xnnpack else 'false'}"]
    if runs is not None:
        args.append(f"--num_runs={runs}")
    if time_budget is not None:  # at least the budget when runs are not given, never more than it
        args += ([] if runs is not None else ["--num_runs=1", f"--min_secs={time_budget:g}"]) + [f"--max_secs={time_budget:g}"]
    args += ["--use_gpu=true"] if use_gpu else []
    args += ["--use_nnapi=true"] if use_nnapi else []
    if delegate:
        args.append(f"--external_delegate_path={delegate}")
        if delegate_options:
            args.append("--external_delegate_options=" + ";".join(f"{k}:{v}" for k, v in delegate_options.items()))
    args += list(extra_args)
    if cpu_mask:
        if not re.fullmatch(r"(0x)?[0-9a-fA-F]+", cpu_mask):
            raise InputError(f"--cpu-mask is a hexadecimal CPU mask for taskset (e.g. f0 = CPUs 4-7), got {cpu_mask!r}")
        args = ["taskset", cpu_mask.removeprefix("0x"), *args]
    return args


class Adb:
    """adb with a serial and a timeout on every call."""

    def __init__(self, adb: str = "adb", serial: str | None = None, timeout: float = 60) -> None:
        exe = shutil.which(adb)
        if exe is None:
            raise DeviceError(f"adb not found ({adb!r} is not on PATH): install Android platform-tools and put adb on "
                              "PATH, or pass --adb-path")
        self.exe, self.timeout = exe, timeout
        self.serial: str | None = None  # `adb devices` runs without one
        self.serial = serial or self._only_device()

    def __call__(self, *args: str, timeout: float | None = None, check: bool = True) -> str:
        cmd = [self.exe, *(["-s", self.serial] if self.serial else []), *args]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout or self.timeout,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            raise DeviceError(f"`{shlex.join(cmd)}` did not answer within {timeout or self.timeout:g} s; check the device "
                              "is connected and awake (adb devices), or raise the timeout") from exc
        if check and proc.returncode != 0:
            raise DeviceError(f"`{shlex.join(cmd)}` failed (exit {proc.returncode}): "
                              f"{(proc.stderr or proc.stdout).strip()[-600:]}")
        return proc.stdout

    def _only_device(self) -> str:
        out = self("devices", timeout=20)
        rows = [line.split()[:2] for line in out.splitlines()[1:] if line.strip() and not line.startswith("*")]
        ready = [s for s, state in rows if state == "device"]
        if not rows:
            raise DeviceError("no Android device connected (adb devices lists none): connect a phone with USB debugging "
                              "enabled, or start an emulator")
        if not ready:
            states = ", ".join(f"{s} ({state})" for s, state in rows)
            raise DeviceError(f"no usable Android device: {states}. Accept the USB debugging prompt on the phone "
                              "(unauthorized) or reconnect it (offline)")
        if len(ready) > 1:
            raise DeviceError(f"several devices are connected ({', '.join(ready)}); pick one with --serial")
        return ready[0]

    def props(self) -> dict[str, Any]:
        keys = ["ro.product.manufacturer", "ro.product.model", "ro.soc.model", "ro.board.platform",
                "ro.build.version.release", "ro.build.version.sdk", "ro.product.cpu.abi"]
        out = self("shell", "; ".join(f"getprop {k}" for k in keys) + "; nproc; grep -m1 -i '^features' /proc/cpuinfo",
                   check=False).splitlines()
        vals = dict(zip(keys + ["nproc", "features"], [v.strip() for v in out] + [""] * (len(keys) + 2)))
        flags = set(vals["features"].partition(":")[2].split())
        return {"cpu_model": vals["ro.soc.model"] or vals["ro.board.platform"] or None,
                "board": f"{vals['ro.product.manufacturer']} {vals['ro.product.model']}".strip() or None,
                "machine": vals["ro.product.cpu.abi"] or None,
                "cores": int(vals["nproc"]) if vals["nproc"].isdigit() else None,
                "int8_dot_product": bool(flags & {"asimddp", "i8mm"}) if flags else None,
                "cpu_flags_of_note": sorted(flags & {"asimddp", "i8mm", "asimdhp", "sve"}),
                "os": f"Android {vals['ro.build.version.release']} (API {vals['ro.build.version.sdk']})",
                "serial": self.serial}


def benchmark_android(
    models: Sequence[str | Path], *, benchmark_binary: str | Path | None = None, benchmark_apk: str | Path | None = None,
    serial: str | None = None, adb: str = "adb", threads: int = 1, warmup: int = 10, runs: int | None = 50,
    time_budget: float | None = None, xnnpack: bool = True, use_gpu: bool = False, use_nnapi: bool = False,
    delegate: str | Path | None = None, delegate_options: Mapping[str, str] | None = None, cpu_mask: str | None = None,
    extra_args: Sequence[str] = (), timeout: float = 600,
) -> BenchResult:
    """Push each model (and the tool) to the phone, run LiteRT's benchmark there, parse its output.

    Example:
        >>> r = benchmark_android(["dist/m_int8.tflite"], benchmark_binary="android_aarch64_benchmark_model",
        ...                       threads=4, cpu_mask="f0")
    """
    if (benchmark_binary is None) == (benchmark_apk is None):
        raise DeviceError("--adb needs exactly one of --benchmark-binary PATH (LiteRT's benchmark_model built for the "
                          "phone's ABI, e.g. android_aarch64_benchmark_model) or --benchmark-apk PATH (the benchmark "
                          "APK); both are published with LiteRT's performance-measurement docs")
    tool = Path(benchmark_binary or benchmark_apk)  # type: ignore[arg-type]
    if not tool.is_file():
        raise DeviceError(f"benchmark tool {tool} does not exist; download LiteRT's benchmark_model for the phone's ABI")
    paths = [Path(m) for m in models]
    for p in paths:
        if not p.is_file():
            raise ModelLoadError(f"model {p} does not exist or is not a file")
    dev = Adb(adb, serial)
    # the APK runs as an app and reads models from /data/local/tmp; the binary runs from our own folder
    remote_dir = "/data/local/tmp" if benchmark_apk else REMOTE_DIR
    dev("shell", f"mkdir -p {remote_dir}")
    remote_delegate = None
    if delegate:
        remote_delegate = f"{REMOTE_DIR}/{Path(delegate).name}"
        dev("push", str(delegate), remote_delegate)
    if benchmark_binary:
        dev("push", str(tool), f"{REMOTE_DIR}/benchmark_model")
        dev("shell", f"chmod 755 {REMOTE_DIR}/benchmark_model")
    else:
        dev("install", "-r", "-d", "-g", str(tool), timeout=180)
    results = []
    for p in paths:
        remote = f"{remote_dir}/{p.name}"
        dev("push", str(p), remote)
        args = benchmark_command(remote, threads=threads, warmup=warmup, runs=runs, time_budget=time_budget,
                                 xnnpack=xnnpack, use_gpu=use_gpu, use_nnapi=use_nnapi, delegate=remote_delegate,
                                 delegate_options=delegate_options, cpu_mask=None if benchmark_apk else cpu_mask,
                                 extra_args=extra_args)
        if benchmark_binary:
            out = dev("shell", shlex.join(args) + " 2>&1", timeout=timeout, check=False)
        else:
            out = _run_apk(dev, args[1:], timeout)
        r = parse_benchmark_output(out)
        data = p.read_bytes()
        r |= {"model": p.name, "local_path": str(p.resolve()), "path": remote, "size_bytes": len(data),
              "sha256": hashlib.sha256(data).hexdigest(), "command": args, "raw_output": out}
        results.append(r)
    return BenchResult({"schema": SCHEMA, "tool": "benchmark_apk" if benchmark_apk else "benchmark_model",
                        "device": dev.props(),
                        "options": {"threads": threads, "warmup_runs": warmup, "runs": runs, "time_budget_s": time_budget,
                                    "xnnpack": xnnpack, "use_gpu": use_gpu, "use_nnapi": use_nnapi,
                                    "delegates": [str(delegate)] if delegate else [], "cpu_mask": cpu_mask},
                        "results": results})


def _run_apk(dev: Adb, flags: list[str], timeout: float, poll: float = 2.0) -> str:
    """Start the benchmark activity, then read logcat until its summary line appears (or the timeout passes)."""
    dev("logcat", "-c")
    dev("shell", f"am start -S -n {APK_ACTIVITY} --es args {shlex.quote(' '.join(flags))}")
    deadline = time.monotonic() + timeout
    while True:
        log = dev("logcat", "-d", "-s", "tflite", check=False)
        if "Inference timings in us" in log or time.monotonic() > deadline:
            return log
        time.sleep(poll)
