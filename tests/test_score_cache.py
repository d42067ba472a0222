"""Scores of candidates kept on disk (edgemp.mixed.cache): a second analysis, or a mixed search after an analysis, on
the same model and data scores nothing again and gives the same result; a user metric is never cached."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import edgemp
from edgemp.mixed.cache import ScoreCache, data_key

from .models import N_TRAIN, digits, keras_digits_cnn


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("EDGEMP_CACHE", str(root))
    monkeypatch.delenv("EDGEMP_SCORE_CACHE", raising=False)
    return root / "scores"


def test_second_analysis_and_the_mixed_search_reuse_scores(cache: Path, tmp_path: Path) -> None:
    x, y = digits()
    model = keras_digits_cnn()
    val = (x[N_TRAIN:], y[N_TRAIN:])
    first = edgemp.analyze(model, x[:100], val, tmp_path / "a", progress=False)
    assert first.summary["scores_from_cache"] == 0 and first.summary["scored_artifacts"] > 3
    files = list(cache.glob("*.json"))
    assert len(files) == 1 and len(json.loads(files[0].read_text())) >= 3
    second = edgemp.analyze(model, x[:100], val, tmp_path / "b", progress=False)
    assert second.summary["scores_from_cache"] == second.summary["scored_artifacts"] == first.summary["scored_artifacts"]
    assert second.layers == first.layers  # the same table, no candidate run again
    mixed = edgemp.convert(model, "mixed", x[:100], val, tmp_path / "m", progress=False,
                           runtime=edgemp.RuntimeOptions(latency_runs=1))
    assert mixed.report["mixed"]["scores_from_cache"] >= 1  # at least the full-int8 candidate analysis scored
    other = edgemp.analyze(model, x[:100], (x[N_TRAIN:-10], y[N_TRAIN:-10]), tmp_path / "c", progress=False)
    assert other.summary["scores_from_cache"] == 0  # other validation data: other scores


def test_a_user_metric_and_the_switch_turn_it_off(cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = digits()
    model = keras_digits_cnn()
    val = (x[N_TRAIN:], y[N_TRAIN:])

    def metric(outputs: dict, labels: object) -> float:
        return float((outputs["output_0"].argmax(-1) == labels).mean())

    r = edgemp.convert(model, "mixed", x[:100], val, tmp_path / "m", progress=False,
                       gate=edgemp.GateOptions(metric=metric), runtime=edgemp.RuntimeOptions(latency_runs=1))
    assert r.report["mixed"]["scores_from_cache"] == 0 and not list(cache.glob("*.json"))
    monkeypatch.setenv("EDGEMP_SCORE_CACHE", "0")
    edgemp.analyze(model, x[:100], val, tmp_path / "a", progress=False)
    assert not list(cache.glob("*.json"))


def test_keys_and_size_limit(tmp_path: Path) -> None:
    import numpy as np

    a = data_key([{"x": np.zeros((2, 3), np.float32)}, [np.ones(2)], np.arange(3), ["t", 1], None, 1, True])
    assert a == data_key([{"x": np.zeros((2, 3), np.float32)}, [np.ones(2)], np.arange(3), ["t", 1], None, 1, True])
    assert a != data_key([{"x": np.zeros((2, 3), np.float32)}, [np.ones(2)], np.arange(3), ["t", 1], None, 2, True])
    assert data_key([lambda: 0]) is None  # code cannot be keyed
    for i in range(5):
        c = ScoreCache(f"k{i}", root=tmp_path, limit_bytes=300)
        c.put("d" * 64, {"accuracy": 0.5, "sqnr_db": float("inf"), "cosine": 1.0, "top1_agreement": None,
                         "error": None})
        c.flush()
    kept = sorted(p.name for p in tmp_path.glob("*.json"))
    assert len(kept) < 5 and "k4.json" in kept  # the oldest went, the newest stays
    assert ScoreCache("k4", root=tmp_path).get("d" * 64)["sqnr_db"] == float("inf")
