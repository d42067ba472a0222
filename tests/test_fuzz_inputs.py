"""Property-based tests of the calibration/validation loaders and the runtime: whatever the data (random dtypes,
shapes and values, NaN/Inf, empty, object, bool, complex, huge; random bytes named like images, truncated images,
images of every Pillow mode), the outcome is a usable result or an edgemp.errors.EdgempError, never another
exception. A result is always finite and shaped and typed like the model input.

Deterministic (derandomize=True) and bounded (max_examples per test) so the suite stays fast.
"""

from __future__ import annotations

import io
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edgemp.calibration import load_calibration
from edgemp.calibration.checks import range_findings
from edgemp.config import Preprocessing
from edgemp.errors import EdgempError
from edgemp.sources.base import TensorSpec
from edgemp.validation.data import ValidationData, load_validation

FUZZ = settings(max_examples=80, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large])

SPECS: list[list[TensorSpec]] = [
    [TensorSpec("image", (None, 4, 4, 1))],
    [TensorSpec("image", (None, 3, 5, 3))],
    [TensorSpec("ids", (None, 3), "int32")],
    [TensorSpec("x", (None,))],
    [TensorSpec("x", (None, 2), "uint8")],
    [TensorSpec("x", (None, 2), "float16")],
    [TensorSpec("flag", (None, 2), "bool")],
    [TensorSpec("image", (None, None, None, 3))],
    [TensorSpec("text", (None,), "string")],
    [TensorSpec("image", (None, 2, 2, 3)), TensorSpec("meta", (None, 2))],
]

NUMERIC = st.sampled_from(["bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float16",
                           "float32", "float64", "complex64", "complex128"])
SHAPES = hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=5)


@st.composite
def arrays(draw: st.DrawFn) -> np.ndarray:
    """Numeric arrays of any dtype and shape, with NaN/Inf/huge values for floats; also strings, objects, dates."""
    kind = draw(st.sampled_from(["numeric"] * 6 + ["str", "object", "datetime", "ragged"]))
    shape = draw(SHAPES)
    if kind == "numeric":
        dtype = np.dtype(draw(NUMERIC))
        elements = None
        if dtype.kind == "f":
            elements = st.floats(allow_nan=True, allow_infinity=True, width=dtype.itemsize * 8)
        return draw(hnp.arrays(dtype, shape, elements=elements))
    if kind == "str":
        return draw(hnp.arrays(np.dtype("U3"), shape))
    if kind == "datetime":
        return np.zeros(shape, "datetime64[s]")
    if kind == "object":
        return np.array([None, 1.5, "a"][: draw(st.integers(0, 3))], dtype=object)
    return [[1, 2], [3]]  # type: ignore[return-value]


@st.composite
def shaped(draw: st.DrawFn, spec: TensorSpec) -> np.ndarray:
    """An array of the input's shape (a random batch size and dynamic sizes) with a random dtype and values, so the
    value checks (NaN/Inf, overflow, fractional ids, casts) are reached, not only the shape check."""
    dims = [draw(st.integers(0, 4))] + [d if d is not None else draw(st.integers(1, 6)) for d in spec.shape[1:]]
    if draw(st.integers(0, 4)) == 0:
        dims = dims[1:]  # one unbatched sample
    dtype = np.dtype(draw(NUMERIC))
    elements = st.floats(allow_nan=True, allow_infinity=True, width=dtype.itemsize * 8) if dtype.kind == "f" else None
    return draw(hnp.arrays(dtype, tuple(dims), elements=elements))


@st.composite
def containers(draw: st.DrawFn, specs: list[TensorSpec]) -> Any:
    """The array as the user might wrap it: bare, dict by input name, list of batches, (x, y), generator."""
    arr = draw(st.one_of(arrays(), shaped(specs[0]), shaped(specs[0])))
    how = draw(st.sampled_from(["bare", "dict", "dict", "list", "xy", "gen", "dict-wrong-key", "none", "scalar"]))
    if how == "dict":
        return {s.name: draw(st.one_of(arrays(), shaped(s))) if i else arr for i, s in enumerate(specs)}
    if how == "dict-wrong-key":
        return {"other": arr}
    if how == "list":
        return [arr, draw(arrays())]
    if how == "xy":
        return (arr, draw(arrays()))
    if how == "gen":
        return (a for a in [arr, arr])
    if how == "none":
        return [None]
    if how == "scalar":
        return draw(st.sampled_from([3, 2.5, float("nan"), True, "x", b"\x00", object()]))
    return arr


