"""The float reference outputs and the per-tensor errors kept on disk (edgemp._diskcache): a second session on the
same model file and data runs neither the float model nor the preserved-tensor pass again and gets the same values;
other data or another int8 model misses; EDGEMP_ARTIFACT_CACHE=0 turns it off; a damaged entry is a miss."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import edgemp
from edgemp.config import RuntimeOptions
from edgemp.mixed import sensitivity
from edgemp.mixed.session import MixedSession
from edgemp.sources import load_source
from edgemp.sources.keras import KerasSource
from edgemp.validation.data import ValidationData

from .models import N_TRAIN, digits, keras_digits_cnn


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("EDGEMP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("EDGEMP_ARTIFACT_CACHE", "1")
    monkeypatch.setenv("EDGEMP_SCORE_CACHE", "0")  # scores are edgemp.mixed.cache's business (test_score_cache.py)
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "digits.keras"
    keras_digits_cnn().save(path)
    return path


@pytest.fixture()
def calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """How often the float model and the preserved-tensor comparison ran."""
    seen = {"predict": 0, "tensor_errors": 0}
    predict, errors = KerasSource.predict, sensitivity.tensor_errors

    def counted_predict(self: KerasSource, batch: dict[str, np.ndarray]) -> list[np.ndarray]:
        seen["predict"] += 1
        return predict(self, batch)

    def counted_errors(*a: Any, **k: Any) -> Any:
        seen["tensor_errors"] += 1
        return errors(*a, **k)

    monkeypatch.setattr(KerasSource, "predict", counted_predict)
    monkeypatch.setattr(sensitivity, "tensor_errors", counted_errors)
    return seen


def session(model: Any, x: np.ndarray) -> MixedSession:
    """A session as analyze/convert -p mixed make it, in a fresh source (a second process loads the file again)."""
    from edgemp.quantize import calibrate

    source = load_source(model)
    tflite = source.to_float_tflite(1)
    vdata = ValidationData({"image": x}, None, None, "test", [])
    return MixedSession(source, tflite, lambda: calibrate(tflite, [{"image": s[None]} for s in x[:50]]), vdata,
                        RuntimeOptions(latency_runs=0))


def test_the_float_reference_is_reused(cache: Path, model_file: Path, calls: dict[str, int],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    x = digits()[0][N_TRAIN:N_TRAIN + 150]
    first = session(model_file, x)
    ran = calls["predict"]
    assert ran == 3 and first.reused["float_reference"] is False  # 150 samples in batches of 64
    second = session(model_file, x)
    assert calls["predict"] == ran and second.reused["float_reference"] is True
    a, b = first.scorer.reference, second.scorer.reference
    assert len(a) == len(b) == 1
    assert all(u.dtype == v.dtype and u.shape == v.shape and np.array_equal(u, v) for u, v in zip(a, b, strict=True))
    changed = x.copy()
    changed[0, 0, 0, 0] += 0.5
    assert session(model_file, changed).reused["float_reference"] is False and calls["predict"] == 2 * ran
    # an in-memory model is not keyed (its layers' code is not in its bytes): it runs every time
    model = load_source(model_file).model
    assert session(model, x).reused["float_reference"] is False and calls["predict"] == 3 * ran
    assert session(model, x).reused["float_reference"] is False and calls["predict"] == 4 * ran
    for f in (cache / "reference").iterdir():
        f.write_bytes(f.read_bytes()[:100])  # truncated: a miss, then written again
    assert session(model_file, x).reused["float_reference"] is False and calls["predict"] == 5 * ran
    assert session(model_file, x).reused["float_reference"] is True and calls["predict"] == 5 * ran
    monkeypatch.setenv("EDGEMP_ARTIFACT_CACHE", "0")
    assert session(model_file, x).reused["float_reference"] is False and calls["predict"] == 6 * ran


def test_tensor_errors_are_reused(cache: Path, model_file: Path, calls: dict[str, int],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    x = digits()[0][N_TRAIN:N_TRAIN + 40]
    s = session(model_file, x)
    int8 = s.make(frozenset())
    fresh = s.tensor_errors(int8, 16)
    assert calls["tensor_errors"] == 1 and s.reused["tensor_errors"] is False and fresh
    assert any(e.sqnr_db is not None and e.rmse_over_scale is not None for e in fresh.values())
    again = session(model_file, x)
    cached = again.tensor_errors(int8, 16)
    assert calls["tensor_errors"] == 1 and again.reused["tensor_errors"] is True
    assert cached == fresh and list(cached) == list(fresh)  # every field, in the same order
    other = s.make(s.graph.close({s.graph.ranked[0].tensor}))  # another int8 model: its own errors
    assert other != int8
    s.tensor_errors(other, 16)
    assert calls["tensor_errors"] == 2 and s.reused["tensor_errors"] is False
    s.tensor_errors(int8, 8)  # other samples
    assert calls["tensor_errors"] == 3 and s.reused["tensor_errors"] is False
    for f in (cache / "tensor_errors").iterdir():
        f.write_text('[["no such tensor", {"rmse": 1.0}]]')  # well-formed, but not this graph's: a miss
    assert s.tensor_errors(int8, 16) == fresh and calls["tensor_errors"] == 4 and s.reused["tensor_errors"] is False
    monkeypatch.setenv("EDGEMP_ARTIFACT_CACHE", "0")
    assert s.tensor_errors(int8, 16) == fresh and calls["tensor_errors"] == 5 and s.reused["tensor_errors"] is False


def test_mixed_after_analyze_runs_neither_again(cache: Path, model_file: Path, calls: dict[str, int],
                                               tmp_path: Path) -> None:
    """The brief's case end to end: `analyze` then `convert -p mixed` on the same file and data; the report says what
    came from the cache."""
    x, y = digits()
    val = (x[N_TRAIN:N_TRAIN + 200], y[N_TRAIN:N_TRAIN + 200])
    a = edgemp.analyze(model_file, x[:100], val, tmp_path / "a", progress=False)
    assert a.summary["reference_from_cache"] is False and a.summary["tensor_errors_from_cache"] is False
    before = dict(calls)
    assert before["tensor_errors"] == 1
    m = edgemp.convert(model_file, "mixed", x[:100], val, tmp_path / "m", progress=False,
                       runtime=edgemp.RuntimeOptions(latency_runs=1))
    section = m.report["mixed"]
    assert section["reference_from_cache"] is True and section["tensor_errors_from_cache"] is True
    assert calls == before  # no float model run (the final validation reuses the search's reference), no tensor pass


def test_damaged_entries_are_misses() -> None:
    """np.load opens an .npz as a zip: a file cut short raised zipfile.BadZipFile through the statistics cache. Any
    JSON that is not a list of (tensor, numeric fields) is a miss too."""
    from edgemp import _diskcache

    stats = _diskcache.statistics_to_bytes({"t": {"min": np.zeros(3, np.float32), "max": np.ones(3, np.float32)}})
    arrays = _diskcache.arrays_to_bytes([np.arange(6, dtype=np.float16).reshape(2, 3), np.ones(2, np.int64)])
    assert stats is not None and arrays is not None
    assert _diskcache.statistics_from_bytes(stats)["t"]["max"].tolist() == [1.0, 1.0, 1.0]
    back = _diskcache.arrays_from_bytes(arrays)
    assert back is not None and [(a.dtype, a.shape) for a in back] == [(np.float16, (2, 3)), (np.int64, (2,))]
    for data in (stats, arrays):
        for cut in (10, len(data) // 2, len(data) - 1):
            assert _diskcache.statistics_from_bytes(data[:cut]) is None
            assert _diskcache.arrays_from_bytes(data[:cut]) is None
    assert _diskcache.arrays_to_bytes([np.array(["a"], object)]) is None  # would need pickle: not cached
    for bad in (b"\xff{", b'{"a": 1}', b'[["t", 1]]', b'[["t", {"rmse": "x"}]]', b"[1]"):
        assert _diskcache.errors_from_bytes(bad, None) is None


def test_tensor_errors_on_threads_equal_one_thread(model_file: Path) -> None:
    """The preserved-tensor pass runs its fixed shards side by side with more threads: same numbers, bit for bit."""
    s = session(model_file, digits()[0][N_TRAIN:N_TRAIN + 40])
    int8, samples = s.make(frozenset()), s.samples(40)  # three shards (16, 16, 8)
    one = sensitivity.tensor_errors(s.float_tflite, int8, samples, s.graph, threads=1)
    two = sensitivity.tensor_errors(s.float_tflite, int8, samples, s.graph, threads=2)
    assert one and {t: e.to_dict() for t, e in one.items()} == {t: e.to_dict() for t, e in two.items()}
    assert all(e.sqnr_db is not None and e.rmse is not None for e in one.values())


def test_the_float_reference_runs_beside_the_float_conversion(model_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With more than one thread, a TensorFlow source's float reference starts on its own thread before the float
    conversion and the session takes its outputs: the same arrays it would have computed itself. One thread, or a
    torch source (torch.export is not made to run beside the forward), runs it in the session as before."""
    import threading

    from edgemp.mixed.session import float_reference, reference_ahead
    from edgemp.sources.torch import TorchSource

    monkeypatch.setenv("EDGEMP_ARTIFACT_CACHE", "0")
    where: list[str] = []
    predict = KerasSource.predict
    monkeypatch.setattr(KerasSource, "predict",
                        lambda self, b: where.append(threading.current_thread().name) or predict(self, b))
    source = load_source(model_file)
    vdata = ValidationData({"image": digits()[0][N_TRAIN:N_TRAIN + 100]}, None, None, "test", [])
    assert reference_ahead(source, vdata, threads=1) is None and not TorchSource.predicts_during_conversion
    ahead = reference_ahead(source, vdata, threads=2)
    assert ahead is not None
    tflite = source.to_float_tflite(1)  # meanwhile
    outputs, reused = ahead.result()
    assert not reused and where and all(n.startswith("edgemp-reference") for n in where)
    here, _ = float_reference(source, vdata, False)
    np.testing.assert_array_equal(outputs[0], here[0])
    s = MixedSession(source, tflite, lambda: {}, vdata, RuntimeOptions(latency_runs=0), reference=ahead)
    assert s.scorer.reference[0] is outputs[0]
