"""The final validation's batches on several interpreters side by side (edgemp.validation.evaluate.run_batches): the
outputs one interpreter gives, bit for bit, whatever the batch size the graph accepts."""

from __future__ import annotations

import numpy as np
import pytest

from edgemp.config import RuntimeOptions
from edgemp.validation.data import ValidationData
from edgemp.validation.evaluate import BATCH, evaluate, run_batches
from edgemp.validation.runtime import Runner


def _tflite(fixed_batch: bool) -> bytes:
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    inp = keras.Input((12, 12, 3), batch_size=1 if fixed_batch else None, name="image")
    x = keras.layers.Conv2D(8, 3, activation="relu")(inp)
    x = keras.layers.Conv2D(8, 3, strides=2)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inp, keras.layers.Dense(5)(x))
    return tf.lite.TFLiteConverter.from_keras_model(model).convert()


@pytest.mark.parametrize("fixed_batch", [False, True])
def test_batches_on_two_interpreters_give_the_outputs_of_one(fixed_batch: bool) -> None:
    artifact = _tflite(fixed_batch)
    x = np.random.default_rng(0).normal(size=(2 * BATCH + 7, 12, 12, 3)).astype(np.float32)  # 3 batches, one short
    inputs = {"image": x}
    opts = RuntimeOptions(latency_runs=0)
    made: list[Runner] = []

    def another() -> Runner:
        made.append(Runner(artifact, opts))
        return made[-1]

    one = run_batches(Runner(artifact, opts), another, inputs, lambda b: b, 1, False)
    first = Runner(artifact, opts)
    two = run_batches(first, another, inputs, lambda b: b, 2, False)
    assert len(made) <= 1  # at most one runner per thread: the caller's, and one more
    assert [o.shape for o in one] == [(len(x), 5)] and all(np.array_equal(a, b) for a, b in zip(one, two, strict=True))
    assert first._fed  # the runner the caller keeps (latency, delegate report) ran the data too


def test_evaluate_reports_the_same_on_one_or_two_interpreters() -> None:
    artifact = _tflite(False)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(150, 12, 12, 3)).astype(np.float32)
    ref = Runner(artifact, RuntimeOptions()).run({"image": x})
    ref = [r + rng.normal(scale=1e-3, size=r.shape).astype(np.float32) for r in ref]
    data = ValidationData({"image": x}, None, None, "arrays", [])
    opts = RuntimeOptions(latency_runs=0)
    a, ca = evaluate(artifact, None, data, opts, reference_outputs=ref, interpreters=1)
    b, cb = evaluate(artifact, None, data, opts, reference_outputs=ref, interpreters=2)
    assert a["outputs"] == b["outputs"] and [c.to_dict() for c in ca] == [c.to_dict() for c in cb]
