"""The matrix of bad calibration/validation data: each case gets a typed error whose message names the input, what it
expects and the fix; data that is odd but usable (16-bit images, transparency, integer arrays, a renamed .npz
array) is used correctly and said so; range mismatches warn; the CLI exits 2 without a traceback."""

from __future__ import annotations

import logging
import struct
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

import edgemp
from edgemp import errors
from edgemp.calibration import load_calibration
from edgemp.calibration.checks import range_findings
from edgemp.calibration.images import resolve
from edgemp.config import Preprocessing
from edgemp.sources.base import TensorSpec
from edgemp.validation.data import load_validation
from edgemp.validation.runtime import Runner

GRAY = [TensorSpec("image", (None, 28, 28, 1))]
RGB = [TensorSpec("image", (None, 8, 8, 3))]
IDS = [TensorSpec("ids", (None, 16), "int32")]
TEXT = [TensorSpec("text", (None,), "string")]
SCALAR = [TensorSpec("x", (None,))]
TWO = [TensorSpec("image", (None, 8, 8, 3)), TensorSpec("meta", (None, 4))]
DYN = [TensorSpec("image", (None, None, None, 3))]
VOCAB = 5000


# -- files -----------------------------------------------------------------------------------------------
def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims width x height 8-bit gray pixels: a decompression bomb for Pillow's check."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"")) + _chunk(b"IEND", b""))
    return path


def gray16(seed: int = 0, shape: tuple[int, int] = (28, 28)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 65536, shape).astype(np.uint16)


def save(arr: np.ndarray, path: Path, **kw: Any) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, **kw)
    return path


def _folder(tmp: Path, *files: Callable[[Path], Any]) -> Path:
    d = tmp / "imgs"
    d.mkdir(exist_ok=True)
    for f in files:
        f(d)
    return d


def _truncated(path: Path) -> None:
    """A noisy PNG cut in the middle of its pixel data: what an interrupted copy leaves."""
    save(np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8), path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _good(d: Path, n: int = 3) -> None:
    for i in range(n):
        save(np.full((28, 28), 40 * i, np.uint8), d / f"good{i}.png")


# -- models ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def embedding_model():  # type: ignore[no-untyped-def]
    import keras

    inp = keras.Input((16,), name="ids", dtype="int32")
    x = keras.layers.Embedding(VOCAB, 8)(inp)
    x = keras.layers.GlobalAveragePooling1D()(x)
    return keras.Model(inp, keras.layers.Dense(3)(x), name="emb")


@pytest.fixture(scope="module")
def embedding_tflite(embedding_model, tmp_path_factory: pytest.TempPathFactory) -> Path:  # type: ignore[no-untyped-def]
    ids = np.random.default_rng(0).integers(0, VOCAB, (8, 16)).astype(np.int32)
    r = edgemp.convert(embedding_model, "fp32", validation=ids, output_dir=tmp_path_factory.mktemp("emb"),
                       latency_runs=1, progress=False)
    return r.artifacts["tflite"]


@pytest.fixture(scope="module")
def dynamic_model():  # type: ignore[no-untyped-def]
    import keras

    inp = keras.Input((None, None, 3), name="image")
    x = keras.layers.Conv2D(4, 3)(inp)
    x = keras.layers.Conv2D(4, 3)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, keras.layers.Dense(3)(x), name="dyn")


@pytest.fixture(scope="module")
def gray_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import keras

    inp = keras.Input((28, 28, 1), name="image")
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3, activation="relu")(inp))
    path = tmp_path_factory.mktemp("gray") / "gray.keras"
    keras.Model(inp, keras.layers.Dense(10)(x), name="gray").save(path)
    return path


def _ids(oov: int | None = None) -> np.ndarray:
    ids = np.random.default_rng(0).integers(0, VOCAB, (20, 16))
    if oov is not None:
        ids[3, 2] = oov
    return ids


# -- errors from the loaders (fast: no model) ------------------------------------------------------------
def _npz(tmp: Path, **arrays: np.ndarray) -> Path:
    np.savez(tmp / "d.npz", **arrays)
    return tmp / "d.npz"


