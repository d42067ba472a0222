"""The CLI round trip, exit codes (0 ok, 2 bad input, 3 gate failed, 4 conversion error) and --force."""

from __future__ import annotations

import pytest

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from edgemp.cli import main

from .conftest import CALIBRATION, VALIDATION_FOLDER


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, "-m", "edgemp", *args], capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.slow
def test_convert_inspect_validate_round_trip(model_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "dist"
    p = _run("convert", str(model_path), "--precision", "int8", "--calibration", str(CALIBRATION),
             "--validation", str(VALIDATION_FOLDER), "-o", str(out), "--latency-runs", "5")
    assert p.returncode == 0, p.stderr
    tflite = out / f"{model_path.stem}_int8.tflite"
    assert tflite.exists() and "PASSED" in p.stdout
    report = json.loads((out / f"{model_path.stem}_int8.report.json").read_text())
    assert report["passed"] and report["validation"]["data"]["num_samples"] == 1000

    r = CliRunner().invoke(main, ["inspect", str(tflite)])
    assert r.exit_code == 0 and "int8" in r.output and "scale" in r.output
    r = CliRunner().invoke(main, ["inspect", str(tflite), "--json"])
    census = json.loads(r.output)
    assert census["compute_counts"] == report["census"]["compute_counts"]
    assert census["inputs"][0]["dtype"] == "int8" and census["inputs"][0]["scale"] > 0

    r = CliRunner().invoke(main, ["validate", str(tflite), "--reference", str(model_path), "--data",
                                  str(VALIDATION_FOLDER), "--json", "--latency-runs", "2"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["validation"]["accuracy"]["top1"] > 0.8

    # the same output again without --force: bad input (2), nothing overwritten; with --force it works
    before = tflite.stat().st_mtime_ns
    p = _run("convert", str(model_path), "-p", "int8", "-c", str(CALIBRATION), "-o", str(out))
    assert p.returncode == 2 and "--force" in p.stderr and tflite.stat().st_mtime_ns == before
    r = CliRunner().invoke(main, ["convert", str(model_path), "-p", "fp16", "-o", str(out), "--latency-runs", "2",
                                  "--force"])
    assert r.exit_code == 0, r.output


def test_exit_codes_for_bad_input(tmp_path: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(main, ["convert", str(tmp_path / "missing.keras"), "-o", str(tmp_path)]).exit_code == 2
    r = runner.invoke(main, ["convert", "x.keras", "--precision", "int3"])
    assert r.exit_code == 2 and "int8" in r.output  # click lists the valid choices
    (tmp_path / "f.tflite").write_bytes(b"nope")
    assert runner.invoke(main, ["inspect", str(tmp_path / "f.tflite")]).exit_code == 2
    r = runner.invoke(main, ["analyze", "x.keras", "-c", "cal/", "--ray-address", "ray://head:10001"])
    assert r.exit_code == 2 and "ray_address is for executor='ray'" in r.output


def test_exit_code_3_when_the_gate_fails(model_path: Path, tmp_path: Path) -> None:
    np.save(tmp_path / "blank.npy", np.zeros((16, 28, 28, 1), np.float32))  # ranges from blank images: collapse
    r = CliRunner().invoke(main, ["convert", str(model_path), "-p", "int8", "-c", str(tmp_path / "blank.npy"),
                                  "--validation", str(VALIDATION_FOLDER), "-o", str(tmp_path / "o"),
                                  "--latency-runs", "1"])
    assert r.exit_code == 3, r.output
    assert "FAILED" in r.output


def test_exit_code_4_when_the_converter_cannot_lower(tmp_path: Path) -> None:
    import keras
    import tensorflow as tf

    @keras.saving.register_keras_serializable(package="edgemp_tests")
    class Inverse(keras.layers.Layer):
        def call(self, x):  # type: ignore[no-untyped-def]
            return tf.reshape(tf.linalg.inv(tf.reshape(x, (-1, 2, 2))), (-1, 4))

    inp = keras.Input((4,), name="x")
    keras.Model(inp, Inverse()(inp)).save(tmp_path / "inv.keras")
    r = CliRunner().invoke(main, ["convert", str(tmp_path / "inv.keras"), "-p", "fp32", "-o", str(tmp_path / "o")])
    assert r.exit_code == 4 and "tf.MatrixInverse" in r.output


@pytest.mark.slow
def test_analyze_and_mixed_from_the_cli(model_path: Path, tmp_path: Path) -> None:
    p = _run("analyze", str(model_path), "-c", str(CALIBRATION), "--validation", str(VALIDATION_FOLDER),
             "--max-validation-samples", "200", "--tensor-samples", "8", "-o", str(tmp_path), "--top", "5")
    assert p.returncode == 0, p.stderr
    table = [ln for ln in p.stdout.splitlines() if ln.startswith("| ")]
    assert len(table) == 5 + 1 and "block1_conv1" in p.stdout  # header + the 5 most sensitive layers, by name
    for suffix in ("json", "md", "png", "html"):
        assert len(list(tmp_path.glob(f"*sensitivity.{suffix}"))) == 1
    p = _run("convert", str(model_path), "-p", "mixed", "-c", str(CALIBRATION), "--validation", str(VALIDATION_FOLDER),
             "--max-validation-samples", "300", "--max-accuracy-drop", "0.01", "--max-float-layers", "2",
             "-o", str(tmp_path / "mixed"), "--latency-runs", "2", "--json")
    assert p.returncode == 0, p.stderr
    report = json.loads(p.stdout)
    assert report["mixed"]["met"] and report["mixed"]["max_float_layers"] == 2 and report["precision"] == "mixed"
