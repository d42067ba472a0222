"""Automatic mixed precision: per-layer analysis with real layer names, the budgeted search, its bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import edgemp
from edgemp import errors
from edgemp.validation.runtime import Runner

from .conftest import CALIBRATION, VALIDATION_FOLDER

pytestmark = pytest.mark.slow  # mixed-precision searches on trained models

KERAS_LAYERS = {"block1_conv1", "block1_conv2", "block2_conv1", "block2_conv2", "fc1", "logits"}


def test_analyze_maps_ops_to_keras_layer_names(model_path: Path, tmp_path: Path) -> None:
    a = edgemp.analyze(model_path, CALIBRATION, VALIDATION_FOLDER, tmp_path, progress=False,
                       class_names=list(edgemp.demo.CLASSES))
    assert a.summary["calibration_runs"] == 1
    ranked = [r for r in a.layers if r["rank"] is not None]
    assert {r["name"] for r in ranked} == KERAS_LAYERS  # every conv/dense by its Keras name, none by position
    conv1 = next(r for r in a.layers if r["name"] == "block1_conv1")
    assert conv1["fused"] == ["block1_bn1", "block1_relu1"] and conv1["op"] == "CONV_2D"
    # int8 rounding noise is ~0.29 of a step; a well-calibrated model stays near it
    assert all(0.1 < r["rmse_over_scale"] < 1.0 for r in a.layers if r["rmse_over_scale"] is not None)
    assert all(r["float_alone"]["accuracy"] is not None and r["int8_alone"]["accuracy"] is not None for r in ranked)
    # per layer: one artifact with it alone in int8, one with it alone in float; plus full int8 and all float (each
    # built here, or its score found in the on-disk cache an earlier run on this model and data wrote)
    assert a.summary["scored_artifacts"] == 2 * len(ranked) + 2
    assert a.summary["quantize_runs"] + a.summary["scores_from_cache"] >= 2 * len(ranked) + 1
    data = json.loads(a.artifacts["json"].read_text())
    assert data["schema_version"] == 1 and len(data["layers"]) == len(a.layers)
    assert a.artifacts["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = a.artifacts["html"].read_text()
    assert "data:image/png;base64," in html and "block2_conv1" in html


def test_analyze_maps_ops_to_pytorch_module_paths(torch_model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    torch = pytest.importorskip("torch")
    a = edgemp.analyze(torch_model, CALIBRATION, None, tmp_path, example_input=torch.zeros(1, 1, 28, 28),
                       max_validation_samples=200, progress=False)
    modules = dict(torch_model.named_modules())
    ranked = [r for r in a.layers if r["rank"] is not None]
    assert all(r["name"] in modules for r in a.layers)
    assert {type(modules[r["name"]]).__name__ for r in ranked if r["weighted"]} == {"Conv2d", "Linear"}
    assert all(r["float_alone"]["accuracy"] is None and r["float_alone"]["sqnr_db"] > 0 for r in ranked)  # no labels
    assert all(r["damage"] is not None for r in ranked)


def test_budget_met_by_full_int8_keeps_everything_int8(model_path: Path, small_heldout, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from edgemp.sources.keras import KerasSource

    seen: list[int] = []
    predict = KerasSource.predict
    monkeypatch.setattr(KerasSource, "predict", lambda self, b: seen.append(len(next(iter(b.values()))))
                        or predict(self, b))
    r = edgemp.convert(model_path, "mixed", CALIBRATION, small_heldout, tmp_path, max_accuracy_drop=0.01,
                       latency_runs=2, progress=False)
    m = r.report["mixed"]
    assert r.passed and m["met"] and m["float_layers"] == [] and len(m["steps"]) == 1
    assert sum(seen) == len(small_heldout[0])  # the float model ran once on the data: validation reused the search's
    assert edgemp.inspect_model(r.artifacts["tflite"]).compute_counts == {"int8": 9}


def test_impossible_budget_fails_with_the_best_result_and_what_it_would_take(model_path: Path, small_heldout,
                                                                              tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    x, _ = small_heldout
    with pytest.raises(errors.MixedPrecisionError) as info:  # unlabelled data, fidelity target above what int8 I/O allows
        edgemp.convert(model_path, "mixed", CALIBRATION, x[:500], tmp_path, min_sqnr_db=60, max_float_layers=2,
                       latency_runs=2, progress=False)
    msg = str(info.value)
    assert "could not meet the budget (SQNR >= 60" in msg and "of 6 layers in float (max 2)" in msg
    # even all layers in float cannot reach 60 dB through int8 I/O: the message says where the loss is
    assert "the loss is in the I/O quantization" in msg and "io_dtype='float'" in msg
    report = info.value.report
    assert report["mixed"]["met"] is False and report["mixed"]["would_take"]
    assert not report.passed and Path(report["artifacts"][0]["path"]).exists()  # the best artifact, for inspection
    assert info.value.exit_code == 3


def test_accuracy_budget_without_labels_explains_the_fidelity_alternative(model_path: Path, tmp_path: Path) -> None:
    with pytest.raises(errors.InputError, match=r"needs labelled validation data.*min_sqnr_db"):
        edgemp.convert(model_path, "mixed", CALIBRATION, None, tmp_path, max_accuracy_drop=0.01, progress=False)
    assert not any(tmp_path.iterdir())


def test_keep_float_name_matching_nothing_lists_close_names(model_path: Path, small_heldout, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(errors.InputError) as info:
        edgemp.convert(model_path, "mixed", CALIBRATION, small_heldout, tmp_path, keep_float=["block1_conv3"],
                       progress=False)
    assert "matches no layer" in str(info.value) and "block1_conv1" in str(info.value)
    assert not any(tmp_path.iterdir())
    with pytest.raises(errors.InputError, match=r"'block1_conv\[' is not a valid regular expression"):
        edgemp.convert(model_path, "mixed", CALIBRATION, small_heldout, tmp_path, never_float=["block1_conv["],
                       progress=False)


def test_keep_float_and_never_float_are_honoured(model_path: Path, small_heldout, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    r = edgemp.convert(model_path, "mixed", CALIBRATION, small_heldout, tmp_path, keep_float=["block1_conv.*"],
                       never_float=["logits"], max_float_layers=3, latency_runs=2, progress=False)
    m = r.report["mixed"]
    assert [n.split(" ")[0] for n in m["float_layers"]] == ["block1_conv1", "block1_conv2"]
    c = edgemp.inspect_model(r.artifacts["tflite"])
    assert c.compute_counts["float32"] == 3  # two convs and the max-pool between them: one closed float region
    assert m["boundaries"] == 2 and c.op_counts["DEQUANTIZE"] == 1 and c.op_counts["QUANTIZE"] == 1
    check = next(ch for ch in r.report["checks"] if ch["name"] == "mixed_regions")
    assert check["passed"]
    out = Runner(r.artifacts["tflite"].read_bytes()).run({"image": small_heldout[0][:64]})[0]
    assert out.shape == (64, 10) and np.isfinite(out).all()


# -- a model full INT8 really hurts (edgemp.demo.build_sensitive_model says how it is made) ---------------------
RAW = {"scale": 1.0}  # the sensitive model takes 0..255 pixels: read the shipped PNGs without rescaling


@pytest.fixture(scope="module")
def sensitive(heldout):  # type: ignore[no-untyped-def]
    from edgemp.demo import sensitive_model_path

    x, y = heldout
    return sensitive_model_path(), (x[:2000] * 255.0, y[:2000])


def test_full_int8_loses_more_than_the_budget_on_the_sensitive_model(sensitive, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path, data = sensitive
    r = edgemp.convert(path, "int8", CALIBRATION, data, tmp_path, preprocessing=RAW, max_accuracy_drop=None,
                       latency_runs=2, progress=False)
    acc = r.report["validation"]["accuracy"]
    assert acc["float_top1"] > 0.85 and acc["drop"] > 0.015  # far more than a point: the honest failure case


def test_mixed_meets_the_budget_with_few_float_layers(sensitive, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from edgemp.mixed.executor import Executor

    real, calls = Executor.calibrate, []  # one calibration, however many shards (threads) it runs in
    monkeypatch.setattr(Executor, "calibrate", lambda *a, **k: calls.append(1) or real(*a, **k))
    path, data = sensitive
    r = edgemp.convert(path, "mixed", CALIBRATION, data, tmp_path, preprocessing=RAW, max_accuracy_drop=0.003,
                       max_float_layers=4, latency_runs=5, progress=False)
    assert len(calls) == 1  # the whole search re-uses one calibration
    m = r.report["mixed"]
    assert r.passed and m["met"] and m["calibration_runs"] == 1
    assert 0 < len(m["float_layers"]) < 4 and set(m["float_layers"]) <= {"cat", "logits", "embed"}
    acc = r.report["validation"]["accuracy"]
    assert acc["drop"] <= 0.003
    assert [s["accepted"] for s in m["steps"]][0] and m["steps"][-1]["met"]
    c = edgemp.inspect_model(r.artifacts["tflite"])
    assert c.compute_counts.get("float32", 0) == len(m["float_ops"]) and c.compute_counts["int8"] >= 15
    top = m["layers"][0]
    assert top["name"] in ("cat", "logits") and top["kept_float"]  # the table ranks the culprit first, by name
    x, y = data
    out = Runner(r.artifacts["tflite"].read_bytes()).run({"image": x[:500]})[0]
    assert float((out.argmax(1) == y[:500]).mean()) > 0.85
    for suffix in ("md", "png", "html"):
        assert r.artifacts[f"sensitivity_{suffix}"].exists()


def test_a_nan_gain_ranks_last_whatever_order_candidates_come_in() -> None:
    """A candidate whose score is NaN must neither win nor, by the comparisons NaN breaks, make the choice depend on
    the order the candidates were scored in (threads and Ray finish in any order)."""
    import itertools
    import math
    from types import SimpleNamespace

    from edgemp.mixed.scoring import Budget
    from edgemp.mixed.search import _choose

    class Chain:  # every region contiguous: the tie-break on boundaries is neutral
        def close(self, region: frozenset[str]) -> frozenset[str]:
            return region

        def boundaries(self, region: frozenset[str]) -> int:
            return 1

    layers = [SimpleNamespace(tensor=t, index=i) for i, t in enumerate("abcd")]
    gains = {"a": (math.nan, math.nan), "b": (0.02, 3.0), "c": (math.nan, 9.0), "d": (0.01, 8.0)}
    for budget in (Budget(max_accuracy_drop=0.01), Budget(min_sqnr_db=30.0)):
        picked = {_choose(Chain(), budget, frozenset(), list(p), gains).tensor for p in itertools.permutations(layers)}
        assert picked == {"b"}
    only_nan = {t: (math.nan, math.nan) for t in "abcd"}
    assert _choose(Chain(), Budget(min_sqnr_db=30.0), frozenset(), layers, only_nan).tensor == "a"
