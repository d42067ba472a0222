"""Shared fixtures: the example CNN trained on real Fashion-MNIST (cached), real held-out data, conversions.

Conversions are session-scoped: each precision is converted once and several tests assert on it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# Tests import TensorFlow and torch directly, in any order; Triton (torch._dynamo) segfaults when it loads after
# TensorFlow. `import edgemp` no longer settles this for the whole process (users keep torch.compile), so the test
# process does it itself, first.
from edgemp._compat import prepare_torch_import  # noqa: E402

prepare_torch_import()

REPO = Path(__file__).resolve().parents[1]
# Tests count conversions and calibrations: the on-disk reuse of both (edgemp._diskcache) is off unless a test turns it
# on (tests/test_scale.py does, in its own cache folder).
os.environ.setdefault("EDGEMP_ARTIFACT_CACHE", "0")
CALIBRATION = REPO / "calibration_data" / "fashion_mnist"
VALIDATION_FOLDER = REPO / "examples" / "data" / "fashion_mnist_val"


@pytest.fixture(autouse=True)
def _seeded() -> None:
    """Every test starts from the same random state, whichever tests ran before it on its xdist worker: a model built
    from random weights (torchvision with weights=None, say) is then the same model in every run and every order."""
    import random
    import sys

    random.seed(0)
    np.random.seed(0)
    if "torch" in sys.modules:
        sys.modules["torch"].manual_seed(0)
    if "tensorflow" in sys.modules:
        sys.modules["tensorflow"].random.set_seed(0)
    if "keras" in sys.modules:
        sys.modules["keras"].utils.set_random_seed(0)


@pytest.fixture(scope="session")
def model_path() -> Path:
    from edgemp.demo import example_model_path

    return example_model_path()


@pytest.fixture(scope="session")
def keras_model(model_path: Path):  # type: ignore[no-untyped-def]
    import keras

    return keras.saving.load_model(model_path, compile=False)


@pytest.fixture(scope="session")
def heldout() -> tuple[np.ndarray, np.ndarray]:
    """The full 10k Fashion-MNIST test split: never seen in training or calibration."""
    from edgemp.demo import fashion_mnist

    return fashion_mnist("test")


@pytest.fixture(scope="session")
def small_heldout(heldout: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    x, y = heldout
    return x[:2000], y[:2000]


@pytest.fixture(scope="session")
def conversions(tmp_path_factory: pytest.TempPathFactory, model_path: Path, heldout, small_heldout):  # type: ignore[no-untyped-def]
    """precision -> ConvertResult, converted lazily once per session. int8 is validated on all 10k test images."""
    import edgemp

    cache: dict[str, edgemp.ConvertResult] = {}

    def get(precision: str) -> edgemp.ConvertResult:
        if precision not in cache:
            out = tmp_path_factory.mktemp(f"convert_{precision}")
            data = heldout if precision == "int8" else small_heldout
            cache[precision] = edgemp.convert(model_path, precision, calibration=CALIBRATION, validation=data,
                                              output_dir=out, latency_runs=10)
        return cache[precision]

    return get


@pytest.fixture()
def tiny_model():  # type: ignore[no-untyped-def]
    """A small untrained functional model, for error-path tests that need a model but not its accuracy."""
    import keras

    inp = keras.Input((28, 28, 1), name="image")
    x = keras.layers.Conv2D(4, 3, activation="relu")(inp)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, keras.layers.Dense(10)(x), name="tiny")


@pytest.fixture(scope="session")
def torch_model():  # type: ignore[no-untyped-def]
    """The PyTorch example CNN trained on Fashion-MNIST (cached; reloaded with weights_only=True)."""
    from edgemp.demo import torch_example_model

    return torch_example_model()


@pytest.fixture(scope="session")
def heldout_nchw(heldout):  # type: ignore[no-untyped-def]
    x, y = heldout
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)), y


@pytest.fixture(scope="session")
def torch_conversions(tmp_path_factory: pytest.TempPathFactory, torch_model, heldout_nchw):  # type: ignore[no-untyped-def]
    """precision -> ConvertResult for the PyTorch model, NHWC artifact, calibrated on the shipped image folder."""
    import torch

    import edgemp

    cache: dict[str, edgemp.ConvertResult] = {}
    x, y = heldout_nchw

    def get(precision: str) -> edgemp.ConvertResult:
        if precision not in cache:
            data = (x, y) if precision == "int8" else (x[:2000], y[:2000])
            cache[precision] = edgemp.convert(
                torch_model, precision, calibration=CALIBRATION, validation=data,
                example_input=torch.zeros(1, 1, 28, 28), input_layout="NHWC",
                output_dir=tmp_path_factory.mktemp(f"torch_{precision}"), latency_runs=10)
        return cache[precision]

    return get
