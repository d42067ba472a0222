"""Each shipped example runs offline on shipped data."""

from __future__ import annotations

import pytest

import os
import subprocess
import sys
from pathlib import Path

from .conftest import REPO

pytestmark = pytest.mark.slow  # the example scripts train and convert real models


def test_keras_quickstart(model_path: Path, tmp_path: Path) -> None:
    p = subprocess.run([sys.executable, str(REPO / "examples" / "keras_quickstart.py"), str(tmp_path)],
                       capture_output=True, text=True, timeout=600, env=os.environ | {"TF_CPP_MIN_LOG_LEVEL": "3"})
    assert p.returncode == 0, p.stdout + p.stderr
    assert "PASSED" in p.stdout and "{'int8': 9}" in p.stdout
    assert (tmp_path / f"{model_path.stem}_int8.tflite").exists()


def test_pytorch_quickstart(torch_model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    p = subprocess.run([sys.executable, str(REPO / "examples" / "pytorch_quickstart.py"), str(tmp_path)],
                       capture_output=True, text=True, timeout=600, env=os.environ | {"TF_CPP_MIN_LOG_LEVEL": "3"})
    assert p.returncode == 0, p.stdout + p.stderr
    assert "PASSED" in p.stdout and "{'int8': 9} TRANSPOSE ops: 0" in p.stdout
    assert len(list(tmp_path.glob("*_int8.tflite"))) == 1


def test_mixed_precision_example(tmp_path: Path) -> None:
    p = subprocess.run([sys.executable, str(REPO / "examples" / "mixed_precision.py"), str(tmp_path)],
                       capture_output=True, text=True, timeout=900, env=os.environ | {"TF_CPP_MIN_LOG_LEVEL": "3"})
    assert p.returncode == 0, p.stdout + p.stderr
    assert "PASSED" in p.stdout and "kept in float: ['cat', 'logits']" in p.stdout
    assert "calibration runs: 1" in p.stdout
    assert (tmp_path / "sensitive_cnn_v1_e3_sensitivity.html").exists()


def test_package_and_bench_example(model_path: Path, tmp_path: Path) -> None:
    p = subprocess.run([sys.executable, str(REPO / "examples" / "package_and_bench.py"), str(tmp_path)],
                       capture_output=True, text=True, timeout=900, env=os.environ | {"TF_CPP_MIN_LOG_LEVEL": "3"})
    assert p.returncode == 0, p.stdout + p.stderr
    assert "int8: PASSED" in p.stdout
    for device in ("android", "jetson", "linux-arm64"):
        assert (tmp_path / "bundles" / f"{model_path.stem}_int8_{device}.zip").exists()
    assert (tmp_path / "bundles" / f"{model_path.stem}_int8-weights_ios.zip").exists()  # named by its Core ML precision
    assert "p50 ms" in p.stdout and f"{model_path.stem}_int8.tflite" in p.stdout
    assert (tmp_path / "bench_host.json").exists()
