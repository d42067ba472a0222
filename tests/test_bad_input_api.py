"""Every public parameter's type and range is checked up front: one InputError naming the parameter and what it
takes, before a model is loaded or a file written (wrong types used to fail deep inside a framework)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import edgemp
from edgemp import errors

CONVERT_CASES: list[tuple[dict[str, Any], str]] = [
    ({"max_accuracy_drop": "abc"}, "max_accuracy_drop"),
    ({"max_accuracy_drop": -0.1}, "max_accuracy_drop"),
    ({"max_accuracy_drop": float("nan")}, "max_accuracy_drop"),
    ({"num_calibration_samples": "10"}, "num_calibration_samples must be an integer"),
    ({"num_calibration_samples": 0}, "num_calibration_samples"),
    ({"num_calibration_samples": 10.0}, "num_calibration_samples"),
    ({"num_threads": 2.5}, "num_threads must be an integer"),
    ({"num_threads": True}, "num_threads"),
    ({"num_threads": 0}, "num_threads"),
    ({"latency_runs": -1}, "latency_runs"),
    ({"latency_runs": "50"}, "latency_runs"),
    ({"seed": -1}, "seed"),
    ({"seed": 1.5}, "seed"),
    ({"batch_size": 0}, "batch_size"),
    ({"max_validation_samples": 0}, "max_validation_samples"),
    ({"keep_float": "conv2d"}, "write ['conv2d']"),
    ({"never_float": [1, 2]}, "never_float"),
    ({"class_names": "cat"}, "class_names"),
    ({"class_names": ["cat", "cat"]}, "duplicates"),
    ({"max_float_layers": -3}, "max_float_layers"),
    ({"max_float_layers": 2.5}, "max_float_layers"),
    ({"max_float_layers": "all"}, "max_float_layers"),
    ({"min_sqnr_db": "high"}, "min_sqnr_db"),
    ({"min_cosine": 1.5}, "min_cosine"),
    ({"metric": "accuracy"}, "metric must be a callable"),
    ({"output_tasks": ["boxes"]}, "output_tasks"),
    ({"output_tasks": {"output_0": "segmentation"}}, "unknown output task"),
    ({"preprocessing": 42}, "preprocessing"),
    ({"preprocessing": {"size": (0, 28)}}, "preprocessing size"),
    ({"preprocessing": {"colour": "rgb"}}, "unknown Preprocessing field"),
    ({"targets": "tflite"}, "targets"),
    ({"targets": ["tflite", "tensorrt"]}, "targets"),
    ({"force": "yes"}, "force must be True or False"),
    ({"strict": 2}, "strict"),
    ({"progress": "on"}, "progress"),
    ({"name": 7}, "name"),
    ({"output_dir": 3}, "output_dir"),
    ({"io_dtype": "int4"}, "io_dtype"),
    ({"delegates": "libdelegate.so"}, "delegates"),
    ({"delegates": [3]}, "delegate"),
    ({"label_output": ""}, "label_output"),
]


@pytest.mark.parametrize("kwargs, fragment", CONVERT_CASES, ids=[str(c[0])[:40] for c in CONVERT_CASES])
def test_convert_refuses_bad_parameters_up_front(kwargs: dict[str, Any], fragment: str, tiny_model: Any,
                                                 tmp_path: Path) -> None:
    kw = {"output_dir": tmp_path / "out"} | kwargs
    with pytest.raises(errors.InputError, match=fragment.replace("[", r"\[").replace("]", r"\]")) as info:
        edgemp.convert(tiny_model, "fp16", **kw)
    assert info.value.exit_code == 2
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("precision", ["int9", 8, None])
def test_unknown_precision_lists_the_valid_ones(precision: Any, tiny_model: Any, tmp_path: Path) -> None:
    with pytest.raises(errors.UnknownPrecisionError, match="valid values: 'fp32', 'fp16'"):
        edgemp.convert(tiny_model, precision, output_dir=tmp_path)


ANALYZE_CASES: list[tuple[dict[str, Any], str]] = [
    ({"tensor_samples": 0}, "tensor_samples"),
    ({"num_threads": "2"}, "num_threads"),
    ({"max_validation_samples": -5}, "max_validation_samples"),
    ({"force": None}, "force"),
    ({"name": ""}, "name"),
]


@pytest.mark.parametrize("kwargs, fragment", ANALYZE_CASES, ids=[str(c[0]) for c in ANALYZE_CASES])
def test_analyze_refuses_bad_parameters(kwargs: dict[str, Any], fragment: str, tiny_model: Any, tmp_path: Path) -> None:
    cal = np.random.default_rng(0).random((8, 28, 28, 1), dtype=np.float32)
    with pytest.raises(errors.InputError, match=fragment):
        edgemp.analyze(tiny_model, cal, output_dir=tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


VALIDATE_CASES: list[tuple[dict[str, Any], str]] = [
    ({"max_samples": 0}, "max_samples"),
    ({"num_threads": 1.0}, "num_threads"),
    ({"class_names": "abc"}, "class_names"),
    ({"min_cosine": "0.9"}, "min_cosine"),
]


@pytest.mark.parametrize("kwargs, fragment", VALIDATE_CASES, ids=[str(c[0]) for c in VALIDATE_CASES])
def test_validate_refuses_bad_parameters(kwargs: dict[str, Any], fragment: str, tiny_model: Any,
                                         tmp_path: Path) -> None:
    r = edgemp.convert(tiny_model, "fp32", output_dir=tmp_path, latency_runs=0)
    with pytest.raises(errors.InputError, match=fragment):
        edgemp.validate(r.artifacts["tflite"], reference=tiny_model, **kwargs)


BENCH_CASES: list[tuple[dict[str, Any], str]] = [
    ({"runs": -1}, "runs"),
    ({"runs": 0}, "runs"),
    ({"threads": 0}, "threads"),
    ({"warmup": 1.5}, "warmup"),
    ({"time_budget": 0}, "time_budget"),
    ({"xnnpack": "no"}, "xnnpack"),
]


@pytest.mark.parametrize("kwargs, fragment", BENCH_CASES, ids=[str(c[0]) for c in BENCH_CASES])
def test_benchmark_refuses_bad_parameters(kwargs: dict[str, Any], fragment: str, tmp_path: Path) -> None:
    model = tmp_path / "m.tflite"
    model.write_bytes(b"not used: parameters are checked first")
    with pytest.raises(errors.InputError, match=fragment):
        edgemp.benchmark([model], **kwargs)


def test_benchmark_refuses_a_non_path(tmp_path: Path) -> None:
    with pytest.raises(errors.InputError, match="models"):
        edgemp.benchmark(b"model bytes")  # type: ignore[arg-type]


PACKAGE_CASES: list[tuple[dict[str, Any], str]] = [
    ({"device": "raspberry"}, "unknown device"),
    ({"class_names": "abc"}, "class_names"),
    ({"as_zip": "zip"}, "as_zip"),
    ({"name": 5}, "name"),
]


@pytest.mark.parametrize("kwargs, fragment", PACKAGE_CASES, ids=[str(c[0]) for c in PACKAGE_CASES])
def test_package_refuses_bad_parameters(kwargs: dict[str, Any], fragment: str, tiny_model: Any,
                                        tmp_path: Path) -> None:
    r = edgemp.convert(tiny_model, "fp32", output_dir=tmp_path / "conv", latency_runs=0)
    kw = {"device": "android", "output_dir": tmp_path / "bundles"} | kwargs
    with pytest.raises(errors.InputError, match=fragment):
        edgemp.package(r, **kw)
    assert not (tmp_path / "bundles").exists()


def test_an_unexpected_failure_inside_a_stage_is_typed_and_named(tiny_model: Any, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug in a stage (simulated: the census raises a plain RuntimeError) reaches the user as one InternalError
    naming the stage, with the original exception chained for --debug."""
    import importlib

    conv = importlib.import_module("edgemp.targets.tflite.census")  # what the float-conversion stage calls

    def broken(_: bytes) -> None:
        raise RuntimeError("flatbuffer walk failed")

    monkeypatch.setattr(conv, "census", broken)
    with pytest.raises(errors.InternalError, match=r"unexpected RuntimeError during float conversion: flatbuffer walk "
                                                   r"failed\. This is a bug in edgemp") as info:
        edgemp.convert(tiny_model, "fp16", output_dir=tmp_path / "out")
    assert isinstance(info.value.__cause__, RuntimeError) and info.value.exit_code == 1
    assert not (tmp_path / "out").exists()


def test_public_functions_raise_only_edgemp_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import edgemp.api as api

    monkeypatch.setattr(api, "census", lambda _: {}["missing"])
    model = tmp_path / "m.tflite"
    model.write_bytes(b"\x1c\x00\x00\x00TFL3" + bytes(64))
    with pytest.raises(errors.InternalError, match=r"unexpected KeyError in edgemp\.inspect_model\(\)"):
        edgemp.inspect_model(model)
