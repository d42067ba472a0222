"""The shipped example: a small CNN trained on Fashion-MNIST (offline, from the Debian package), cached.

Used by `edgemp demo`, the examples, the tests and the benchmarks, so all of them measure the same model.
Nothing here downloads: scripts/env.sh fetches the Debian package at set-up time.
"""

from __future__ import annotations

import functools
import gzip
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from edgemp.errors import InputError

log = logging.getLogger(__name__)

CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot")
MODEL_VERSION = "v1"  # bump when the architecture or training changes: the cache key follows it
_REL = Path("usr/share/datasets/fashion-mnist")


def calibration_folder() -> Path:
    """The 200 Fashion-MNIST training images shipped in the package (calibration_data/fashion_mnist in the
    repository points at them), so `edgemp demo` works from an installed wheel too."""
    from importlib import resources

    return Path(str(resources.files("edgemp").joinpath("_data", "fashion_mnist_calibration")))


def cache_dir() -> Path:
    return Path(os.environ.get("EDGEMP_CACHE", Path.home() / ".cache" / "edgemp"))


def fashion_mnist_dir() -> Path:
    candidates = [Path(os.environ["EDGEMP_DATA_DIR"]) / _REL] if os.environ.get("EDGEMP_DATA_DIR") else []
    candidates += [Path("/") / _REL, cache_dir() / "data" / _REL]
    for c in candidates:
        if (c / "t10k-labels-idx1-ubyte.gz").exists():
            return c
    raise InputError(
        "Fashion-MNIST not found (looked in " + ", ".join(map(str, candidates)) + "). Run `bash scripts/env.sh` "
        "(fetches the Debian package dataset-fashion-mnist) or `apt-get install dataset-fashion-mnist`."
    )


def fashion_mnist(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """(images float32 in [0, 1], shape (N, 28, 28, 1); labels int64). split: 'train' (60k) or 'test' (10k)."""
    prefix = {"train": "train", "test": "t10k"}[split]
    root = fashion_mnist_dir()
    with gzip.open(root / f"{prefix}-images-idx3-ubyte.gz") as f:
        x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28, 1)
    with gzip.open(root / f"{prefix}-labels-idx1-ubyte.gz") as f:
        y = np.frombuffer(f.read(), np.uint8, offset=8).astype(np.int64)
    return x.astype(np.float32) / 255.0, y


def build_model() -> Any:
    """~420k parameters: two conv blocks with batch norm, then a dense head."""
    from edgemp.sources.keras import import_tf

    import_tf()
    import keras
    from keras import layers

    inp = keras.Input((28, 28, 1), name="image")
    x = inp
    for i, filters in enumerate((32, 64)):
        for j in range(2):
            x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"block{i + 1}_conv{j + 1}")(x)
            x = layers.BatchNormalization(name=f"block{i + 1}_bn{j + 1}")(x)
            x = layers.ReLU(name=f"block{i + 1}_relu{j + 1}")(x)
        x = layers.MaxPooling2D(name=f"block{i + 1}_pool")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(128, activation="relu", name="fc1")(x)
    x = layers.Dropout(0.3, name="dropout")(x)
    out = layers.Dense(len(CLASSES), name="logits")(x)
    return keras.Model(inp, out, name="fashion_cnn")


def example_model_path(epochs: int = 1) -> Path:
    """Train once (about a minute per epoch on 2 cores), then reuse the cached .keras file."""
    path = cache_dir() / "models" / f"fashion_cnn_{MODEL_VERSION}_e{epochs}.keras"
    if path.exists():
        return path
    from edgemp.sources.keras import import_tf

    import_tf()
    import keras

    keras.utils.set_random_seed(0)
    x, y = fashion_mnist("train")
    model = build_model()
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    log.info("training the example model on Fashion-MNIST (%d epochs, cached at %s)", epochs, path)
    model.fit(x, y, batch_size=128, epochs=epochs, verbose=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.keras")
    model.save(tmp)
    os.replace(tmp, path)
    return path


def export_images(x: np.ndarray, y: np.ndarray, root: Path, per_class_dirs: bool) -> None:
    """Write images as PNG (for the shipped calibration/validation folders)."""
    from PIL import Image

    for i, (img, label) in enumerate(zip(x, y, strict=True)):
        folder = root / f"{label}_{CLASSES[label]}" if per_class_dirs else root
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{i:05d}.png" if per_class_dirs else f"{i:05d}_{CLASSES[label]}.png"
        Image.fromarray((img[..., 0] * 255).round().astype(np.uint8), mode="L").save(folder / name, optimize=True)


def build_torch_model() -> Any:
    """The PyTorch example (~140k parameters): conv blocks with batch norm and a global-average-pool head,
    which stays free of layout transposes in an NHWC artifact."""
    from edgemp._compat import prepare_torch_import

    prepare_torch_import()
    from torch import nn

    def block(cin: int, cout: int) -> list[Any]:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    return nn.Sequential(
        *block(1, 32), *block(32, 32), nn.MaxPool2d(2),
        *block(32, 64), *block(64, 64), nn.MaxPool2d(2),
        *block(64, 128), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, len(CLASSES)),
    )


