"""Calibration sources (folder, .npy, .npz, array, iterable, generator, multi-input dicts), determinism, preprocessing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgemp.calibration import load_calibration
from edgemp.calibration.images import load_image, resolve
from edgemp.config import Preprocessing
from edgemp.sources.base import TensorSpec

from .conftest import CALIBRATION

GRAY = [TensorSpec("image", (None, 28, 28, 1))]
TWO = [TensorSpec("image", (None, 8, 8, 3)), TensorSpec("meta", (None, 4))]


def test_folder_is_recursive_seeded_and_hashed(tmp_path: Path) -> None:
    import shutil

    shutil.copytree(CALIBRATION, tmp_path / "a" / "nested")
    a = load_calibration(tmp_path / "a", GRAY, num_samples=50, seed=1)
    b = load_calibration(tmp_path / "a", GRAY, num_samples=50, seed=1)
    c = load_calibration(tmp_path / "a", GRAY, num_samples=50, seed=2)
    assert len(a.samples) == 50 and a.sha256 == b.sha256 and a.sha256 != c.sha256
    x = a.samples[0]["image"]
    assert x.shape == (1, 28, 28, 1) and x.dtype == np.float32 and 0.0 <= x.min() and x.max() <= 1.0
    assert a.summary()["preprocessing"]["color"] == "grayscale"


def test_npy_npz_array_and_dict_sources(tmp_path: Path) -> None:
    x = np.random.default_rng(0).random((30, 28, 28, 1), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    np.savez(tmp_path / "x.npz", image=x)
    np.savez(tmp_path / "plain.npz", x=x)
    hashes = {load_calibration(src, GRAY, num_samples=30).sha256
              for src in (tmp_path / "x.npy", tmp_path / "x.npz", tmp_path / "plain.npz", x, {"image": x})}
    assert len(hashes) == 1  # same data, whatever the container
    sub = load_calibration(x, GRAY, num_samples=10, seed=3)
    assert len(sub.samples) == 10 and sub.sha256 == load_calibration(x, GRAY, num_samples=10, seed=3).sha256


def test_iterables_generators_and_unbatched_samples() -> None:
    rng = np.random.default_rng(0)
    batches = [rng.random((4, 28, 28, 1), dtype=np.float32) for _ in range(5)]
    gen = (b for b in batches)
    s = load_calibration(gen, GRAY, num_samples=10)
    assert len(s.samples) == 10
    single = load_calibration([b[0, ..., :] for b in batches], GRAY)  # (28, 28, 1) each: batch dim added
    assert len(single.samples) == 5 and single.samples[0]["image"].shape == (1, 28, 28, 1)
    pairs = load_calibration([(b, np.zeros(4)) for b in batches], GRAY)  # (x, y) pairs: labels ignored
    assert len(pairs.samples) == 20


def test_multi_input_dicts() -> None:
    rng = np.random.default_rng(0)
    items = [{"image": rng.random((2, 8, 8, 3), dtype=np.float32), "meta": rng.random((2, 4), dtype=np.float32)}
             for _ in range(3)]
    s = load_calibration(items, TWO)
    assert len(s.samples) == 6 and set(s.samples[0]) == {"image", "meta"}
    with pytest.raises(Exception, match="missing"):
        load_calibration([{"image": items[0]["image"]}], TWO)


def test_preprocessing_resize_color_and_normalisation(tmp_path: Path) -> None:
    from PIL import Image

    img = np.zeros((40, 60, 3), np.uint8)
    img[..., 0] = 255  # pure red
    Image.fromarray(img).save(tmp_path / "red.png")
    spec = (None, 20, 20, 3)
    rgb = load_image(tmp_path / "red.png", resolve(Preprocessing(resize="center-crop"), spec))
    assert rgb.shape == (20, 20, 3) and np.allclose(rgb[..., 0], 1.0) and np.allclose(rgb[..., 1:], 0.0)
    bgr = load_image(tmp_path / "red.png", resolve(Preprocessing(color="bgr"), spec))
    assert np.allclose(bgr[..., 2], 1.0)
    norm = load_image(tmp_path / "red.png", resolve(Preprocessing(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)), spec))
    assert np.allclose(norm[..., 0], 1.0) and np.allclose(norm[..., 1], -1.0)
    boxed = load_image(tmp_path / "red.png", resolve(Preprocessing(resize="letterbox"), spec))
    assert np.allclose(boxed[0, :, 0], 0.0) and np.allclose(boxed[10, :, 0], 1.0)  # padded rows top/bottom
    nchw = load_image(tmp_path / "red.png", resolve(Preprocessing(layout="NCHW"), (None, 3, 20, 20)))
    assert nchw.shape == (3, 20, 20)


@pytest.mark.parametrize("suffix,fmt", [(".jpg", "JPEG"), (".bmp", "BMP"), (".webp", "WEBP"), (".tiff", "TIFF")])
def test_every_image_format_is_read(tmp_path: Path, suffix: str, fmt: str) -> None:
    from PIL import Image

    sources = sorted(CALIBRATION.glob("*.png"))[:12]
    for p in sources:
        with Image.open(p) as im:
            im.save(tmp_path / (p.stem + suffix), fmt, **({"quality": 95} if fmt in ("JPEG", "WEBP") else {}))
    cal = load_calibration(tmp_path, GRAY, num_samples=100)
    assert len(cal.samples) == 12 and cal.summary()["num_files_skipped"] == 0
    png = load_calibration(CALIBRATION, GRAY, num_samples=200)
    by_name = dict(zip([p.stem for p in sorted(CALIBRATION.glob("*.png"))], png.samples))
    lossless = fmt in ("BMP", "TIFF")
    for p, s in zip(sources, cal.samples):
        diff = np.abs(s["image"] - by_name[p.stem]["image"]).max()
        assert diff == 0 if lossless else diff < 0.2  # lossless formats decode to the same values


def test_summaries_record_range_notes_and_warnings() -> None:
    import warnings

    from edgemp.calibration.checks import check_ranges
    from edgemp.errors import RangeMismatchWarning
    from edgemp.validation.data import load_validation

    x = np.random.default_rng(0).integers(0, 256, (8, 28, 28, 1))
    cal = load_calibration(x, GRAY)
    s = cal.summary()
    assert s["range"]["image"] == {"min": float(x.min()), "max": float(x.max()), "mean": float(x.mean()),
                                   "dtype": "float32", "integer_valued": True, "given_dtype": "int64"}
    assert len(s["notes"]) == 1 and s["warnings"] == []
    val = load_validation(x / 255.0, GRAY)
    assert val.summary()["range"]["image"]["max"] <= 1.0 and val.summary()["warnings"] == []
    with pytest.warns(RangeMismatchWarning, match="255x apart"):
        new = check_ranges(cal, val, None)  # what convert() calls once both are loaded
    assert len(new) == 1 and cal.summary()["warnings"] == new == val.summary()["warnings"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", RangeMismatchWarning)
        assert check_ranges(cal, val, None) == []  # recorded and warned once
    assert len(cal.warnings) == 1


def test_random_inputs_are_typed() -> None:
    from edgemp.validation.data import random_inputs

    specs = [TensorSpec("image", (None, 4, 4, 1)), TensorSpec("ids", (None, 6), "int32"), TensorSpec("m", (None, 2), "bool")]
    vd = random_inputs(specs, 5, seed=1)
    assert vd.inputs["image"].dtype == np.float32 and 0 <= vd.inputs["image"].min() and vd.inputs["image"].max() < 1
    assert vd.inputs["ids"].dtype == np.int32 and set(np.unique(vd.inputs["ids"])) <= {0, 1}
    assert vd.inputs["m"].dtype == bool and len(vd) == 5 and "random inputs" in vd.source


def test_x_y_tuple_calibrates_on_x_and_two_batches_stay_two() -> None:
    x = np.random.default_rng(0).random((5, 28, 28, 1), dtype=np.float32)
    xy = load_calibration((x, np.arange(5)), GRAY)
    assert len(xy.samples) == 5 and xy.source == "(x, y) arrays: x"
    assert len(load_calibration((x, x), GRAY).samples) == 10