def _raising_items():  # type: ignore[no-untyped-def]
    yield np.zeros((1, 28, 28, 1), np.float32)
    raise ZeroDivisionError("the user's generator broke")


def _pickled(tmp: Path) -> Path:
    np.save(tmp / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    return tmp / "obj.npy"


def _float_tiff(tmp: Path) -> Path:
    return save(np.linspace(0, 700, 28 * 28, dtype=np.float32).reshape(28, 28), tmp / "imgs" / "depth.tiff")


ERRORS: list[Any] = [
    # (what the user passes, specs, error class, message fragment)
    pytest.param(lambda t: np.full((4, 16), 3.5), IDS, errors.CalibrationError, "non-integer floats such as 3.5",
                 id="fractional-float-ids"),
    pytest.param(lambda t: np.full((4, 16), 2**40), IDS, errors.CalibrationError, "outside -2147483648..2147483647",
                 id="ids-overflow-int32"),
    pytest.param(lambda t: np.where(np.eye(16)[:4] > 0, np.nan, 1.0), IDS, errors.CalibrationError, "4 NaN/Inf",
                 id="nan-in-float-ids"),
    pytest.param(lambda t: np.full((2, 28, 28, 1), 1e300), GRAY, errors.CalibrationError, "overflow float32",
                 id="float64-overflows-float32"),
    pytest.param(lambda t: np.full((2, 28, 28, 1), np.inf, np.float32), GRAY, errors.CalibrationError,
                 "1568 NaN/Inf", id="inf-pixels"),
    pytest.param(lambda t: np.array([["tok"] * 16] * 4), IDS, errors.CalibrationError, "holds strings",
                 id="strings-for-ids"),
    pytest.param(lambda t: [[[1, 2], [3]]], IDS, errors.CalibrationError, "not a regular numeric array",
                 id="ragged-nested-list"),
    pytest.param(lambda t: np.array([None, 1], dtype=object), SCALAR, errors.CalibrationError, "Python objects",
                 id="object-array"),
    pytest.param(lambda t: np.zeros((2, 28, 28, 1), np.complex64), GRAY, errors.CalibrationError,
                 "dtype complex64", id="complex"),
    pytest.param(lambda t: np.zeros((2, 4), "datetime64[s]"), [TensorSpec("x", (None, 4))], errors.CalibrationError,
                 "numeric arrays only", id="datetime"),
    pytest.param(lambda t: np.zeros((20, 16), np.int32), TEXT, errors.CalibrationError,
                 "model input 'text' takes strings", id="string-model-input"),
    pytest.param(lambda t: np.zeros((20, 16), np.float32), SCALAR, errors.CalibrationError,
                 "one value per sample", id="rank-for-scalar-input"),
    pytest.param(lambda t: np.zeros((4, 8, 8, 1), np.float32), RGB, errors.CalibrationError, "channel count differs",
                 id="channels"),
    pytest.param(lambda t: np.zeros((4, 16, 1), np.int32), IDS, errors.CalibrationError, "trailing axis of 1",
                 id="trailing-unit-axis"),
    pytest.param(lambda t: _npz(t, a=np.zeros((2, 28, 28, 1)), b=np.zeros(2)), GRAY, errors.CalibrationError,
                 "has arrays ['a', 'b']; name them after the model inputs ['image']", id="npz-keys-match-nothing"),
    pytest.param(lambda t: _npz(t, image=np.zeros((2, 8, 8, 3)), other=np.zeros((2, 4))), TWO,
                 errors.CalibrationError, "model inputs ['image', 'meta']", id="npz-multi-input-missing"),
    pytest.param(_pickled, GRAY, errors.CalibrationError, "without pickled objects", id="npy-pickled-objects"),
    pytest.param(lambda t: (t / "x.npz").write_bytes(b"PK\x03\x04 truncated") and t / "x.npz", GRAY,
                 errors.CalibrationError, "cannot read", id="corrupt-npz"),
    pytest.param(lambda t: (t / "x.csv").write_text("1,2") and t / "x.csv", GRAY, errors.CalibrationError,
                 "unsupported calibration file", id="csv-file"),
    pytest.param(lambda t: b"\x00" * 784, GRAY, errors.CalibrationError, "bytes is not supported", id="raw-bytes"),
    pytest.param(lambda t: _raising_items(), GRAY, errors.CalibrationError,
                 "raised ZeroDivisionError at item 1", id="iterable-raises"),
    pytest.param(lambda t: {"image": np.zeros((2, 8, 8, 3))}, TWO, errors.CalibrationError, "missing ['meta']",
                 id="dict-missing-input"),
    pytest.param(lambda t: {"image": np.zeros((2, 8, 8, 3)), "meta": np.zeros((3, 4))}, TWO, errors.CalibrationError,
                 "different sample counts", id="dict-unequal-counts"),
    pytest.param(lambda t: np.zeros((0, 28, 28, 1), np.float32), GRAY, errors.CalibrationError, "no usable samples",
                 id="empty-array"),
    pytest.param(lambda t: _folder(t, lambda d: png_header_only(d / "bomb.png", 30000, 30000)), GRAY,
                 errors.CalibrationError, "decompression bomb refused", id="folder-of-a-bomb"),
    pytest.param(lambda t: _float_tiff(t).parent, GRAY, errors.CalibrationError, "float image with values 0..700",
                 id="folder-of-float-depth-tiff"),
]


@pytest.mark.parametrize("make,specs,exc,fragment", ERRORS)
def test_bad_calibration_data(tmp_path: Path, make: Callable[[Path], Any], specs: list[TensorSpec],
                              exc: type[Exception], fragment: str) -> None:
    data = make(tmp_path)
    with pytest.raises(exc) as info:
        load_calibration(data, specs, num_samples=10)
    assert fragment in str(info.value)
    assert isinstance(info.value, errors.EdgempError) and info.value.exit_code == 2


@pytest.mark.parametrize("num_samples", [0, -3, "10", 2.5, True], ids=repr)
def test_num_samples_must_be_a_positive_integer(num_samples: Any) -> None:
    with pytest.raises(errors.CalibrationError, match="num_samples must be an integer >= 1"):
        load_calibration(np.zeros((2, 28, 28, 1)), GRAY, num_samples=num_samples)


VALIDATION_ERRORS: list[Any] = [
    pytest.param(lambda t: _folder(t, lambda d: (d / "c0").mkdir(), lambda d: (d / "c0" / "a.png").write_bytes(b"x")),
                 GRAY, "has no readable images (1 image file(s), 1 file(s) skipped)", id="folder-nothing-readable"),
    pytest.param(lambda t: iter([np.zeros((2, 20, 20, 3), np.float32), np.zeros((2, 24, 24, 3), np.float32)]), DYN,
                 "have different shapes [(20, 20, 3), (24, 24, 3)]", id="unequal-sample-shapes"),
    pytest.param(lambda t: (str(t), np.arange(3)), GRAY, "has a path as x", id="path-inside-x-y"),
    pytest.param(lambda t: _npz(t, y=np.arange(3)), GRAY, "holds labels 'y' but no inputs", id="npz-labels-only"),
    pytest.param(lambda t: [(np.zeros((28, 28, 1)), np.arange(2)), (np.zeros((28, 28, 1)), np.arange(3))], GRAY,
                 "not one regular array", id="ragged-labels"),
    pytest.param(lambda t: (np.zeros((4, 28, 28, 1)), np.array(["cat", "dog", "cat", "dog"])), GRAY,
                 "integer class ids", id="string-labels"),
    pytest.param(lambda t: (np.zeros((4, 28, 28, 1)), np.array([0.5, 1, 2, 3])), GRAY, "non-integer values",
                 id="fractional-labels"),
    pytest.param(lambda t: _folder(t, lambda d: save(np.zeros((8, 8), np.uint8), d / "c0" / "a.png")), DYN,
                 "dynamic height/width: give the preprocessing size", id="folder-for-dynamic-input"),
    pytest.param(lambda t: np.zeros((2, 20), np.float32), IDS, "sample shape (20,) but the model expects (16,)",
                 id="ids-too-long"),
]


@pytest.mark.parametrize("make,specs,fragment", VALIDATION_ERRORS)
def test_bad_validation_data(tmp_path: Path, make: Callable[[Path], Any], specs: list[TensorSpec], fragment: str) -> None:
    with pytest.raises(errors.DataError) as info:
        load_validation(make(tmp_path), specs)
    assert fragment in str(info.value)


@pytest.mark.parametrize("max_samples", [0, -1, "5"], ids=repr)
def test_max_validation_samples_must_be_positive(max_samples: Any) -> None:
    with pytest.raises(errors.DataError, match="max_samples must be an integer >= 1"):
        load_validation(np.zeros((2, 28, 28, 1)), GRAY, max_samples=max_samples)


# -- odd but usable data: used correctly, and said ---------------------------------------------------------
def _read_folder(d: Path, specs: list[TensorSpec] = GRAY) -> Any:
    return load_calibration(d, specs, num_samples=50)


@pytest.mark.parametrize("image,specs", [
    ("noise", GRAY),  # as is: only the 8-bit version's rounding differs (<= 0.5/255)
    ("smooth", [TensorSpec("image", (None, 20, 24, 3))]),  # resized into an RGB model (the 8-bit path rounds twice)
])
def test_16bit_png_gives_the_values_of_its_8bit_version(tmp_path: Path, image: str, specs: list[TensorSpec]) -> None:
    yy, xx = np.mgrid[0:28, 0:28]
    a16 = gray16() if image == "noise" else ((yy * 28 + xx) * 83 + (xx * 997) % 2000).astype(np.uint16)
    save(a16, tmp_path / "a" / "x.png")
    save(np.round(a16 / 257).astype(np.uint8), tmp_path / "b" / "x.png")
    if True:
        deep, flat = _read_folder(tmp_path / "a", specs), _read_folder(tmp_path / "b", specs)
        x16, x8 = deep.samples[0]["image"], flat.samples[0]["image"]
        assert np.abs(x16 - x8).max() <= 1 / 255 + 1e-6
        assert (x16 >= 254.5 / 255).mean() < 0.05  # not clipped: 99.7% of pixels were 255 before
        assert any("16-bit grayscale pixels scaled by 255/65535" in n for n in deep.summary()["notes"])
        assert flat.summary()["notes"] == []


def test_16bit_rgb_png_is_read_on_the_8bit_scale(tmp_path: Path) -> None:
    """Pillow reads 16-bit RGB PNGs as 8-bit RGB (the high byte): right scale, not clipped."""
    rgb = np.random.default_rng(2).integers(0, 65536, (8, 8, 3)).astype(np.uint16)
    raw = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in rgb)
    ihdr = struct.pack(">IIBBBBB", 8, 8, 16, 2, 0, 0, 0)
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "rgb16.png").write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr)
                                                 + _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b""))
    x = _read_folder(tmp_path / "imgs", RGB).samples[0]["image"][0]
    assert np.abs(x - rgb / 65535).max() <= 1 / 255 + 1e-6


