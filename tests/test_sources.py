"""Model sources beyond .keras: .h5 files, SavedModel directories, multi-input models."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import edgemp

from .conftest import CALIBRATION


def test_h5_file(keras_model, small_heldout, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    keras_model.save(tmp_path / "model.h5")
    x, y = small_heldout
    r = edgemp.convert(tmp_path / "model.h5", "int8", CALIBRATION, (x[:500], y[:500]), tmp_path / "out", latency_runs=2)
    assert r.passed, r.report.failures
    assert r.report["model"]["path"].endswith("model.h5")


def test_savedmodel_directory(keras_model, small_heldout, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    keras_model.export(tmp_path / "saved", verbose=False)
    x, y = small_heldout
    r = edgemp.convert(tmp_path / "saved", "int8", CALIBRATION, (x[:500], y[:500]), tmp_path / "out", latency_runs=2)
    assert r.passed, r.report.failures
    assert r.report["model"]["source"] == "saved_model"
    assert r.report["validation"]["accuracy"]["drop"] <= 0.02


def test_multi_input_model_with_dict_calibration(tmp_path: Path) -> None:
    import keras

    keras.utils.set_random_seed(0)
    img = keras.Input((8, 8, 3), name="image")
    meta = keras.Input((4,), name="meta")
    x = keras.layers.Conv2D(8, 3, activation="relu")(img)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Concatenate()([x, keras.layers.Dense(8, activation="relu")(meta)])
    model = keras.Model([img, meta], keras.layers.Dense(5)(x))
    rng = np.random.default_rng(0)
    data = {"image": rng.random((64, 8, 8, 3), dtype=np.float32), "meta": rng.random((64, 4), dtype=np.float32)}
    npz = tmp_path / "cal.npz"
    np.savez(npz, **data)
    r = edgemp.convert(model, "int8", npz, data, tmp_path / "out", latency_runs=2)
    assert r.passed, r.report.failures
    c = edgemp.inspect_model(r.artifacts["tflite"])
    assert [s.name for s in c.inputs] == ["image", "meta"] and {s.dtype for s in c.inputs} == {"int8"}
    assert r.report["validation"]["outputs"][0]["cosine"] > 0.99


def test_keras_reference_runs_traced_and_falls_back_to_eager() -> None:
    """The float reference goes through one traced graph (any batch size) and gives the eager outputs; a layer that
    cannot be traced (Python reading a tensor's value) runs eagerly instead of failing the conversion."""
    import keras

    from edgemp.sources.keras import KerasSource

    keras.utils.set_random_seed(0)
    img, meta = keras.Input((8, 8, 3), name="image"), keras.Input((4,), name="meta")
    x = keras.layers.Flatten()(keras.layers.Conv2D(4, 3)(img))
    model = keras.Model([img, meta], keras.layers.Dense(5)(keras.layers.Concatenate()([x, meta])))
    rng = np.random.default_rng(0)
    batch = {"image": rng.normal(size=(7, 8, 8, 3)).astype(np.float32), "meta": rng.normal(size=(7, 4)).astype(np.float32)}
    src = KerasSource(model)
    for n in (7, 3):  # two batch sizes (the second in float64, cast as Keras casts it), one trace
        part = {k: v[:n] if n == 7 else v[:n].astype(np.float64) for k, v in batch.items()}
        np.testing.assert_allclose(src.predict(part)[0], np.asarray(model([part["image"], part["meta"]])), rtol=1e-5,
                                   atol=1e-6)
    assert src._traced.experimental_get_tracing_count() == 1  # noqa: SLF001 - the traced path, traced once

    class Eager(keras.layers.Layer):
        def call(self, v):  # type: ignore[no-untyped-def]
            return v * float(np.asarray(v).std())  # needs a concrete value: not traceable

        def compute_output_shape(self, shape):  # type: ignore[no-untyped-def]
            return shape

    inp = keras.Input((4,), name="v")
    eager = KerasSource(keras.Model(inp, Eager()(inp)))
    v = rng.normal(size=(5, 4)).astype(np.float32)
    np.testing.assert_allclose(eager.predict({"v": v})[0], v * v.std(), rtol=1e-5)
    assert eager._traced is False  # noqa: SLF001 - remembered: no second trace attempt
