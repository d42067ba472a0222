"""What each precision stores, checked on the artifact itself (the rules benchmarks/results/zoo.md measured against
the official converters)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import edgemp
from edgemp.quantize.recipes import DYNAMIC_MIN_WEIGHTS


def _model():  # type: ignore[no-untyped-def]
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((16, 16, 3), name="image")
    x = keras.layers.Conv2D(8, 3, name="small")(inp)  # 216 weights: below the dynamic-int8 threshold
    x = keras.layers.BatchNormalization(name="bn")(keras.layers.ReLU()(x))  # after the ReLU: not folded, MUL/ADD stay
    x = keras.layers.Conv2D(64, 3, name="big")(x)  # 4,608 weights
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, keras.layers.Dense(10, name="head")(x))


def _data() -> np.ndarray:
    return np.random.default_rng(0).random((16, 16, 16, 3), dtype=np.float32)


def test_fp16_stores_every_float_constant_as_float16(tmp_path: Path) -> None:
    r = edgemp.convert(_model(), "fp16", validation=_data(), output_dir=tmp_path,
                       runtime=edgemp.RuntimeOptions(latency_runs=1))
    assert r.passed, r.report.failures
    c = edgemp.inspect_model(r.artifacts["tflite"])
    float_consts = [t.name for o in c.ops for t in o.inputs if t.constant and t.dtype == "float32"]
    assert float_consts == []  # biases and the batch norm's MUL/ADD constants too, not only conv/dense weights
    assert c.compute_counts["weight-dequantize"] > c.weight_dtypes["float16"]


def test_dynamic_int8_keeps_small_weights_in_float(tmp_path: Path) -> None:
    r = edgemp.convert(_model(), "dynamic-int8", validation=_data(), output_dir=tmp_path,
                       runtime=edgemp.RuntimeOptions(latency_runs=1))
    assert r.passed, r.report.failures
    c = edgemp.inspect_model(r.artifacts["tflite"])
    by_size = {int(np.prod(w.shape)): w.dtype for _, w in c.weights()}
    assert all((dtype == "int8") == (size >= DYNAMIC_MIN_WEIGHTS) for size, dtype in by_size.items()), by_size
    assert c.compute_counts.get("hybrid-int8", 0) >= 1