def test_16bit_tiff_and_float_tiff_are_scaled_or_refused(tmp_path: Path) -> None:
    a16 = gray16(1)
    save(a16, tmp_path / "imgs" / "i16.tiff")
    save((a16 / 65535).astype(np.float32), tmp_path / "imgs" / "unit.tiff")
    save(a16.astype(np.int32), tmp_path / "imgs" / "i32.tiff")  # 32-bit samples: scale ambiguous
    save((a16 / 257).astype(np.float32), tmp_path / "imgs" / "f255.tiff")  # float 0..255: not 0..1 intensities
    cal = _read_folder(tmp_path / "imgs")
    ref = np.round(a16 / 257) / 255
    assert len(cal.samples) == 2
    for s in cal.samples:
        assert np.abs(s["image"][0, ..., 0] - ref).max() <= 1 / 255 + 1e-6
    reasons = {Path(s["path"]).name: s["reason"] for s in cal.summary()["skipped"]}
    assert "32-bit integer image" in reasons["i32.tiff"] and "ambiguous" in reasons["i32.tiff"]
    assert "float image with values" in reasons["f255.tiff"] and "0..1 intensities" in reasons["f255.tiff"]


@pytest.mark.parametrize("kind", ["rgba", "la", "palette", "trns-rgb"])
def test_transparency_is_composited_on_black(tmp_path: Path, kind: str) -> None:
    from PIL import Image

    d = tmp_path / "imgs"
    d.mkdir()
    if kind == "rgba":
        a = np.zeros((8, 8, 4), np.uint8)
        a[..., 0], a[..., 3] = 200, 255
        a[4:, :, 3] = 0  # bottom half transparent (red underneath)
        save(a, d / "x.png")
    elif kind == "la":
        a = np.zeros((8, 8, 2), np.uint8)
        a[..., 0], a[..., 1] = 200, 255
        a[4:, :, 1] = 0
        Image.fromarray(a, "LA").save(d / "x.png")
    elif kind == "palette":
        p = Image.new("P", (8, 8), 1)
        p.putpalette([200, 0, 0, 200, 0, 0] + [0] * 762)
        for y in range(4, 8):
            for x in range(8):
                p.putpixel((x, y), 0)
        p.save(d / "x.png", transparency=0)
    else:
        a = np.zeros((8, 8, 3), np.uint8)
        a[..., 0] = 200
        a[4:, :, 1] = 7  # color (200, 7, 0) is the transparent one (tRNS)
        Image.fromarray(a).save(d / "x.png", transparency=(200, 7, 0))
    cal = _read_folder(d, RGB if kind != "la" else [TensorSpec("image", (None, 8, 8, 1))])
    x = cal.samples[0]["image"][0] * 255
    assert np.allclose(x[:4, :, 0], 200, atol=0.01) and np.allclose(x[4:], 0, atol=0.01)
    assert any("transparency (alpha) composited on black" in n for n in cal.notes)


