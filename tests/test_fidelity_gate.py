"""The fidelity gate for unlabelled data (config.FIDELITY_FLOOR, chosen in benchmarks/fidelity_gate.py) and the
dead-output check, on real artifacts of the trained example CNN.

A badly calibrated int8 artifact (calibration images x255, as when a pipeline forgets to divide by 255) loses
about half its top-1 accuracy; without labels only the fidelity gate can see it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import edgemp
from edgemp.cli import EXIT_GATE_FAILED, main
from edgemp.config import FIDELITY_FLOOR, Precision

from .conftest import CALIBRATION


@pytest.fixture(scope="module")
def damaged(model_path: Path, small_heldout, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """int8 calibrated on images x255, validated without labels: (ConvertResult, unlabelled inputs)."""
    x, _ = small_heldout
    out = tmp_path_factory.mktemp("damaged")
    return edgemp.convert(model_path, "int8", x[1000:1200] * 255.0, x[:500], out, latency_runs=1), x[:500]


@pytest.fixture(scope="module")
def good(model_path: Path, small_heldout, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    x, _ = small_heldout
    return edgemp.convert(model_path, "int8", CALIBRATION, x[:500], tmp_path_factory.mktemp("good"), latency_runs=1)


def _failed(report) -> set[str]:  # type: ignore[no-untyped-def]
    return {c["name"] for c in report["checks"] if not c["passed"]}


def test_damaged_int8_without_labels_fails_the_fidelity_gate(damaged) -> None:  # type: ignore[no-untyped-def]
    r, _ = damaged
    assert not r.passed and _failed(r.report) == {"fidelity[output_0]"}  # not collapsed: only fidelity sees it
    v = r.report["validation"]
    assert v["accuracy"] is None and not v["data"]["labelled"]
    gate = v["fidelity_gate"]
    assert gate["origin"] == "default for int8" and gate["outputs"] == ["output_0"]
    assert (gate["min_sqnr_db"], gate["min_cosine"]) == FIDELITY_FLOOR[Precision.INT8]
    out = v["outputs"][0]
    assert out["sqnr_db"] < 5 and out["cosine"] < 0.9  # about -1.7 dB / 0.4 in the study
    detail = next(c["detail"] for c in r.report["checks"] if c["name"] == "fidelity[output_0]")
    assert "default for int8" in detail and "labelled validation data" in detail  # says what to do
    assert r.artifacts["tflite"].exists() and r.artifacts["report_json"].exists()  # written, for inspection


def test_damaged_int8_fails_strict_and_the_cli_exit_code(damaged, model_path: Path,  # type: ignore[no-untyped-def]
                                                         tmp_path: Path) -> None:
    r, x = damaged
    with pytest.raises(edgemp.errors.QualityGateError, match=r"fidelity\[output_0\]"):
        edgemp.convert(model_path, "int8", x[:200] * 255.0, x, tmp_path, latency_runs=1, strict=True)
    np.save(tmp_path / "x.npy", x[:200])
    res = CliRunner().invoke(main, ["validate", str(r.artifacts["tflite"]), "--reference", str(model_path), "--data",
                                    str(tmp_path / "x.npy"), "--latency-runs", "1", "--json"])
    assert res.exit_code == EXIT_GATE_FAILED == 3, res.output
    report = json.loads(res.output)
    assert not report["passed"] and _failed(report) == {"fidelity[output_0]"}


def test_same_damage_with_labels_reports_the_accuracy_drop(model_path: Path, small_heldout, tmp_path: Path) -> None:
    x, y = small_heldout
    r = edgemp.convert(model_path, "int8", x[1000:1200] * 255.0, (x[:500], y[:500]), tmp_path, latency_runs=1)
    acc = r.report["validation"]["accuracy"]
    assert acc["float_top1"] > 0.8 and acc["drop"] > 0.2, acc  # about 50 points in the study
    assert _failed(r.report) == {"accuracy_drop"}
    assert r.report["validation"]["fidelity_gate"] is None  # the only output is judged by its labels


def test_good_int8_without_labels_passes(good) -> None:  # type: ignore[no-untyped-def]
    assert good.passed, good.report.failures
    v = good.report["validation"]
    assert v["accuracy"] is None and v["fidelity_gate"]["origin"] == "default for int8"
    check = next(c for c in good.report["checks"] if c["name"] == "fidelity[output_0]")
    out = v["outputs"][0]
    assert check["passed"] and out["sqnr_db"] >= FIDELITY_FLOOR[Precision.INT8][0] + 5  # ~39 dB: a clear margin


def test_explicit_floor_overrides_the_default(damaged, good, model_path: Path) -> None:  # type: ignore[no-untyped-def]
    r, x = damaged
    lenient = edgemp.validate(r.artifacts["tflite"], reference=model_path, data=x[:200], min_sqnr_db=-10.0,
                              min_cosine=0.0, latency_runs=1)
    gate = lenient["validation"]["fidelity_gate"]
    assert lenient.passed, lenient.failures
    assert gate["origin"] == "given" and (gate["min_sqnr_db"], gate["min_cosine"]) == (-10.0, 0.0)
    # one bound given: the other is not defaulted (the user chose what to require)
    only_sqnr = edgemp.validate(r.artifacts["tflite"], reference=model_path, data=x[:200], min_sqnr_db=-10.0,
                                latency_runs=1)
    assert only_sqnr.passed and only_sqnr["validation"]["fidelity_gate"]["min_cosine"] == -1.0
    # and a stricter floor than the default fails the good artifact
    strict = edgemp.validate(good.artifacts["tflite"], reference=model_path, data=x[:200], min_sqnr_db=80.0,
                             latency_runs=1)
    assert not strict.passed and _failed(strict) == {"fidelity[output_0]"}
    assert strict["validation"]["fidelity_gate"]["origin"] == "given"


def _output_scale_times(tflite: bytes, factor: float) -> bytes:
    """The artifact with its int8 output's scale multiplied: the last layer requantizes every logit to the zero
    point (an output range chosen far too wide), and the runtime dequantizes that to exactly 0."""
    import flatbuffers

    from edgemp.targets.tflite.census import _schema
    from edgemp.targets.tflite.compat import _aligned

    schema = _schema()[0]
    m = schema.ModelT.InitFromPackedBuf(tflite, 0)
    sg = m.subgraphs[0]
    for i in sg.outputs:
        q = sg.tensors[i].quantization
        q.scale = [s * factor for s in q.scale]
    m.buffers = [_aligned(schema, b) for b in m.buffers]
    builder = flatbuffers.Builder(len(tflite) + 4096)
    builder.Finish(m.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def test_dead_output_is_caught(good, model_path: Path, small_heldout) -> None:  # type: ignore[no-untyped-def]
    x, _ = small_heldout
    dead = _output_scale_times(good.artifacts["tflite"].read_bytes(), 1000.0)
    report = edgemp.validate(dead, reference=model_path, data=x[:200], latency_runs=1)
    assert not report.passed
    check = next(c for c in report["checks"] if c["name"] == "not_collapsed[output_0]")
    assert not check["passed"] and "dead output: every value is 0" in check["detail"]
    out = report["validation"]["outputs"][0]
    assert out["sqnr_db"] == 0.0 and out["cosine"] == 0.0
    assert "fidelity[output_0]" in _failed(report)  # the floor agrees
    # even a user who lowers the floor to nothing gets the dead output reported
    lenient = edgemp.validate(dead, reference=model_path, data=x[:200], min_sqnr_db=-100.0, min_cosine=-1.0,
                              latency_runs=1)
    assert _failed(lenient) == {"not_collapsed[output_0]"}


@pytest.mark.slow
def test_random_init_mobilenet_v2_int8_zero_point_output_fails(tmp_path: Path) -> None:
    """The issue's real case. An untrained MobileNetV2's features vanish, so its float softmax is exactly 1/1000 for
    every class and input; int8's softmax output has the fixed scale 1/256 and zero point -128, so every value is
    the zero point and dequantizes to 0. The reference itself does not vary, so this is not a collapse relative to
    it (not_collapsed compares with a varying reference); the fidelity gate fails it: 0 dB, cosine 0."""
    import keras

    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(alpha=0.35, input_shape=(96, 96, 3), weights=None)
    rng = np.random.default_rng(0)
    cal = rng.random((16, 96, 96, 3), dtype=np.float32)
    val = rng.random((32, 96, 96, 3), dtype=np.float32)
    ref = model.predict(val, verbose=0)
    assert np.all(ref == ref.flat[0]) and ref.flat[0] == pytest.approx(1e-3)  # what the float model gives
    r = edgemp.convert(model, "int8", cal, val, tmp_path, latency_runs=1)
    out = edgemp.inspect_model(r.artifacts["tflite"]).outputs[0]
    assert out.dtype == "int8" and (out.scale, out.zero_point) == (pytest.approx(1 / 256), -128)
    row = r.report["validation"]["outputs"][0]
    assert row["sqnr_db"] == 0.0 and row["cosine"] == 0.0 and row["max_abs_error"] == pytest.approx(1e-3)
    assert not r.passed and "fidelity[output_0]" in _failed(r.report)
