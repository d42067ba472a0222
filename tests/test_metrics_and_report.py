"""Metrics and collapse detection on constructed outputs; the report's stable keys and renderings."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from edgemp.validation.metrics import collapse_reasons, compare, topk

from .conftest import REPO


def _ref(n: int = 100, classes: int = 10) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(n, classes)).astype(np.float32)


def test_identical_outputs() -> None:
    r = _ref()
    m = compare(r, r.copy())
    assert m["max_abs_error"] == 0 and m["sqnr_db"] == float("inf") and m["cosine"] == 1.0 and m["top1_agreement"] == 1.0
    assert collapse_reasons(r, r, m) == []


def test_sqnr_and_error_values() -> None:
    r = _ref()
    noise = np.full_like(r, 0.01)
    m = compare(r, r + noise)
    assert np.isclose(m["max_abs_error"], 0.01) and np.isclose(m["rmse"], 0.01, atol=1e-6)
    expected = 10 * np.log10(np.sum(r.astype(np.float64) ** 2) / np.sum(noise.astype(np.float64) ** 2))
    assert np.isclose(m["sqnr_db"], expected, atol=1e-3)


def test_collapse_constant_nan_and_chance() -> None:
    r = _ref()
    const = np.tile(r[:1], (len(r), 1))
    assert any("constant" in x for x in collapse_reasons(r, const, compare(r, const)))
    nan = r.copy()
    nan[3, 3] = np.nan
    assert collapse_reasons(r, nan, compare(r, nan)) == ["NaN/Inf in the outputs"]
    shuffled = r[np.random.default_rng(1).permutation(len(r))]
    m = compare(r, shuffled)
    assert m["top1_agreement"] < 0.2 and any("chance" in x for x in collapse_reasons(r, shuffled, m))


def test_topk() -> None:
    logits = np.array([[0.1, 0.9, 0.0], [0.8, 0.15, 0.05]])
    assert topk(logits, np.array([1, 1]), 1) == 0.5 and topk(logits, np.array([1, 1]), 2) == 1.0


def test_report_keys_are_the_documented_ones(conversions) -> None:  # type: ignore[no-untyped-def]
    result = conversions("int8")
    data = json.loads(result.artifacts["report_json"].read_text())
    first_cells = re.findall(r"^\| (`[^|]+) \|", (REPO / "docs" / "report.md").read_text(), re.M)
    documented = {name.split(".")[0] for cell in first_cells for name in re.findall(r"`([a-z_0-9.\[\]]+)`", cell)}
    assert set(data) == {d.removesuffix("[]") for d in documented}
    assert data["schema_version"] == 1
    md = result.artifacts["report_md"].read_text()
    assert "PASSED" in md and "| output_0 |" in md and "Host latency" in md
    assert Path(data["artifacts"][0]["path"]) == result.artifacts["tflite"]
