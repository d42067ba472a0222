"""The benchmark harness on the host over every precision, its refusals, and the Android path with a stand-in adb.

There is no phone here: the adb tests put a stand-in `adb` on PATH that records its arguments and answers with
benchmark_model output in the published formats (tests/data/benchmark_model/README.md says where they come from).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import edgemp
from edgemp import errors
from edgemp.bench import HARNESS
from edgemp.bench.android import benchmark_android, benchmark_command, parse_benchmark_output

DATA = Path(__file__).parent / "data" / "benchmark_model"
PRECISIONS = ["fp32", "fp16", "dynamic-int8", "int8", "int16x8"]


class _Converted(dict):  # type: ignore[type-arg]
    """precision -> .tflite, converted when first asked for: the fast tests need int8 and fp32 only."""

    def __init__(self, conversions) -> None:  # type: ignore[no-untyped-def]
        super().__init__()
        self.conversions = conversions

    def __missing__(self, precision: str) -> Path:
        self[precision] = self.conversions(precision).artifacts["tflite"]
        return self[precision]


@pytest.fixture(scope="module")
def artifacts(conversions) -> dict[str, Path]:  # type: ignore[no-untyped-def]
    return _Converted(conversions)


@pytest.mark.slow
def test_harness_benchmarks_every_precision_in_one_comparison(artifacts: dict[str, Path], tmp_path: Path) -> None:
    r = edgemp.benchmark([artifacts[p] for p in PRECISIONS], runs=5, warmup=1)
    assert r.data["schema"] == "edgemp-bench/1" and [x["model"] for x in r.results] == [artifacts[p].name for p in PRECISIONS]
    dev = r.data["device"]
    assert dev["cores"] >= 1 and dev["machine"] and dev["runtime"]["name"] == "ai-edge-litert" and dev["python"]
    for precision, x in zip(PRECISIONS, r.results, strict=True):
        lat = x["latency_ms"]
        assert lat["count"] == 5 and 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
        assert x["init_ms"] > 0 and x["first_inference_ms"] > 0 and x["outputs_finite"]
        assert x["size_bytes"] == artifacts[precision].stat().st_size
        assert x["memory"]["peak_rss_mb"] > x["memory"]["rss_before_load_mb"] > 0  # per model, not the process's peak
        assert x["delegation"]["total_nodes"] > 0 and x["delegation"]["xnnpack"] is True
    by = dict(zip(PRECISIONS, r.results, strict=True))
    assert by["int8"]["inputs"][0]["dtype"] == "int8" and by["int8"]["inputs"][0]["scale"] > 0
    assert by["int16x8"]["inputs"][0]["dtype"] == "int16" and by["fp32"]["inputs"][0]["dtype"] == "float32"
    table = r.table().splitlines()
    assert table[0].split()[:2] == ["model", "size"] and len(table) == 2 + len(PRECISIONS)
    assert table[2].split()[-1] == "1.00"  # ratios are against the first model
    r.to_json(tmp_path / "b.json")
    assert json.loads((tmp_path / "b.json").read_text())["results"][0]["latency_ms"]["count"] == 5


def test_harness_standalone_options_and_real_inputs(artifacts: dict[str, Path], small_heldout, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The file runs on its own (as on a device): time budget, XNNPACK off, real samples quantized for int8 I/O."""
    x, _ = small_heldout
    np.savez(tmp_path / "samples.npz", image=x[:8])
    out = tmp_path / "bench.json"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, str(HARNESS), str(artifacts["int8"]), "--time-budget", "0.3", "--no-xnnpack",
                           "--inputs", str(tmp_path / "samples.npz"), "--warmup", "2", "--json", str(out)],
                          capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "p50 ms" in proc.stdout and "XNNPACK off" in proc.stdout
    data = json.loads(out.read_text())
    res = data["results"][0]
    assert res["latency_ms"]["count"] >= 1 and res["timed_duration_s"] >= 0.3
    assert res["delegation"]["xnnpack"] is False and res["delegation"]["delegated_nodes"] == 0
    assert data["options"]["inputs"].endswith("samples.npz") and data["options"]["time_budget_s"] == 0.3