def _check_result(result: Any, specs: list[TensorSpec]) -> None:
    """A result is finite and shaped/typed like the model inputs."""
    batches = [result.inputs] if isinstance(result, ValidationData) else result.samples
    for batch in batches:
        for s in specs:
            a = batch[s.name]
            assert a.ndim == len(s.shape) and all(e is None or e == g for e, g in zip(s.shape[1:], a.shape[1:]))
            want = np.dtype(s.dtype) if s.dtype.startswith(("float", "int", "uint", "bool")) else np.dtype(np.float32)
            assert a.dtype == want, (a.dtype, want)
            if a.dtype.kind == "f":
                assert np.isfinite(a).all()
    result.summary()  # the report can be written


def _outcome(fn: Any, specs: list[TensorSpec]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # range mismatch warnings are expected on random data
        warnings.simplefilter("error", RuntimeWarning)  # numpy overflow/invalid casts would be silent corruption
        try:
            result = fn()
        except EdgempError:
            return
    _check_result(result, specs)


@FUZZ
@given(data=st.data())
def test_fuzz_calibration_arrays(data: st.DataObject) -> None:
    specs = data.draw(st.sampled_from(SPECS))
    item = data.draw(containers(specs))
    pre = data.draw(st.sampled_from([None, Preprocessing(size=(4, 4)), Preprocessing(scale=1.0)]))
    _outcome(lambda: load_calibration(item, specs, num_samples=data.draw(st.integers(1, 5)), preprocessing=pre), specs)


@FUZZ
@given(data=st.data())
def test_fuzz_validation_arrays(data: st.DataObject) -> None:
    specs = data.draw(st.sampled_from(SPECS))
    item = data.draw(containers(specs))
    opaque = data.draw(st.booleans())
    _outcome(lambda: load_validation(item, specs, Preprocessing(size=(4, 4)), opaque_labels=opaque), specs)


@FUZZ
@given(data=st.data())
def test_fuzz_array_files(data: st.DataObject) -> None:
    specs = data.draw(st.sampled_from(SPECS))
    arr = data.draw(st.one_of(arrays(), shaped(specs[0])))
    how = data.draw(st.sampled_from(["npy", "npz-name", "npz-x", "npz-other", "npz-y", "garbage", "truncated"]))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ("d.npy" if how in ("npy", "garbage") else "d.npz")
        try:
            if how == "npy":
                np.save(path, np.asarray(arr, dtype=object) if isinstance(arr, list) else arr, allow_pickle=True)
            elif how == "garbage":
                path.write_bytes(data.draw(st.binary(max_size=200)))
            else:
                key = {"npz-name": specs[0].name, "npz-x": "x", "npz-other": "other", "npz-y": "x"}.get(how, "x")
                extra = {"y": data.draw(arrays())} if how == "npz-y" else {}
                np.savez(path, **{key: np.asarray(arr, dtype=object) if isinstance(arr, list) else arr}, **extra)
                if how == "truncated":
                    path.write_bytes(path.read_bytes()[: data.draw(st.integers(0, 300))])
        except (ValueError, TypeError):
            return  # numpy itself cannot write it
        _outcome(lambda: load_calibration(path, specs), specs)
        _outcome(lambda: load_validation(path, specs), specs)


# -- image files ---------------------------------------------------------------------------------------------
IMAGE_SPECS = [[TensorSpec("image", (None, 6, 5, 1))], [TensorSpec("image", (None, 4, 4, 3))],
               [TensorSpec("image", (None, 3, 4, 4))]]
SUFFIXES = [".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff"]
FORMATS = {".png": "PNG", ".jpg": "JPEG", ".bmp": "BMP", ".webp": "WEBP", ".gif": "GIF", ".tiff": "TIFF"}
MODES = ["1", "L", "P", "RGB", "RGBA", "LA", "I", "I;16", "F", "CMYK", "YCbCr", "PA"]


@st.composite
def image_bytes(draw: st.DrawFn) -> tuple[str, bytes]:
    """(suffix, content): random bytes, a real image of a random mode/size/format, or one cut short."""
    from PIL import Image

    kind = draw(st.sampled_from(["random", "image", "image", "truncated", "header"]))
    suffix = draw(st.sampled_from(SUFFIXES))
    if kind == "random":
        return suffix, draw(st.binary(max_size=300))
    if kind == "header":  # a PNG header claiming any size (decompression bombs included)
        import struct
        import zlib

        w, h = draw(st.integers(0, 2**31 - 1)), draw(st.integers(0, 2**31 - 1))
        ihdr = struct.pack(">IIBBBBB", w, h, draw(st.sampled_from([1, 8, 16])), draw(st.sampled_from([0, 2, 3, 4, 6])),
                           0, 0, 0)
        chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)  # noqa: E731
        return ".png", b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")
    mode = draw(st.sampled_from(MODES))
    w, h = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    seed = draw(st.integers(0, 2**16))
    im = Image.new(mode, (w, h))
    rng = np.random.default_rng(seed)
    if mode in ("I", "I;16"):
        top = 65535 if mode == "I;16" else draw(st.sampled_from([255, 65535, 2**31 - 1]))
        im = Image.fromarray(rng.integers(0, top + 1, (h, w)).astype(np.uint16 if mode == "I;16" else np.int32))
    elif mode == "F":
        im = Image.fromarray((rng.random((h, w)) * draw(st.sampled_from([1.0, 255.0, -1.0]))).astype(np.float32))
    else:
        raw = rng.integers(0, 256, (h, w, len(im.getbands())), dtype=np.uint8).tobytes()
        im = Image.frombytes(mode, (w, h), raw)
    fmt = FORMATS.get(suffix, "TIFF" if suffix == ".tif" else "JPEG")
    buf = io.BytesIO()
    try:
        im.save(buf, fmt, **({"transparency": 0} if mode == "P" and draw(st.booleans()) else {}))
    except (OSError, ValueError, KeyError, TypeError):
        im.convert("RGB").save(buf, fmt)  # this format cannot store the mode
    content = buf.getvalue()
    if kind == "truncated":
        content = content[: draw(st.integers(0, max(0, len(content) - 1)))]
    return suffix, content


