"""The Keras float conversion without Keras' export archive gives from_keras_model's bytes (edgemp.sources.keras_export)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from edgemp.sources.keras import KerasSource, _with_batch, convert_with_tf, import_tf
from edgemp.sources.keras_export import keras_converter


def _models() -> dict[str, object]:
    import_tf()
    import keras

    keras.utils.set_random_seed(0)
    i = keras.Input((12, 12, 3), name="image")
    x = keras.layers.Conv2D(8, 3, padding="same")(i)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.DepthwiseConv2D(3, activation="swish")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    cnn = keras.Model(i, keras.layers.Dense(4)(x), name="cnn")
    t = keras.Input((6, 16))
    a = keras.layers.MultiHeadAttention(2, 8)(t, t)
    y = keras.layers.LayerNormalization()(a + t)
    attention = keras.Model(t, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling1D()(y)), name="attention")
    s = keras.Input((5, 4))
    lstm = keras.Model(s, keras.layers.Dense(2)(keras.layers.LSTM(8, unroll=True)(s)), name="lstm")
    p, q = keras.Input((8,), name="p"), keras.Input((4,), name="q")
    h = keras.layers.Concatenate()([p, q])
    two = keras.Model([p, q], {"boxes": keras.layers.Dense(4)(h), "scores": keras.layers.Dense(3, activation="softmax")(h)},
                      name="two")
    seq = keras.Sequential([keras.Input((10,)), keras.layers.Dense(5), keras.layers.BatchNormalization(),
                            keras.layers.ReLU()], name="seq")
    for m in (cnn, attention, lstm, two, seq):  # batch-norm statistics away from the initial 0/1
        xs = [np.random.default_rng(1).normal(size=(16, *t.shape[1:])).astype(np.float32) for t in m.inputs]
        m(xs[0] if len(xs) == 1 else xs, training=True)
    return {m.name: m for m in (cnn, attention, lstm, two, seq)}


@pytest.fixture(scope="module")
def models() -> dict[str, object]:
    return _models()


@pytest.mark.parametrize("name", ["cnn", "attention", "lstm", "two", "seq"])
def test_same_bytes_as_from_keras_model_without_it(name: str, models: dict[str, object], monkeypatch) -> None:
    tf = import_tf()
    model = models[name]
    official = bytes(tf.lite.TFLiteConverter.from_keras_model(_with_batch(model, 1)).convert())

    def refused(*a, **k):
        raise AssertionError("from_keras_model was called")

    monkeypatch.setattr(tf.lite.TFLiteConverter, "from_keras_model", refused)
    assert KerasSource(model).to_float_tflite(1) == official  # tensor names, signatures, conversion metadata


def test_a_model_it_cannot_export_goes_the_official_way(caplog) -> None:
    tf = import_tf()
    import keras

    class Scaled(keras.Model):  # subclassed: no fixed input signature to trace
        def __init__(self) -> None:
            super().__init__()
            self.dense = keras.layers.Dense(3)

        def call(self, x):
            return self.dense(x) * 2.0

    model = Scaled()
    model(np.zeros((1, 6), np.float32))
    calls = []
    real = tf.lite.TFLiteConverter.from_keras_model
    try:
        tf.lite.TFLiteConverter.from_keras_model = lambda m: calls.append(m) or real(m)
        with caplog.at_level(logging.DEBUG, logger="edgemp.sources.keras_export"), \
                keras_converter(tf, model) as make:
            out = convert_with_tf(make, "Scaled")
    finally:
        tf.lite.TFLiteConverter.from_keras_model = real
    assert calls == [model] and out == bytes(real(model).convert())
    assert "using TFLiteConverter.from_keras_model" in caplog.text