def test_harness_refuses_corrupt_and_truncated_models(artifacts: dict[str, Path], tmp_path: Path) -> None:
    data = artifacts["int8"].read_bytes()
    cases = {"truncated.tflite": data[: len(data) // 3], "header_only.tflite": data[:64],
             "not_a_model.tflite": b"PK\x03\x04 this is a zip, not a flatbuffer" * 8, "empty.tflite": b""}
    for name, payload in cases.items():
        (tmp_path / name).write_bytes(payload)
        with pytest.raises(errors.NotATFLiteModelError, match="not a TFLite model|truncated|corrupt|cannot load"):
            edgemp.benchmark(tmp_path / name, runs=1)
        proc = subprocess.run([sys.executable, str(HARNESS), str(tmp_path / name)], capture_output=True, text=True)
        assert proc.returncode == 2 and proc.stderr.startswith("error:") and "Traceback" not in proc.stderr
    with pytest.raises(errors.ModelLoadError, match="does not exist"):
        edgemp.benchmark(tmp_path / "missing.tflite")


def test_harness_delegate_that_does_not_load_is_an_error(artifacts: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(errors.DelegateError, match="does not exist"):
        edgemp.benchmark(artifacts["fp32"], runs=1, delegates=[str(tmp_path / "libnope.so")])
    libm = "/lib/x86_64-linux-gnu/libm.so.6" if Path("/lib/x86_64-linux-gnu/libm.so.6").exists() else "libm.so.6"
    with pytest.raises(errors.DelegateError, match="not a TFLite external delegate"):
        edgemp.benchmark(artifacts["fp32"], runs=1, delegates=[libm])


LEGACY_PYTHON = os.environ.get("EDGEMP_LEGACY_PYTHON")


@pytest.mark.slow  # every precision: three conversions more than the fast tests need, made for the slow ones anyway
@pytest.mark.skipif(not LEGACY_PYTHON, reason="EDGEMP_LEGACY_PYTHON (Python 3.8 + tflite-runtime 2.13, set up by "
                                              "scripts/env.sh when python3.8 exists) is not set")
def test_harness_runs_on_the_legacy_runtime_and_python_38(artifacts: dict[str, Path], tmp_path: Path) -> None:
    """What a JetPack 5 device has: Python 3.8, numpy 1.x and tflite_runtime instead of ai_edge_litert."""
    # every precision: the quantizer's offset buffers are moved inline, which this 2023 runtime needs
    proc = subprocess.run([LEGACY_PYTHON, str(HARNESS), *(str(artifacts[p]) for p in PRECISIONS), "--runs", "3",
                           "--json", "-"], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["device"]["runtime"]["name"] == "tflite-runtime" and data["device"]["python"].startswith("3.8")
    assert [r["latency_ms"]["count"] for r in data["results"]] == [3] * len(PRECISIONS)
    assert all(r["outputs_finite"] for r in data["results"])


# -- Android -------------------------------------------------------------------------------------------------------
def test_parser_reads_the_binary_and_apk_formats() -> None:
    cur = parse_benchmark_output((DATA / "cli_current.txt").read_text())
    assert cur["tool"] == "benchmark_model" and cur["init_ms"] == pytest.approx(3.118)
    assert cur["first_inference_ms"] == pytest.approx(0.412) and cur["threads"] == 4
    assert cur["latency_ms"] == pytest.approx({"count": 9702, "mean": 0.1019, "std": 0.022, "min": 0.087, "max": 0.915,
                                               "p50": 0.098, "p90": None, "p99": None, "p5": 0.09, "p95": 0.124})
    assert cur["memory"]["peak_rss_mb"] == pytest.approx(9.76172) and cur["memory"]["overall_delta_mb"] == pytest.approx(3.05469)
    assert cur["delegation"]["delegated_nodes"] == 11 and cur["delegation"]["total_nodes"] == 11
    assert cur["warmup_runs"] == 4731 and cur["model"] == "fashion_cnn_int8.tflite"

    legacy = parse_benchmark_output((DATA / "cli_legacy.txt").read_text())
    assert legacy["latency_ms"]["mean"] == pytest.approx(9.81163) and legacy["latency_ms"]["p50"] is None
    assert legacy["init_ms"] == pytest.approx(1214.88) and legacy["memory"]["overall_delta_mb"] == pytest.approx(97.8359)
    assert legacy["delegation"]["delegates"] == [{"name": "TfLiteGpuDelegateV2", "nodes": 64, "total_nodes": 66,
                                                  "partitions": 2}]

    apk = parse_benchmark_output((DATA / "apk_logcat.txt").read_text())
    assert apk["tool"] == "benchmark_apk" and apk["latency_ms"]["count"] == 7003
    assert apk["latency_ms"]["p50"] == pytest.approx(0.136) and apk["init_ms"] == pytest.approx(6.402)
    assert apk["path"] == "/data/local/tmp/fashion_cnn_fp16.tflite" and apk["delegation"]["delegated_nodes"] == 17

    with pytest.raises(errors.DeviceError, match="(?s)did not finish.*Benchmarking failed"):
        parse_benchmark_output((DATA / "cli_failed.txt").read_text())


def test_benchmark_command_flags() -> None:
    cmd = benchmark_command("/data/local/tmp/edgemp/m.tflite", threads=4, warmup=5, runs=None, time_budget=10,
                            xnnpack=False, use_gpu=True, delegate="/data/local/tmp/edgemp/libqnn.so",
                            delegate_options={"backend_type": "htp"}, cpu_mask="0xf0")
    assert cmd[:2] == ["taskset", "f0"] and cmd[2].endswith("benchmark_model")
    assert {"--graph=/data/local/tmp/edgemp/m.tflite", "--num_threads=4", "--warmup_runs=5", "--use_xnnpack=false",
            "--num_runs=1", "--min_secs=10", "--max_secs=10", "--use_gpu=true",
            "--external_delegate_path=/data/local/tmp/edgemp/libqnn.so",
            "--external_delegate_options=backend_type:htp"} <= set(cmd)
    with pytest.raises(errors.InputError, match="hexadecimal"):
        benchmark_command("m.tflite", cpu_mask="big-cores")


FAKE_ADB = """\
#!{python}
# Stand-in for adb (no phone here): records every call, answers like a device with benchmark_model.
import os, sys, time
args = sys.argv[1:]
with open(os.environ["FAKE_ADB_LOG"], "a") as fh:
    fh.write("\\t".join(args) + "\\n")
if os.environ.get("FAKE_ADB_HANG") == "1":
    time.sleep(60)
if args[:1] == ["devices"]:
    print("List of devices attached")
    for row in filter(None, os.environ.get("FAKE_ADB_DEVICES", "").split(",")):
        print(row.replace(":", "\\t"))
    sys.exit(0)
if args[:1] == ["-s"]:
    args = args[2:]
cmd = " ".join(args)
if args[0] == "push":
    print(args[1] + ": 1 file pushed")
elif args[0] == "install":
    print("Success")
elif args[0] == "logcat":
    if "-d" in args:
        sys.stdout.write(open(os.environ["FAKE_ADB_OUTPUT"]).read())
elif args[0] == "shell" and "benchmark_model" in cmd:
    sys.stdout.write(open(os.environ["FAKE_ADB_OUTPUT"]).read())
elif args[0] == "shell" and "getprop" in cmd:
    print("\\n".join(["Google", "Pixel 8", "Tensor G3", "zuma", "15", "35", "arm64-v8a", "9",
                      "Features\\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp asimddp i8mm"]))
"""


@pytest.fixture()
def fake_adb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    bindir = tmp_path / "bin"
    bindir.mkdir()
    adb = bindir / "adb"
    adb.write_text(FAKE_ADB.format(python=sys.executable))
    adb.chmod(0o755)
    log = tmp_path / "adb.log"
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_ADB_LOG", str(log))
    monkeypatch.setenv("FAKE_ADB_DEVICES", "R5CX1234:device")
    monkeypatch.setenv("FAKE_ADB_OUTPUT", str(DATA / "cli_current.txt"))
    tool = tmp_path / "android_aarch64_benchmark_model"
    tool.write_bytes(b"\x7fELF stand-in")
    return lambda: [line.rstrip("\n").split("\t") for line in log.read_text().splitlines()], tool


def test_adb_binary_flow_pushes_runs_and_parses(fake_adb, artifacts: dict[str, Path]) -> None:  # type: ignore[no-untyped-def]
    calls, tool = fake_adb
    r = benchmark_android([artifacts["int8"]], benchmark_binary=tool, threads=4, runs=100, cpu_mask="f0")
    log = calls()
    assert log[0] == ["devices"] and all(c[:2] == ["-s", "R5CX1234"] for c in log[1:-1])
    assert ["-s", "R5CX1234", "push", str(tool), "/data/local/tmp/edgemp/benchmark_model"] in log
    assert ["-s", "R5CX1234", "shell", "chmod 755 /data/local/tmp/edgemp/benchmark_model"] in log
    assert ["-s", "R5CX1234", "push", str(artifacts["int8"]), f"/data/local/tmp/edgemp/{artifacts['int8'].name}"] in log
    run = next(c[3] for c in log[1:] if c[2] == "shell" and "benchmark_model --graph" in c[3])
    assert run.startswith("taskset f0 /data/local/tmp/edgemp/benchmark_model --graph=/data/local/tmp/edgemp/")
    assert "--num_threads=4" in run and "--num_runs=100" in run and run.endswith("2>&1")
    res = r.results[0]
    assert res["model"] == artifacts["int8"].name and res["size_bytes"] == artifacts["int8"].stat().st_size
    assert res["latency_ms"]["p50"] == pytest.approx(0.098) and res["command"][0] == "taskset"
    assert r.data["device"]["board"] == "Google Pixel 8" and r.data["device"]["int8_dot_product"] is True
    assert r.data["device"]["os"] == "Android 15 (API 35)" and "p50 ms" in r.table()


def test_adb_apk_flow_reads_logcat(fake_adb, artifacts: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    calls, tool = fake_adb
    monkeypatch.setenv("FAKE_ADB_OUTPUT", str(DATA / "apk_logcat.txt"))
    r = benchmark_android([artifacts["fp16"]], benchmark_apk=tool, threads=4)
    log = calls()
    assert ["-s", "R5CX1234", "install", "-r", "-d", "-g", str(tool)] in log
    assert ["-s", "R5CX1234", "logcat", "-c"] in log
    start = next(c[3] for c in log[1:] if c[2] == "shell" and c[3].startswith("am start"))
    assert "-n org.tensorflow.lite.benchmark/.BenchmarkModelActivity --es args '--graph=/data/local/tmp/" in start
    assert r.data["tool"] == "benchmark_apk" and r.results[0]["latency_ms"]["count"] == 7003


def test_adb_bad_inputs_are_clear_errors_without_hanging(fake_adb, artifacts: dict[str, Path], tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    _, tool = fake_adb
    model = [artifacts["int8"]]
    with pytest.raises(errors.DeviceError, match="needs exactly one of --benchmark-binary"):
        benchmark_android(model)
    with pytest.raises(errors.DeviceError, match="does not exist"):
        benchmark_android(model, benchmark_binary=tmp_path / "nope")
    monkeypatch.setenv("FAKE_ADB_DEVICES", "")
    with pytest.raises(errors.DeviceError, match="no Android device connected"):
        benchmark_android(model, benchmark_binary=tool)
    monkeypatch.setenv("FAKE_ADB_DEVICES", "R5CX1234:unauthorized")
    with pytest.raises(errors.DeviceError, match="unauthorized"):
        benchmark_android(model, benchmark_binary=tool)
    monkeypatch.setenv("FAKE_ADB_DEVICES", "A:device,B:device")
    with pytest.raises(errors.DeviceError, match="several devices.*--serial"):
        benchmark_android(model, benchmark_binary=tool)
    monkeypatch.setenv("FAKE_ADB_DEVICES", "A:device")
    monkeypatch.setenv("FAKE_ADB_HANG", "1")
    from edgemp.bench import android

    with pytest.raises(errors.DeviceError, match="did not answer within"):
        android.Adb(serial="A", timeout=1)("shell", "true")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(errors.DeviceError, match="adb not found"):
        benchmark_android(model, benchmark_binary=tool)


def test_cli_bench_host_and_adb(fake_adb, artifacts: dict[str, Path], tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, tool = fake_adb
    cli = [sys.executable, "-m", "edgemp", "bench"]
    out = subprocess.run(cli + [str(artifacts["fp32"]), str(artifacts["int8"]), "--runs", "3", "--json",
                                str(tmp_path / "host.json")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert artifacts["int8"].name in out.stdout and json.loads((tmp_path / "host.json").read_text())["results"][1]
    out = subprocess.run(cli + [str(artifacts["int8"]), "--adb", "--benchmark-binary", str(tool), "--json", "-"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["results"][0]["tool"] == "benchmark_model"
    out = subprocess.run(cli + [str(artifacts["int8"]), "--adb"], capture_output=True, text=True)
    assert out.returncode == 2 and "--benchmark-binary" in out.stderr
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"garbage" * 10)
    out = subprocess.run(cli + [str(bad)], capture_output=True, text=True)
    assert out.returncode == 2 and "not a TFLite model" in out.stderr
