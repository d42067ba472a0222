"""Core ML artifacts from the same call: every precision's structure, image inputs, labels, mixed mapping, bad inputs.

Core ML cannot run predictions on Linux: numeric checks run on macOS only (and skip here, saying why).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import edgemp
from edgemp import errors

from .conftest import CALIBRATION

pytest.importorskip("coremltools")  # safe: importing edgemp settled the Triton/TensorFlow import order
KERAS_PRECISIONS = ["fp32", "fp16", "int8-weights", "palettize6", "palettize4"]
SIZE_LIMITS = {"fp16": 0.55, "int8-weights": 0.30}


def _convert(model, tmp_path: Path, coreml_precision: str, data, **kw):  # type: ignore[no-untyped-def]
    return edgemp.convert(model, "fp32", CALIBRATION, data, tmp_path, targets=("tflite", "coreml"),
                          coreml_precision=coreml_precision, latency_runs=1, progress=False, **kw)


def _structure_ok(r) -> dict:  # type: ignore[no-untyped-def]
    cm = r.report["coreml"]
    failed = [c for c in cm["structure_checks"] if not c["passed"]]
    assert not failed, failed
    assert cm["numeric_validation"]["run"] is (sys.platform == "darwin")
    if sys.platform != "darwin":  # never "passed" when it did not run
        assert "macOS" in cm["numeric_validation"]["reason"]
    assert Path(cm["path"]).is_dir() and (Path(cm["path"]) / "Manifest.json").exists()
    return cm


@pytest.mark.parametrize("precision", KERAS_PRECISIONS)
def test_keras_model_to_every_coreml_precision(model_path: Path, small_heldout, tmp_path: Path, precision: str) -> None:  # type: ignore[no-untyped-def]
    x, y = small_heldout
    r = _convert(model_path, tmp_path, precision, (x[:200], y[:200]))
    cm = _structure_ok(r)
    c = cm["census"]
    compute = {k: v for k, v in c["compute_counts"].items() if k.startswith("float")}
    if precision == "fp32":
        assert set(compute) == {"float32"} and set(c["weight_dtypes"]) == {"float32"}
    else:
        body = [o for o in c["ops"] if o["type"] not in ("cast", "classify")]
        assert {o["compute"] for o in body} == {"float16"}
        want = {"fp16": "float16", "int8-weights": "int8", "palettize6": "palettized-6bit",
                "palettize4": "palettized-4bit"}[precision]
        assert c["weight_dtypes"].get(want, 0) >= 5  # every weight above the threshold (the 288-element conv stays fp16)
    if precision in SIZE_LIMITS:
        assert cm["ratio_to_fp32"] <= SIZE_LIMITS[precision]
    assert c["inputs"] == [{"name": "image", "kind": "multiArray", "shape": [1, 28, 28, 1], "dtype": "float32"}]
    assert c["outputs"][0]["dtype"] == "float32"  # float32 outputs whatever the compute precision
    p = cm["parity"]
    assert p["coreml_column"] == ("real" if sys.platform == "darwin" else
                                  "emulated-fp32" if precision == "fp32" else "emulated-fp16")
    row = p["outputs"][0]
    assert set(row) == {"output", "tflite_vs_source", "coreml_vs_source", "tflite_vs_coreml"}
    assert row["coreml_vs_source"]["cosine"] > 0.999 and p["largest_disagreement"]["pair"] in row
    assert "## Parity: source vs TFLite vs Core ML" in r.report.to_markdown()
    assert any(a["target"] == "coreml" and a["sha256"] for a in r.report["artifacts"])


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8-weights", "w8a8", "palettize6"])
def test_pytorch_model_to_coreml(torch_model, heldout_nchw, tmp_path: Path, precision: str) -> None:  # type: ignore[no-untyped-def]
    torch = pytest.importorskip("torch")
    x, y = heldout_nchw
    r = _convert(torch_model, tmp_path, precision, (x[:200], y[:200]), example_input=torch.zeros(1, 1, 28, 28))
    cm = _structure_ok(r)
    c = cm["census"]
    assert c["inputs"][0]["shape"] == [1, 1, 28, 28] and cm["layout"] == "NCHW"  # Core ML keeps PyTorch's layout
    if precision == "w8a8":
        assert c["weight_dtypes"] == {"int8": 6} and c["compute_counts"].get("int", 0) > 0
    if precision in SIZE_LIMITS:
        assert cm["ratio_to_fp32"] <= SIZE_LIMITS[precision]


def test_image_input_and_class_labels(model_path: Path, small_heldout, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    r = edgemp.convert(model_path, "int8", CALIBRATION, small_heldout, tmp_path, targets=("tflite", "coreml"),
                       coreml_image_input=True, class_names=list(edgemp.demo.CLASSES), latency_runs=1, progress=False)
    cm = _structure_ok(r)
    assert cm["precision"] == "int8-weights" and "not TFLite's fully-integer int8" in cm["precision_meaning"]
    assert cm["census"]["inputs"][0]["kind"] == "image" and cm["census"]["inputs"][0]["dtype"] == "grayscale"
    assert cm["image_input"]["scale"] == pytest.approx(1 / 255) and cm["class_labels"] == 10
    scaled = [o for o in cm["census"]["ops"] if o["name"].endswith("__scaled__")]
    assert len(scaled) == 1  # the calibration preprocessing is folded into the image input, once
    out = subprocess.run([sys.executable, "-m", "edgemp", "inspect", cm["path"]], capture_output=True, text=True)
    assert out.returncode == 0 and "Core ML ML Program" in out.stdout and "class labels: 10" in out.stdout


def test_mixed_keeps_the_searched_layers_in_fp32(small_heldout, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from edgemp.demo import sensitive_model_path

    x, y = small_heldout
    r = edgemp.convert(sensitive_model_path(), "mixed", CALIBRATION, (x * 255.0, y), tmp_path,
                       preprocessing={"scale": 1.0}, max_accuracy_drop=0.003, targets=("tflite", "coreml"),
                       latency_runs=1, progress=False)
    cm = _structure_ok(r)
    assert cm["precision"] == "mixed" and set(cm["fp32_ops"]) >= {"cat", "logits"}
    fp32 = {o["type"] for o in cm["census"]["ops"] if o["compute"] == "float32" and o["type"] != "cast"}
    assert {"concat", "linear"} <= fp32  # the join and the logits layer, as in the TFLite artifact


def test_coreml_bad_inputs(model_path: Path, tmp_path: Path) -> None:
    with pytest.raises(errors.InputError, match="deployment target 'iOS3'.*iOS16"):
        edgemp.convert(model_path, "fp16", output_dir=tmp_path, targets=("tflite", "coreml"),
                       minimum_deployment_target="iOS3")
    with pytest.raises(errors.InputError, match="w8a8 needs a PyTorch source.*int8-weights"):
        edgemp.convert(model_path, "fp16", output_dir=tmp_path, targets=("tflite", "coreml"), coreml_precision="w8a8")
    with pytest.raises(errors.InputError, match="no Core ML counterpart"):
        edgemp.convert(model_path, "int16x8", CALIBRATION, output_dir=tmp_path, targets=("tflite", "coreml"))
    assert not any(tmp_path.iterdir())


def test_op_coremltools_cannot_convert_is_named(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")

    class Diff(torch.nn.Module):  # LiteRT lowers torch.diff; coremltools has no translation for it
        def forward(self, x):  # type: ignore[no-untyped-def]
            return torch.diff(x, dim=1)

    with pytest.raises(errors.UnsupportedOpsError) as info:
        edgemp.convert(Diff().eval(), "fp32", example_input=torch.rand(1, 8), output_dir=tmp_path,
                       targets=("tflite", "coreml"), latency_runs=1, progress=False)
    assert info.value.ops == ["diff"] and "coremltools cannot convert" in str(info.value)
    assert not any(tmp_path.iterdir())  # the .tflite is not written either: one call, one outcome


def test_existing_mlpackage_is_not_touched_without_force(model_path: Path, tmp_path: Path) -> None:
    pkg = tmp_path / f"{model_path.stem}_fp16.mlpackage"
    pkg.mkdir()
    (pkg / "user_file.txt").write_text("mine")
    with pytest.raises(errors.OutputExistsError, match="mlpackage"):
        edgemp.convert(model_path, "fp16", output_dir=tmp_path, targets=("tflite", "coreml"), latency_runs=1)
    assert (pkg / "user_file.txt").read_text() == "mine" and len(list(tmp_path.iterdir())) == 1
    edgemp.convert(model_path, "fp16", output_dir=tmp_path, targets=("tflite", "coreml"), latency_runs=1, force=True,
                   progress=False)
    assert (pkg / "Manifest.json").exists() and not (pkg / "user_file.txt").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp or backup directories left


@pytest.mark.skipif(sys.platform != "darwin", reason="Core ML predictions need macOS (coremltools MLModel.predict)")
def test_numeric_validation_on_macos(model_path: Path, small_heldout, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    x, y = small_heldout
    r = _convert(model_path, tmp_path, "fp16", (x[:200], y[:200]))
    nv = r.report["coreml"]["numeric_validation"]
    assert nv["run"] and nv["outputs"][0]["cosine"] > 0.999 and abs(nv["top1"] - nv["float_top1"]) < 0.01
