"""Every bad input gets one typed error whose message names the fix, and nothing half-written."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import edgemp
from edgemp import errors

from .conftest import CALIBRATION


def _no_outputs(d: Path) -> bool:
    return not d.exists() or not any(d.iterdir())


def test_missing_model_path(tmp_path: Path) -> None:
    with pytest.raises(errors.ModelLoadError, match="does not exist"):
        edgemp.convert(tmp_path / "nope.keras", "fp32", output_dir=tmp_path / "out" / "deep")
    assert not (tmp_path / "out").exists()  # not even an empty folder is left behind


def test_unreadable_model_path(tmp_path: Path) -> None:
    p = tmp_path / "m.keras"
    p.write_bytes(b"x")
    p.chmod(0)
    if os.geteuid() != 0:
        with pytest.raises(errors.ModelLoadError, match="not readable"):
            edgemp.convert(p, "fp32", output_dir=tmp_path / "out")
        return
    # root reads any file: drop the capabilities that let it (as an unprivileged user would be), then use the CLI
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without util-linux setpriv: cannot make a file unreadable")
    code = ("import sys, edgemp\ntry:\n    edgemp.convert(sys.argv[1], 'fp32', output_dir=sys.argv[2])\n"
            "except edgemp.errors.ModelLoadError as exc:\n    sys.exit(f'ModelLoadError: {exc}')")
    proc = subprocess.run([setpriv, "--bounding-set=-dac_override,-dac_read_search", sys.executable, "-c", code, str(p),
                           str(tmp_path / "out")], capture_output=True, text=True)
    assert proc.returncode == 1 and "ModelLoadError" in proc.stderr and "not readable (permissions)" in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists()


def test_directory_that_is_not_a_savedmodel(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    with pytest.raises(errors.UnsupportedModelError, match="saved_model.pb"):
        edgemp.convert(tmp_path / "dir", "fp32", output_dir=tmp_path / "out")


@pytest.mark.parametrize("name", ["model.onnx", "model.tflite", "weights.bin"])
def test_unsupported_file_type(tmp_path: Path, name: str) -> None:
    p = tmp_path / name
    p.write_bytes(b"\x00" * 64)
    with pytest.raises(errors.UnsupportedModelError, match=r"\.keras"):
        edgemp.convert(p, "fp32", output_dir=tmp_path / "out")


def test_unsupported_model_object(tmp_path: Path) -> None:
    with pytest.raises(errors.UnsupportedModelError, match="keras.Model"):
        edgemp.convert(object(), "fp32", output_dir=tmp_path / "out")


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_corrupt_keras_files(tmp_path: Path, model_path: Path, suffix: str) -> None:
    p = tmp_path / f"corrupt{suffix}"
    if suffix == ".keras":  # a real .keras truncated in the middle: what an interrupted copy leaves
        data = model_path.read_bytes()
        p.write_bytes(data[: len(data) // 2])
    else:
        p.write_bytes(b"\x89HDF\r\n\x1a\n" + os.urandom(256))
    with pytest.raises(errors.ModelLoadError, match="corrupt"):
        edgemp.convert(p, "fp32", output_dir=tmp_path / "out")
    assert _no_outputs(tmp_path / "out")


def test_model_the_converter_cannot_lower_names_the_op(tmp_path: Path) -> None:
    import keras
    import tensorflow as tf

    class Inverse(keras.layers.Layer):
        def call(self, x):  # type: ignore[no-untyped-def]
            return tf.linalg.inv(tf.reshape(x, (-1, 2, 2)))

    inp = keras.Input((4,), name="x")
    model = keras.Model(inp, keras.layers.Flatten()(Inverse(name="inverse")(inp)))
    with pytest.raises(errors.UnsupportedOpsError) as info:
        edgemp.convert(model, "fp32", output_dir=tmp_path / "out")
    assert info.value.ops == ["tf.MatrixInverse"]
    assert "tf.MatrixInverse" in str(info.value) and "inverse" in str(info.value)
    assert info.value.exit_code == 4


def test_empty_calibration_folder(tmp_path: Path, tiny_model) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "empty").mkdir()
    with pytest.raises(errors.CalibrationError, match="no image files"):
        edgemp.convert(tiny_model, "int8", tmp_path / "empty", output_dir=tmp_path / "out")
    assert _no_outputs(tmp_path / "out")


def test_calibration_folder_without_a_readable_image(tmp_path: Path, tiny_model) -> None:  # type: ignore[no-untyped-def]
    d = tmp_path / "bad"
    d.mkdir()
    (d / "a.png").write_bytes(b"not a png")
    (d / "b.jpg").write_bytes(b"")
    (d / "notes.txt").write_text("hello")
    with pytest.raises(errors.CalibrationError, match="no readable image.*2 image file"):
        edgemp.convert(tiny_model, "int8", d, output_dir=tmp_path / "out")


def test_unreadable_files_are_skipped_and_counted(tmp_path: Path, tiny_model) -> None:  # type: ignore[no-untyped-def]
    import shutil

    d = tmp_path / "cal"
    shutil.copytree(CALIBRATION, d / "good")
    (d / "broken.png").write_bytes(b"\x89PNG garbage")
    (d / "README.txt").write_text("not an image")
    r = edgemp.convert(tiny_model, "int8", d, output_dir=tmp_path / "out", num_calibration_samples=500, latency_runs=1)
    cal = r.report["calibration"]
    assert cal["num_samples"] == 200 and cal["num_files_skipped"] == 2
    reasons = {Path(s["path"]).name: s["reason"] for s in cal["skipped"]}
    assert "unreadable image" in reasons["broken.png"] and "not an image" in reasons["README.txt"]


def test_calibration_shape_mismatch(tmp_path: Path, tiny_model) -> None:  # type: ignore[no-untyped-def]
    np.save(tmp_path / "cal.npy", np.zeros((8, 32, 32, 1), np.float32))
    with pytest.raises(errors.CalibrationError, match=r"sample shape \(32, 32, 1\).*expects \(28, 28, 1\)"):
        edgemp.convert(tiny_model, "int8", tmp_path / "cal.npy", output_dir=tmp_path / "out")


def test_calibration_channel_mismatch(tmp_path: Path, tiny_model) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(errors.CalibrationError, match="channel count differs"):
        edgemp.convert(tiny_model, "int8", np.zeros((8, 28, 28, 3), np.float32), output_dir=tmp_path / "out")
    with pytest.raises(errors.CalibrationError, match="gives 3 channel"):
        edgemp.convert(tiny_model, "int8", CALIBRATION, output_dir=tmp_path / "out", preprocessing={"color": "rgb"})


def test_nan_or_inf_in_calibration(tmp_path: Path, tiny_model) -> None:  # type: ignore[no-untyped-def]
    x = np.random.default_rng(0).random((8, 28, 28, 1), dtype=np.float32)
    x[3, 1, 1, 0] = np.nan
    x[5, 2, 2, 0] = np.inf
    with pytest.raises(errors.CalibrationError, match="2 NaN/Inf"):
        edgemp.convert(tiny_model, "int8", x, output_dir=tmp_path / "out")


def test_int8_without_calibration(tmp_path: Path, tiny_model) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(errors.CalibrationError, match="needs calibration data"):
        edgemp.convert(tiny_model, "int8", None, output_dir=tmp_path / "out")


def test_unknown_precision_lists_valid_ones(tmp_path: Path, tiny_model) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(errors.UnknownPrecisionError) as info:
        edgemp.convert(tiny_model, "int4", output_dir=tmp_path / "out")
    for p in ("fp32", "fp16", "dynamic-int8", "int8", "int16x8"):
        assert repr(p) in str(info.value)
    assert info.value.exit_code == 2


def test_output_exists_without_force(tmp_path: Path, tiny_model) -> None:  # type: ignore[no-untyped-def]
    first = edgemp.convert(tiny_model, "fp32", output_dir=tmp_path, latency_runs=1)
    before = first.artifacts["tflite"].stat().st_mtime_ns
    with pytest.raises(errors.OutputExistsError, match="--force"):
        edgemp.convert(tiny_model, "fp32", output_dir=tmp_path, latency_runs=1)
    assert first.artifacts["tflite"].stat().st_mtime_ns == before
    again = edgemp.convert(tiny_model, "fp32", output_dir=tmp_path, latency_runs=1, force=True)
    assert again.artifacts["tflite"].exists()


def test_output_directory_not_writable(tmp_path: Path, tiny_model) -> None:  # type: ignore[no-untyped-def]
    blocker = tmp_path / "file"
    blocker.write_text("a file where a directory should go")
    with pytest.raises(errors.OutputNotWritableError):
        edgemp.convert(tiny_model, "fp32", output_dir=blocker / "out")
    with pytest.raises(errors.OutputNotWritableError):
        edgemp.convert(tiny_model, "fp32", output_dir=blocker)


def test_interrupted_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgemp import _io

    target = tmp_path / "model.tflite"
    target.write_bytes(b"previous good model")

    def interrupted(src: str, dst: str) -> None:
        raise KeyboardInterrupt  # killed between writing the temp file and the rename

    monkeypatch.setattr(_io.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _io.write_atomic(target, b"new model bytes" * 1000)
    assert target.read_bytes() == b"previous good model"
    assert [p.name for p in tmp_path.iterdir()] == ["model.tflite"]


def test_delegate_that_does_not_exist(tmp_path: Path, tiny_model) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(errors.DelegateError, match="does not exist"):
        edgemp.convert(tiny_model, "fp32", output_dir=tmp_path, delegates=[str(tmp_path / "libnope.so")])


def test_library_that_is_not_a_delegate(tmp_path: Path, tiny_model) -> None:  # type: ignore[no-untyped-def]
    import ctypes.util

    libm = ctypes.util.find_library("m")
    path = next(str(p) for p in (Path("/lib/x86_64-linux-gnu") / (libm or "libm.so.6"), Path("/usr/lib") / (libm or ""))
                if p.is_file()) if libm else None
    if path is None:
        pytest.skip("no libm on this machine")
    with pytest.raises(errors.DelegateError, match="failed to load"):
        edgemp.convert(tiny_model, "fp32", output_dir=tmp_path, delegates=[path])
    assert not (tmp_path / "tiny_fp32.tflite").exists()


def test_bad_validation_labels(tmp_path: Path, tiny_model) -> None:  # type: ignore[no-untyped-def]
    x = np.zeros((10, 28, 28, 1), np.float32)
    with pytest.raises(errors.DataError, match="10 inputs but 3 labels"):
        edgemp.convert(tiny_model, "fp32", validation=(x, np.arange(3)), output_dir=tmp_path)


def test_not_a_tflite_file_for_inspect_and_validate(tmp_path: Path) -> None:
    p = tmp_path / "fake.tflite"
    p.write_bytes(b"PK\x03\x04 this is a zip, not a flatbuffer")
    with pytest.raises(errors.NotATFLiteModelError, match="TFL3"):
        edgemp.inspect_model(p)
    with pytest.raises(errors.NotATFLiteModelError):
        edgemp.validate(p)


def test_int8_label_is_refused_when_an_op_stays_float(tmp_path: Path) -> None:
    """The AI Edge Quantizer has no int8 SIN: it stays float between DEQUANTIZE and QUANTIZE, so "int8" would lie."""
    import keras

    inp = keras.Input((8,), name="x")
    h = keras.layers.Lambda(lambda t: keras.ops.sin(t), name="sine")(keras.layers.Dense(16)(inp))
    model = keras.Model(inp, keras.layers.Dense(4)(h), name="sine_model")
    cal = np.random.default_rng(0).random((64, 8), dtype=np.float32)
    with pytest.raises(errors.PrecisionLabelError, match=r"1 op\(s\) still compute in float: SIN .*layer 'sine'"):
        edgemp.convert(model, "int8", cal, output_dir=tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    r = edgemp.convert(model, "dynamic-int8", cal, output_dir=tmp_path / "out", latency_runs=1, progress=False)
    assert r.passed  # the label the message suggests is honest for this model