def test_cmyk_jpeg_is_converted_and_noted(tmp_path: Path) -> None:
    from PIL import Image

    (tmp_path / "imgs").mkdir()
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "imgs" / "red.jpg", quality=100)
    cal = _read_folder(tmp_path / "imgs", RGB)
    x = cal.samples[0]["image"][0] * 255
    assert x[..., 0].mean() > 200 and x[..., 1:].mean() < 40
    assert any("CMYK converted to RGB" in n for n in cal.notes)


@pytest.mark.parametrize("width,height,what", [(30000, 30000, "exceeds limit of 178956970"),  # DecompressionBombError
                                               (10000, 10000, "exceeds limit of 89478485")],  # ...Warning
                         ids=["bomb-error", "bomb-warning"])
def test_decompression_bombs_are_skipped_with_the_reason(tmp_path: Path, width: int, height: int, what: str) -> None:
    d = _folder(tmp_path, _good, lambda d: png_header_only(d / "bomb.png", width, height),
                lambda d: _truncated(d / "cut.png"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing leaks out as a warning either
        cal = _read_folder(d)
        val = load_validation(d, GRAY)
    for summary in (cal.summary(), val.summary()):
        reasons = {Path(s["path"]).name: s["reason"] for s in summary["skipped"]}
        assert summary["num_files_skipped"] == 2 and summary["num_samples"] == 3
        assert reasons["bomb.png"].startswith("decompression bomb refused") and what in reasons["bomb.png"]
        assert reasons["cut.png"].startswith("unreadable image")


def test_npz_single_array_with_another_name_is_used_and_said(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    x = np.random.default_rng(0).random((6, 28, 28, 1), dtype=np.float32)
    np.savez(tmp_path / "cal.npz", pictures=x)
    with caplog.at_level(logging.WARNING):
        cal = load_calibration(tmp_path / "cal.npz", GRAY)
    assert "array 'pictures' used for input 'image'" in cal.source
    assert any("'pictures' used for input 'image'" in r.message and "not named after the input" in r.message
               for r in caplog.records)
    np.savez(tmp_path / "val.npz", pictures=x, y=np.arange(6) % 3)
    val = load_validation(tmp_path / "val.npz", GRAY)
    assert len(val) == 6 and "array 'pictures' used for input 'image'" in val.source and val.labels is not None


def test_integer_pixels_and_integral_float_ids_are_cast_and_noted() -> None:
    cal = load_calibration(np.random.default_rng(0).integers(0, 256, (4, 28, 28, 1)), GRAY)
    s = cal.summary()
    assert s["range"]["image"]["given_dtype"] == "int64" and s["range"]["image"]["max"] <= 255
    assert s["range"]["image"]["integer_valued"] and s["range"]["image"]["dtype"] == "float32"
    assert any("int64 data (0..25" in n and "without scaling" in n for n in s["notes"])
    ids = load_calibration(np.arange(64, dtype=np.float64).reshape(4, 16), IDS)
    assert ids.samples[0]["ids"].dtype == np.int32 and any("float64 data cast to int32" in n for n in ids.notes)


# -- range mismatches: warned and recorded, never on legitimate data ----------------------------------------
def _pixels(n: int = 16, hi: int = 256) -> np.ndarray:
    return np.random.default_rng(0).integers(0, hi, (n, 28, 28, 1))


RANGE_CASES: list[Any] = [
    pytest.param(lambda: range_findings({"image": _pixels()}, {"image": _pixels() / 255}, None, warn=False),
                 "(255x apart)", id="cal-0..255-val-0..1"),
    pytest.param(lambda: range_findings(load_calibration(_pixels(), GRAY), {"image": _pixels() / 255}, None, warn=False),
                 "unscaled 0..255 pixels? divide by 255", id="cal-int64-set-val-unit"),
    pytest.param(lambda: range_findings([{"image": (_pixels() / 255 - 0.5) / 0.5}], {"image": _pixels() / 255}, None,
                                        warn=False), "centred", id="cal-normalised-val-not"),
    pytest.param(lambda: range_findings(None, {"image": _pixels() / 255}, Preprocessing(scale=1.0), warn=False),
                 "less than 1/32 of that range", id="val-unit-preprocessing-0..255"),
    pytest.param(lambda: load_calibration(_pixels(), GRAY, preprocessing=Preprocessing(size=(28, 28))).warnings,
                 "the image preprocessing (scale 0.003922, mean [0.0], std [1.0]) gives 0..1", id="declared-preprocessing"),
]


@pytest.mark.parametrize("call,fragment", RANGE_CASES)
def test_range_mismatch_is_found(call: Callable[[], list[str]], fragment: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", errors.RangeMismatchWarning)
        found = call()
    assert len(found) == 1 and "range mismatch on input 'image'" in found[0] and fragment in found[0], found


def test_range_mismatch_warns_and_lands_in_the_validation_summary(tmp_path: Path) -> None:
    save(np.full((28, 28), 90, np.uint8), tmp_path / "cal" / "a.png")
    cal = load_calibration(tmp_path / "cal", GRAY)
    with pytest.warns(errors.RangeMismatchWarning, match="unscaled 0..255 pixels"):
        val = load_validation(_pixels(), GRAY, preprocessing=cal.preprocessing)  # as convert() passes it
    assert val.summary()["warnings"] and "range mismatch" in val.summary()["warnings"][0]
    assert val.summary()["range"]["image"]["max"] == 255


LEGIT: list[Any] = [
    pytest.param(lambda: range_findings([{"image": _pixels() / 255 * 0.9}], {"image": _pixels() / 255}, None),
                 id="cal-0..0.9-val-0..1"),
    pytest.param(lambda: range_findings([{"image": (_pixels() / 255 - .5) / .5}], {"image": (_pixels(4) / 255 - .5) / .5},
                                        Preprocessing(mean=0.5, std=0.5)), id="both-normalised"),
    pytest.param(lambda: range_findings({"image": _pixels()}, {"image": _pixels()}, None), id="both-0..255"),
    pytest.param(lambda: range_findings({"image": _pixels()}, None, Preprocessing()), id="default-preprocessing-not-declared"),
    pytest.param(lambda: range_findings([{"image": _pixels(hi=200) / 255}], {"image": _pixels(hi=60) / 255}, None),
                 id="darker-validation"),
    pytest.param(lambda: range_findings([{"ids": np.arange(16)[None]}], {"ids": np.arange(4000, 4016)[None]}, None),
                 id="integer-ids"),
]


@pytest.mark.parametrize("call", LEGIT)
def test_no_range_finding_on_legitimate_data(call: Callable[[], list[str]]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", errors.RangeMismatchWarning)
        assert call() == []


def test_dark_image_folder_is_not_checked_against_its_own_preprocessing(tmp_path: Path) -> None:
    for i in range(3):
        save(np.full((28, 28), 2 + i, np.uint8), tmp_path / "dark" / f"{i}.png")  # 0..4 of 255: < 1/32 of the range
    cal = load_calibration(tmp_path / "dark", GRAY)
    val = load_validation(tmp_path / "dark", GRAY, preprocessing=cal.preprocessing)
    with warnings.catch_warnings():
        warnings.simplefilter("error", errors.RangeMismatchWarning)
        assert range_findings(cal, val, cal.preprocessing) == []


# -- the runtime: LiteRT's errors named --------------------------------------------------------------------
def test_token_id_beyond_the_vocabulary(tmp_path: Path, embedding_model) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(errors.DataError) as info:
        edgemp.convert(embedding_model, "fp32", validation=_ids(oov=5012), output_dir=tmp_path, latency_runs=1,
                       progress=False)
    msg = str(info.value)
    assert "token id 5012 >= vocabulary size 5000 in input 'ids'" in msg and "(sample 3, position (2,))" in msg
    assert "gather index" not in msg


def test_float_token_ids(tmp_path: Path, embedding_model) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(errors.DataError, match=r"input 'ids' is int32 .* non-integer floats such as"):
        edgemp.convert(embedding_model, "fp32", validation=_ids() + 0.5, output_dir=tmp_path, latency_runs=1,
                       progress=False)


def test_validate_a_tflite_with_out_of_vocabulary_ids(embedding_tflite: Path) -> None:
    with pytest.raises(errors.DataError, match="token id 7000 >= vocabulary size 5000 in input 'ids'"):
        edgemp.validate(embedding_tflite, data=_ids(oov=7000), latency_runs=1)


RUNNER_CASES: list[Any] = [
    pytest.param({"ids": _ids(oov=5000)}, "token id 5000 >= vocabulary size 5000", id="runner-oov"),
    pytest.param({"ids": np.random.default_rng(0).random((4, 16))}, "normalised values, or the random inputs",
                 id="runner-unit-floats-for-ids"),
    pytest.param({"ids": np.full((2, 16), np.nan)}, "takes integers (int32 of shape (1, 16)) but the data holds NaN",
                 id="runner-nan-ids"),
    pytest.param({"ids": np.array([["a"] * 16])}, "holds strings", id="runner-strings"),
    pytest.param({"tokens": _ids()}, "no data for input(s) ['ids']", id="runner-missing-input"),
    pytest.param({"ids": np.full((2, 16), 2**35)}, "outside -2147483648..2147483647", id="runner-int64-overflow"),
]


@pytest.mark.parametrize("feed,fragment", RUNNER_CASES)
def test_runner_names_the_input_and_the_cause(embedding_tflite: Path, feed: dict[str, np.ndarray], fragment: str) -> None:
    runner = Runner(embedding_tflite.read_bytes())
    with pytest.raises(errors.DataError) as info:
        runner.run(feed)
    assert fragment in str(info.value)


def test_dynamic_spatial_input(tmp_path: Path, dynamic_model) -> None:  # type: ignore[no-untyped-def]
    ok = np.random.default_rng(0).random((4, 32, 32, 3), dtype=np.float32)
    r = edgemp.convert(dynamic_model, "fp32", validation=ok, output_dir=tmp_path / "ok", latency_runs=1, progress=False)
    assert r.passed  # used to fail with "XNNPack delegate failed to reshape"
    xnn = r.report["validation"]["runtime"]["delegates"][0]
    assert xnn["nodes"] == xnn["total_nodes"] > 0  # probed at the validated size
    with pytest.raises(errors.DataError) as info:
        edgemp.convert(dynamic_model, "fp32", validation=ok[:, :3, :3], output_dir=tmp_path / "small", latency_runs=1,
                       progress=False)
    msg = str(info.value)
    assert "cannot run at input shape 'image' (1, 3, 3, 3)" in msg and "dynamic input dimensions ('image' (1, ?, ?, 3))" in msg
    assert "fixed input size" in msg


def test_folder_calibration_with_0_255_validation_arrays_warns(tmp_path: Path, tiny_model) -> None:  # type: ignore[no-untyped-def]
    from .conftest import CALIBRATION

    with pytest.warns(errors.RangeMismatchWarning, match="range mismatch on input 'image'"):
        r = edgemp.convert(tiny_model, "int8", CALIBRATION, validation=_pixels(), output_dir=tmp_path, latency_runs=1,
                           progress=False, num_calibration_samples=20)
    data = r.report["validation"]["data"]
    assert data["warnings"] and "unscaled 0..255 pixels" in data["warnings"][0]
    assert data["range"]["image"]["given_dtype"] == "int64"


# -- the CLI: exit 2, one line, no traceback ---------------------------------------------------------------
def _bomb_folder(t: Path) -> Path:
    return _folder(t, lambda d: png_header_only(d / "bomb.png", 30000, 30000))


CLI_CASES: list[Any] = [
    pytest.param(lambda t, m, e: ["convert", str(m), "-c", str(_npz(t, a=np.zeros((2, 28, 28, 1)), b=np.zeros(2)))],
                 "name them after the model inputs", id="cli-npz-keys"),
    pytest.param(lambda t, m, e: ["convert", str(m), "-c", str(_bomb_folder(t))], "decompression bomb refused",
                 id="cli-bomb-folder"),
    pytest.param(lambda t, m, e: ["convert", str(m), "-c", str((t / "c.csv").write_text("1") and t / "c.csv")],
                 "unsupported calibration file", id="cli-csv"),
    pytest.param(lambda t, m, e: ["convert", str(m), "-p", "fp32", "--validation",
                                  str(_npz(t, x=np.full((4, 28, 28, 1), np.nan, np.float32), y=np.zeros(4, int)))],
                 "NaN/Inf", id="cli-nan-validation"),
    pytest.param(lambda t, m, e: ["validate", str(e), "-d", str(np.save(t / "ids.npy", _ids(oov=5012)) or t / "ids.npy"),
                                  "--latency-runs", "1"], "token id 5012 >= vocabulary size 5000", id="cli-validate-oov"),
]


@pytest.mark.parametrize("args,fragment", CLI_CASES)
def test_cli_bad_data_exits_2_without_a_traceback(tmp_path: Path, gray_model_path: Path, embedding_tflite: Path,
                                                  args: Callable[..., list[str]], fragment: str) -> None:
    from edgemp.cli import main

    argv = args(tmp_path, gray_model_path, embedding_tflite)
    if argv[0] == "convert":
        argv += ["-o", str(tmp_path / "out"), "--latency-runs", "1"]
    r = CliRunner().invoke(main, argv)
    out = r.output
    assert r.exit_code == 2, out
    assert fragment in out and "Traceback" not in out
    assert not isinstance(r.exception, Exception) or isinstance(r.exception, SystemExit)


def test_token_ids_checked_before_calibration(embedding_tflite: Path) -> None:
    from edgemp.validation.inputs import check_token_ids

    model = embedding_tflite.read_bytes()
    samples = [{"ids": _ids()[i : i + 1]} for i in range(20)]
    check_token_ids(model, samples, errors.CalibrationError)  # all in the vocabulary
    samples[7] = {"ids": _ids(oov=9999)[3:4]}
    with pytest.raises(errors.CalibrationError, match=r"token id 9999 >= vocabulary size 5000 in input 'ids' \(sample 7,"):
        check_token_ids(model, samples, errors.CalibrationError)


def test_failure_hint_names_dynamic_inputs(dynamic_model) -> None:  # type: ignore[no-untyped-def]
    from edgemp.sources import load_source
    from edgemp.validation.inputs import failure_hint

    tflite = load_source(dynamic_model).to_float_tflite(1)
    hint = failure_hint(tflite, RuntimeError("XNNPack delegate failed to reshape runtimeNode number 3 (X) failed to prepare."))
    assert "dynamic input dimensions ('image' (1, ?, ?, 3))" in hint and "fixed input size" in hint
    assert failure_hint(tflite, RuntimeError("something else")) == ""
