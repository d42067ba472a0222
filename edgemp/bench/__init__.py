"""Bench stage: measure artifacts where they will run.

`harness.py` is one file that needs only numpy and the LiteRT runtime: device bundles ship a copy, and
`benchmark()` runs that same file here in a fresh Python process, so the host numbers (peak memory included) are
the model's and not TensorFlow's. `android.benchmark_android()` does the same on a phone with LiteRT's own
`benchmark_model` over adb, parsed into the same result format.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from edgemp.config import DelegateSpec, RuntimeOptions
from edgemp import _params as P
from edgemp.errors import DelegateError, InputError, ModelLoadError, NotATFLiteModelError, public
HARNESS = Path(__file__).with_name("harness.py")


@dataclasses.dataclass(frozen=True)
class BenchResult:
    """The harness's JSON (schema "edgemp-bench/1"): `device`, `options`, and one entry per model in `results`."""

    data: dict[str, Any]

    @property
    def results(self) -> list[dict[str, Any]]:
        return self.data["results"]

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.data, indent=2) + "\n"
        if path is not None:
            from edgemp._io import write_atomic

            write_atomic(Path(path), text)
        return text

    def table(self) -> str:
        from edgemp.bench.harness import table

        return table(self.results)


def _delegate_args(delegates: Sequence[str | DelegateSpec | Mapping[str, Any]]) -> list[str]:
    specs = list(RuntimeOptions(delegates=tuple(delegates)).delegates)  # type: ignore[arg-type]
    options = {tuple(sorted(s.options.items())) for s in specs}
    if len(options) > 1:
        raise InputError("the harness passes the same options to every delegate; benchmark delegates with different "
                         "options in separate calls")
    args = [a for s in specs for a in ("--delegate", s.path)]
    return args + [a for k, v in (specs[0].options.items() if specs else ()) for a in ("--delegate-option", f"{k}={v}")]


@public
def benchmark(
    models: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    threads: int = 1,
    warmup: int = 10,
    runs: int | None = 50,
    time_budget: float | None = None,
    xnnpack: bool = True,
    delegates: Sequence[str | DelegateSpec | Mapping[str, Any]] = (),
    inputs: str | os.PathLike[str] | None = None,
    input_range: tuple[float, float] | None = None,
    seed: int = 0,
    cpus: str | None = None,
    timeout: float | None = 3600,
) -> BenchResult:
    """Benchmark .tflite models on this machine with the standalone harness (one fresh process for all models).

    Example:
        >>> r = edgemp.benchmark(["dist/m_fp32.tflite", "dist/m_int8.tflite"], threads=1, runs=100)
        >>> print(r.table()); r.results[1]["latency_ms"]["p50"]

    `runs` and `time_budget` (seconds) both bound the timed loop, whichever ends first; `inputs` is a .npy/.npz
    of real samples (default: random values over each input's valid range).
    """
    P.integer("threads", threads, 1, 1024)
    P.integer("warmup", warmup, 0, 10**6)
    P.integer("runs", runs, 1, 10**7, none_ok=True)
    P.real("time_budget", time_budget, 0.001, none_ok=True)
    P.flag("xnnpack", xnnpack)
    P.integer("seed", seed, 0, 2**32 - 1)
    P.real("timeout", timeout, 1.0, none_ok=True)
    if isinstance(models, bytes) or not isinstance(models, str | os.PathLike | list | tuple):
        raise InputError(f"models must be a .tflite path or a list of them, got {models!r}")
    paths = [Path(models)] if isinstance(models, str | os.PathLike) else [Path(P.path("models[]", m)) for m in models]
    if not paths:
        raise InputError("give at least one .tflite model to benchmark")
    for p in paths:
        if not p.is_file():
            raise ModelLoadError(f"model {p} does not exist or is not a file")
    if runs is None and time_budget is None:
        raise InputError("give runs=, time_budget= or both")
    with tempfile.TemporaryDirectory(prefix="edgemp-bench-") as tmp:
        out = Path(tmp) / "bench.json"
        cmd = [sys.executable, str(HARNESS), *map(str, paths), "--threads", str(threads), "--warmup", str(warmup),
               "--seed", str(seed), "--json", str(out), *_delegate_args(delegates)]
        cmd += ["--runs", str(runs)] if runs is not None else []
        cmd += ["--time-budget", str(time_budget)] if time_budget is not None else []
        cmd += ["--no-xnnpack"] if not xnnpack else []
        cmd += ["--inputs", str(inputs)] if inputs is not None else []
        cmd += ["--input-range", f"{input_range[0]},{input_range[1]}"] if input_range else []
        cmd += ["--cpus", cpus] if cpus else []
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                                  env=os.environ | {"TF_CPP_MIN_LOG_LEVEL": "3"})
        except subprocess.TimeoutExpired as exc:
            raise InputError(f"the benchmark did not finish within {timeout} s; lower runs= or set time_budget=") from exc
        if proc.returncode != 0:
            raise _harness_error(proc.stderr)
        return BenchResult(json.loads(out.read_text()))


def _harness_error(stderr: str) -> Exception:
    """Map the harness's machine-readable error line to edgemp's typed errors."""
    for line in reversed(stderr.strip().splitlines()):
        if line.startswith('{"error"'):
            err = json.loads(line)["error"]
            cls = {"not_tflite": NotATFLiteModelError, "delegate": DelegateError}.get(err["kind"], InputError)
            return cls(err["message"])
    return RuntimeError(f"the benchmark harness failed: {stderr.strip()[-2000:]}")
