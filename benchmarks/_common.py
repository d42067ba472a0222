"""Helpers shared by the benchmark scripts: side-by-side latency and a description of the host CPU."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from edgemp.config import RuntimeOptions
from edgemp.validation.runtime import make_interpreter


def side_by_side_latency(models: dict[str, bytes], sample: np.ndarray, rounds: int, per_round: int = 50) -> dict[str, float]:
    """Interleave the models round by round so machine noise hits all of them alike; median per-invoke ms."""
    opts = RuntimeOptions(num_threads=1)
    itps = {}
    for name, m in models.items():
        itp = make_interpreter(m, opts)
        d = itp.get_input_details()[0]
        x = sample
        if d["dtype"] != np.float32:
            scale, zp = d["quantization"]
            x = np.clip(np.round(sample / scale + zp), -128, 127).astype(d["dtype"])
        itp.set_tensor(d["index"], x)
        for _ in range(20):
            itp.invoke()
        itps[name] = itp
    times: dict[str, list[float]] = {n: [] for n in models}
    for _ in range(rounds):
        for name, itp in itps.items():
            t0 = time.perf_counter()
            for _ in range(per_round):
                itp.invoke()
            times[name].append((time.perf_counter() - t0) * 1e3 / per_round)
    return {n: float(np.median(t)) for n, t in times.items()}


def cpu_description() -> str:
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    name = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")), "unknown")
    flags = set(next((ln.split(":", 1)[1].split() for ln in info.splitlines() if ln.startswith("flags")), []))
    wanted = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni") if f in flags]
    return f"{name}, {len(info.split('processor')) - 1} logical cores, flags {' '.join(wanted)}"
