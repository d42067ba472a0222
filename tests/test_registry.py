"""Every registered source × target × precision, on tiny models: a new source, target or precision is tested here
without new test code (a new source only needs its tiny model in TINY below, which the first test demands)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import edgemp
from edgemp.precisions import registered_precisions
from edgemp.sources import registered_sources, source_limits
from edgemp.targets import get_target, registered_targets

RELAXED = edgemp.GateOptions(min_sqnr_db=10, min_cosine=0.9)  # untrained tiny models: the pipeline is under test
RUNTIME = edgemp.RuntimeOptions(latency_runs=1)


def _keras() -> tuple[Any, dict[str, Any]]:
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((12, 12, 3), name="image")
    x = keras.layers.Conv2D(32, 3, activation="relu", name="conv")(inp)  # > 512 weights each: Core ML compresses them
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inp, keras.layers.Dense(20, name="logits")(x), name="tiny_keras"), {}


def _torch() -> tuple[Any, dict[str, Any]]:
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(32, 20)).eval()
    return model, {"example_input": torch.zeros(1, 3, 12, 12)}


def _torch_qat() -> tuple[Any, dict[str, Any]]:
    import torch

    model, kw = _torch()
    return edgemp.prepare_qat(model, kw["example_input"], _data("pytorch"), progress=False), {}


TINY = {"keras": _keras, "pytorch": _torch, "pytorch-qat": _torch_qat}


def _data(source: str) -> np.ndarray:
    x = np.random.default_rng(1).random((24, 12, 12, 3), dtype=np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if source.startswith("pytorch") else x


def _refused(source: str, precision: str, target: str) -> bool:
    """A source limited to some precisions/targets must refuse the others with an InputError, before converting."""
    limits = source_limits(source)
    return limits is not None and (precision not in limits[0] or target not in limits[1])


def test_every_registered_source_has_a_tiny_model_here() -> None:
    assert set(registered_sources()) <= set(TINY), "add a tiny model for the new source to TINY"


@pytest.mark.parametrize("precision", [p.value for p in registered_precisions()])
@pytest.mark.parametrize("source", registered_sources())
def test_every_precision_from_every_source_to_tflite(source: str, precision: str, tmp_path: Path) -> None:
    model, kw = TINY[source]()
    data = _data(source)
    if _refused(source, precision, "tflite"):
        with pytest.raises(edgemp.errors.InputError):
            edgemp.convert(model, precision, data, data, tmp_path, targets=["tflite"], runtime=RUNTIME, **kw)
        assert not any(tmp_path.iterdir())
        return
    r = edgemp.convert(model, precision, data, data, tmp_path, targets=["tflite"], gate=RELAXED, runtime=RUNTIME, **kw)
    assert r.passed, r.report.failures
    assert r.report["precision"] == precision and r.report["targets"] == ["tflite"]
    assert [c["name"] for c in r.report["checks"] if not c["passed"]] == []
    census = edgemp.inspect_model(r.artifacts["tflite"])
    assert census.compute_counts == r.report["census"]["compute_counts"]
    assert r.report["io_dtype"] == edgemp.Precision(precision).spec.io_label(edgemp.IODType.QUANTIZED)


def _coreml_cases() -> list[Any]:
    cases = []
    for source in registered_sources():
        for p in registered_precisions():
            if p.spec.coreml is None:
                continue
            marks = [] if p.value == "fp16" else [pytest.mark.slow]
            cases.append(pytest.param(source, p.value, marks=marks, id=f"{source}-{p.value}"))
    return cases


@pytest.mark.parametrize("source, precision", _coreml_cases())
def test_every_precision_with_a_core_ml_counterpart_to_core_ml_alone(source: str, precision: str,
                                                                     tmp_path: Path) -> None:
    """Core ML asked for alone (an iOS app wants no .tflite): mixed still gets its fp32 layers from the TFLite
    search, run without writing the .tflite."""
    pytest.importorskip("coremltools")
    model, kw = TINY[source]()
    data = _data(source)
    if _refused(source, precision, "coreml"):
        with pytest.raises(edgemp.errors.InputError):
            edgemp.convert(model, precision, data, data, tmp_path, targets=["coreml"], runtime=RUNTIME, **kw)
        return
    r = edgemp.convert(model, precision, data, data, tmp_path, targets=["coreml"], gate=RELAXED, runtime=RUNTIME, **kw)
    assert r.passed, r.report.failures
    assert set(r.artifacts) >= {"coreml", "report_json"} and "tflite" not in r.artifacts
    assert not list(tmp_path.glob("*.tflite"))
    cm = r.report["coreml"]
    # a QAT module's Core ML form is W8A8 from the scales it learned, whatever the precision's usual counterpart
    assert cm["precision"] == ("w8a8" if source == "pytorch-qat" else edgemp.Precision(precision).spec.coreml)
    assert r.report["census"] is None and r.report["validation"] is None
    assert {"coreml_vs_source"} == set(cm["parity"]["outputs"][0]) - {"output"}


@pytest.mark.parametrize("target", registered_targets())
def test_every_target_describes_itself_for_bundles(target: str) -> None:
    t = get_target(target)
    assert t.name == target and t.format and t.engine
    assert callable(t.plan) and callable(t.build) and callable(t.bundle_entry)
