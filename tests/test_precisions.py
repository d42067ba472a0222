"""Every precision on the trained Fashion-MNIST CNN: honest labels, size, accuracy, fidelity, determinism."""

from __future__ import annotations

import numpy as np
import pytest

import edgemp
from edgemp.config import Precision

from .conftest import CALIBRATION

pytestmark = pytest.mark.slow  # every precision of the trained example, validated on the 10k test split

ALL = [p.value for p in Precision if p is not Precision.MIXED]  # mixed: tests/test_mixed.py


def test_example_model_is_big_enough_and_trained(keras_model, small_heldout) -> None:  # type: ignore[no-untyped-def]
    x, y = small_heldout
    assert keras_model.count_params() >= 100_000
    acc = float(np.mean(np.argmax(keras_model.predict(x, verbose=0), 1) == y))
    assert acc > 0.8, "the example model must be really trained for accuracy assertions to mean anything"


@pytest.mark.parametrize("precision", ALL)
def test_every_precision_converts_validates_and_writes(conversions, precision: str) -> None:  # type: ignore[no-untyped-def]
    result = conversions(precision)
    assert result.passed, result.report.failures
    path = result.artifacts["tflite"]
    assert path.exists() and path.read_bytes()[4:8] == b"TFL3"
    assert result.artifacts["report_json"].exists() and result.artifacts["report_md"].exists()
    report = result.report.to_dict()
    assert report["precision"] == precision
    assert all(c["passed"] for c in report["checks"])
    assert report["validation"]["accuracy"]["top1"] > 0.8
    assert report["validation"]["latency"]["median_ms"] > 0
    assert {"tensorflow", "keras", "ai-edge-litert", "ai-edge-quantizer"} <= set(report["versions"])
    # the artifact really is what the report describes
    census = edgemp.inspect_model(path)
    assert census.compute_counts == report["census"]["compute_counts"]


def test_int8_is_fully_integer_with_int8_io(conversions) -> None:  # type: ignore[no-untyped-def]
    c = edgemp.inspect_model(conversions("int8").artifacts["tflite"])
    assert not c.float_compute_ops(allow_io_boundaries=False)
    assert set(c.compute_counts) <= {"int8", "int32"}, c.compute_counts
    assert {t.dtype for t in (*c.inputs, *c.outputs)} == {"int8"}
    assert all(s.scale and s.zero_point is not None for s in (*c.inputs, *c.outputs))
    assert c.weight_dtypes == {"int8": 6} and c.per_channel_weights == {"per_channel": 6}
    assert "float32" not in c.tensor_dtypes


def test_int8_top1_drop_within_one_point_on_10k_heldout(conversions) -> None:  # type: ignore[no-untyped-def]
    acc = conversions("int8").report["validation"]["accuracy"]
    assert conversions("int8").report["validation"]["data"]["num_samples"] == 10_000
    assert acc["drop"] <= 0.01, acc
    assert acc["top5"] >= acc["top1"]


def test_size_ratios(conversions) -> None:  # type: ignore[no-untyped-def]
    fp32 = conversions("fp32").artifacts["tflite"].stat().st_size
    assert conversions("fp16").artifacts["tflite"].stat().st_size <= 0.52 * fp32
    assert conversions("int8").artifacts["tflite"].stat().st_size <= 0.30 * fp32
    assert conversions("int8").report["artifacts"][0]["ratio_to_fp32"] <= 0.30


def test_fp16_error_is_small(conversions) -> None:  # type: ignore[no-untyped-def]
    out = conversions("fp16").report["validation"]["outputs"][0]
    assert out["max_abs_error"] < 0.05 and out["cosine"] > 0.99999 and out["top1_agreement"] > 0.998
    assert edgemp.inspect_model(conversions("fp16").artifacts["tflite"]).weight_dtypes == {"float16": 6}


def test_fp32_matches_keras(conversions) -> None:  # type: ignore[no-untyped-def]
    out = conversions("fp32").report["validation"]["outputs"][0]
    assert out["max_abs_error"] < 1e-3 and out["top1_agreement"] == 1.0


def test_dynamic_int8_runs_hybrid_kernels(conversions) -> None:  # type: ignore[no-untyped-def]
    c = edgemp.inspect_model(conversions("dynamic-int8").artifacts["tflite"])
    assert c.compute_counts.get("hybrid-int8", 0) >= 4
    assert c.weight_dtypes == {"int8": 5, "float32": 1}  # the first conv's 288 weights stay float (< 1024)
    assert {t.dtype for t in (*c.inputs, *c.outputs)} == {"float32"}


def test_int16x8_has_int16_activations(conversions) -> None:  # type: ignore[no-untyped-def]
    c = edgemp.inspect_model(conversions("int16x8").artifacts["tflite"])
    assert set(c.compute_counts) <= {"int16", "int32"}, c.compute_counts
    assert c.weight_dtypes == {"int8": 6}
    assert {t.dtype for t in (*c.inputs, *c.outputs)} == {"int16"}
    assert conversions("int16x8").report["validation"]["outputs"][0]["sqnr_db"] > 30