@FUZZ
@given(files=st.lists(image_bytes(), min_size=1, max_size=4), spec=st.sampled_from(IMAGE_SPECS),
       resize=st.sampled_from(["stretch", "center-crop", "letterbox"]))
def test_fuzz_image_folders(files: list[tuple[str, bytes]], spec: list[TensorSpec], resize: str) -> None:
    layout = "NCHW" if spec[0].shape[1] == 3 and spec[0].shape[3] == 4 else "NHWC"
    pre = Preprocessing(resize=resize, layout=layout)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "cls").mkdir()
        for i, (suffix, content) in enumerate(files):
            (root / "cls" / f"f{i}{suffix}").write_bytes(content)
        for load in (lambda: load_calibration(root, spec, preprocessing=pre),
                     lambda: load_validation(root, spec, pre)):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                try:
                    result = load()
                except EdgempError:
                    continue
            _check_result(result, spec)
            batches = [result.inputs] if isinstance(result, ValidationData) else result.samples
            for b in batches:  # default scale 1/255, mean 0, std 1: every value in [0, 1]
                assert b["image"].min() >= 0 and b["image"].max() <= 1 + 1e-6
            summary = result.summary()
            assert summary["num_files_skipped"] + summary["num_samples"] >= len(files)  # nothing lost silently
            assert all(s["reason"] for s in summary["skipped"])


# -- range checks and the runtime --------------------------------------------------------------------------
@FUZZ
@given(a=arrays(), b=arrays(), pre=st.sampled_from([None, Preprocessing(), Preprocessing(scale=1.0, mean=(0.5,))]))
def test_fuzz_range_findings(a: Any, b: Any, pre: Preprocessing | None) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        found = range_findings([{"x": a}] if isinstance(a, np.ndarray) else None,
                               {"x": b} if isinstance(b, np.ndarray) else None, pre)
    assert all(isinstance(f, str) and f for f in found)


@pytest.fixture(scope="module")
def tflites(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, bytes]]:
    import keras

    from edgemp.sources import load_source

    inp = keras.Input((6,), name="ids", dtype="int32")
    emb = keras.Model(inp, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(50, 4)(inp))))
    inp = keras.Input((None, None, 3), name="image")
    dyn = keras.Model(inp, keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(2, 3)(inp)))
    yield {"ids": load_source(emb).to_float_tflite(1), "image": load_source(dyn).to_float_tflite(1)}


@FUZZ
@given(data=st.data())
def test_fuzz_runner(tflites: dict[str, bytes], data: st.DataObject) -> None:
    from edgemp.validation.runtime import Runner

    name = data.draw(st.sampled_from(sorted(tflites)))
    spec = TensorSpec("ids", (None, 6), "int32") if name == "ids" else TensorSpec("image", (None, None, None, 3))
    arr = data.draw(st.one_of(arrays(), shaped(spec), shaped(spec)))
    feed = {data.draw(st.sampled_from([name, name, "other"])): arr}
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        try:
            out = Runner(tflites[name]).run(feed)
        except EdgempError:
            return
    assert all(np.asarray(o).dtype == np.float32 for o in out)