def torch_example_model(epochs: int = 1) -> Any:
    """Train once on Fashion-MNIST (NCHW), cache the state dict, reload it with weights_only=True."""
    from edgemp._compat import prepare_torch_import

    prepare_torch_import()
    path = cache_dir() / "models" / f"fashion_cnn_torch_{MODEL_VERSION}_e{epochs}.pt"

    def data() -> tuple[np.ndarray, np.ndarray]:
        x, y = fashion_mnist("train")
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2)), y

    return trained_torch(build_torch_model(), path, data, epochs)


def trained_torch(model: Any, path: Path, data: Any, epochs: int) -> Any:
    """`model` trained with Adam 1e-3, batch 128, on `data()` (NCHW x, y) once, its state dict cached at `path`
    (reloaded with weights_only=True); the batch order is seeded."""
    import torch

    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    torch.manual_seed(0)
    x, y = data()
    xt = torch.from_numpy(x)
    yt = torch.from_numpy(y)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    log.info("training %s on Fashion-MNIST (%d epochs, cached at %s)", type(model).__name__, epochs, path)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(xt))
        for i in range(0, len(xt), 128):
            idx = order[i : i + 128]
            opt.zero_grad()
            loss_fn(model(xt[idx]), yt[idx]).backward()
            opt.step()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.pt")
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, path)
    return model.eval()


# -- an honestly trained model that full INT8 hurts (the mixed-precision benchmark and tests) -----------------
SENSITIVE_VERSION = "v1"


@functools.cache
def _l2_normalize() -> Any:
    """v / ||v|| as MUL/SUM/ADD/RSQRT/MUL, ops with int8 kernels (Keras' UnitNormalization lowers to SQUARE and
    MINIMUM, which the quantizer leaves in float). Registered so the cached .keras file loads."""
    import keras

    @keras.saving.register_keras_serializable("edgemp_demo")
    class L2Normalize(keras.layers.Layer):
        def call(self, v: Any) -> Any:
            return v * keras.ops.rsqrt(keras.ops.sum(v * v, axis=-1, keepdims=True) + 1e-6)

    return L2Normalize


def build_sensitive_model() -> Any:
    """A CNN without batch norm on raw 0..255 pixels: it L2-normalises its pooled 64-d features (a cosine-style
    embedding, values 0..~0.8) and joins them with the raw mean brightness (8..160) before the logits. An int8
    CONCATENATION has one scale for all its inputs, set by the brightness range (~0.63 per step), so most of
    the embedding rounds to zero: full INT8 loses tens of points; the join and the logits in float recover it."""
    from edgemp.sources.keras import import_tf

    import_tf()
    import keras
    from keras import layers

    inp = keras.Input((28, 28, 1), name="image")
    t = layers.Rescaling(1 / 255.0, name="norm")(inp)
    t = layers.Conv2D(32, 3, strides=2, padding="same", activation="relu", name="c1")(t)
    t = layers.Conv2D(32, 3, padding="same", activation="relu", name="c2")(t)
    t = layers.MaxPooling2D(name="p1")(t)
    for i in (3, 4, 5):
        t = layers.Conv2D(64, 3, padding="same", activation="relu", name=f"c{i}")(t)
    t = layers.MaxPooling2D(name="p2")(t)
    for i in (6, 7, 8, 9):
        t = layers.Conv2D(64, 3, padding="same", activation="relu", name=f"c{i}")(t)
    f = _l2_normalize()(name="embed")(layers.GlobalAveragePooling2D(name="gap")(t))
    b = layers.GlobalAveragePooling2D(name="brightness")(inp)
    h = layers.Concatenate(name="cat")([f, b])
    return keras.Model(inp, layers.Dense(len(CLASSES), name="logits")(h), name="sensitive_cnn")


def sensitive_model_path(epochs: int = 3) -> Path:
    """Train once (~80 s on 2 cores) on Fashion-MNIST scaled to 0..255, then reuse the cached .keras file."""
    path = cache_dir() / "models" / f"sensitive_cnn_{SENSITIVE_VERSION}_e{epochs}.keras"
    _l2_normalize()
    if path.exists():
        return path
    from edgemp.sources.keras import import_tf

    import_tf()
    import keras

    keras.utils.set_random_seed(0)
    model = build_sensitive_model()  # built after seeding: the same initial weights every time
    x, y = fashion_mnist("train")
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    log.info("training the INT8-sensitive example model (%d epochs, cached at %s)", epochs, path)
    model.fit(x * 255.0, y, batch_size=128, epochs=epochs, verbose=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.keras")
    model.save(tmp)
    os.replace(tmp, path)
    return path