def test_int8_float_io_on_request(model_path, small_heldout, tmp_path) -> None:  # type: ignore[no-untyped-def]
    r = edgemp.convert(model_path, "int8", CALIBRATION, small_heldout, tmp_path, io_dtype="float", latency_runs=2)
    assert r.passed, r.report.failures
    c = edgemp.inspect_model(r.artifacts["tflite"])
    assert {t.dtype for t in (*c.inputs, *c.outputs)} == {"float32"}
    assert c.compute_counts["quantize"] == 1 and c.compute_counts["dequantize"] == 1
    assert not c.float_compute_ops(allow_io_boundaries=True)
    assert r.report["io_dtype"] == "float32"


def test_conversion_is_deterministic(model_path, tmp_path) -> None:  # type: ignore[no-untyped-def]
    a = edgemp.convert(model_path, "int8", CALIBRATION, None, tmp_path / "a", latency_runs=1)
    b = edgemp.convert(model_path, "int8", CALIBRATION, None, tmp_path / "b", latency_runs=1)
    assert a.artifacts["tflite"].read_bytes() == b.artifacts["tflite"].read_bytes()
    assert a.report["calibration"]["sha256"] == b.report["calibration"]["sha256"]
    assert a.report["calibration"]["num_samples"] == 200
    # without validation data the report says fidelity was measured on calibration samples, not accuracy
    assert a.report["validation"]["accuracy"] is None
    assert "calibration samples" in a.report["validation"]["data"]["note"]


def test_validation_folder_with_class_subfolders(conversions, model_path) -> None:  # type: ignore[no-untyped-def]
    from .conftest import VALIDATION_FOLDER

    report = edgemp.validate(conversions("int8").artifacts["tflite"], reference=model_path, data=VALIDATION_FOLDER,
                             latency_runs=2)
    assert report.passed, report.failures
    d = report.to_dict()
    assert d["validation"]["data"]["num_samples"] == 1000 and d["validation"]["data"]["labelled"]
    assert d["precision"] == "int8"
    assert d["validation"]["accuracy"]["top1"] > 0.8
    # the folder's classes are sorted names; the test set's labels follow the Fashion-MNIST order, so the
    # folder export maps labels by name: accuracy > 0.8 proves the mapping and the preprocessing are right.


def test_collapsed_outputs_fail_the_gate(model_path, small_heldout, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # Calibrating on blank images squeezes every activation range to ~0: real images then saturate.
    blank = np.zeros((16, 28, 28, 1), np.float32)
    r = edgemp.convert(model_path, "int8", blank, small_heldout, tmp_path, latency_runs=1)
    assert not r.passed
    names = {f.split(":")[0] for f in r.report.failures}
    assert names & {"accuracy_drop", "not_collapsed[output_0]"}
    with pytest.raises(edgemp.errors.QualityGateError):
        edgemp.convert(model_path, "int8", blank, small_heldout, tmp_path, latency_runs=1, force=True, strict=True)


def test_accuracy_gate_alone_fails_threads_and_progress_are_reported(small_heldout, tmp_path, capfd) -> None:  # type: ignore[no-untyped-def]
    """Full INT8 of the sensitive model loses tens of points but does not collapse: only the accuracy gate fails."""
    from edgemp.demo import sensitive_model_path

    x, y = small_heldout
    r = edgemp.convert(sensitive_model_path(), "int8", CALIBRATION, (x[:500] * 255.0, y[:500]), tmp_path,
                       preprocessing={"scale": 1.0}, max_accuracy_drop=0.01, num_threads=2, latency_runs=3,
                       progress=True)
    failed = {f.split(":")[0] for f in r.report.failures}
    assert not r.passed and failed == {"accuracy_drop"}
    acc = r.report["validation"]["accuracy"]
    assert acc["drop"] > 0.1 and acc["max_accuracy_drop"] == 0.01
    assert r.report["validation"]["runtime"]["threads"] == 2 and r.report["validation"]["latency"]["threads"] == 2
    err = capfd.readouterr().err
    assert "Calibrat" in err and "Validating artifact" in err  # progress bars on request, on stderr


@pytest.mark.parametrize("precision", ["fp16", "dynamic-int8", "int8", "int16x8"])
def test_quantized_artifacts_keep_weights_inside_the_flatbuffer(conversions, precision: str) -> None:
    """Old device runtimes (tflite-runtime 2.13, JetPack 5) cannot read the quantizer's offset buffers."""
    from edgemp.targets.tflite.compat import has_external_buffers, inline_buffers

    data = conversions(precision).artifacts["tflite"].read_bytes()
    assert not has_external_buffers(data) and inline_buffers(data) == data
