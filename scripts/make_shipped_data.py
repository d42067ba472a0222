"""Regenerate the shipped calibration images (edgemp/_data/fashion_mnist_calibration, which calibration_data/fashion_mnist
points at: 200 train images) and examples/data/fashion_mnist_val
(100 test images per class, one sub-folder per class) from the Debian Fashion-MNIST package."""

from pathlib import Path

import numpy as np

from edgemp.demo import fashion_mnist, export_images

repo = Path(__file__).resolve().parents[1]
rng = np.random.default_rng(2026)
x, y = fashion_mnist("train")
idx = np.sort(rng.choice(len(x), 200, replace=False))
export_images(x[idx], y[idx], repo / "edgemp" / "_data" / "fashion_mnist_calibration", per_class_dirs=False)
xt, yt = fashion_mnist("test")
idx = np.concatenate([np.flatnonzero(yt == c)[:100] for c in range(10)])
export_images(xt[idx], yt[idx], repo / "examples" / "data" / "fashion_mnist_val", per_class_dirs=True)
