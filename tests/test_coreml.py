"""Core ML artifacts from the same call: every precision's structure, image inputs, labels, mixed mapping, bad inputs.

Core ML cannot run predictions on Linux: numeric checks run on macOS only (and skip here, saying why).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import edgemp
from edgemp.targets.coreml.convert import COREML_PRECISIONS
from edgemp import errors

from .conftest import CALIBRATION

pytestmark = pytest.mark.slow  # Core ML conversions of the trained examples at every Core ML precision

pytest.importorskip("coremltools")  # safe: importing edgemp settled the Triton/TensorFlow import order
KERAS_PRECISIONS = [p for p in COREML_PRECISIONS if p not in ("w8a8", "mixed")]  # w8a8: PyTorch only; mixed: below
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
    # named as the Keras output layer (not TF's "Identity"), float32 whatever the compute precision
    assert c["outputs"] == [{"name": "logits", "kind": "multiArray", "shape": [1, 10], "dtype": "float32"}]
    assert cm["deployment_target"] == cm["requested_deployment_target"] == "iOS16" and c["spec_version"] == 7
    assert cm["deployment_target_note"] is None and cm["conversion_path"] == "keras"
    p = cm["parity"]
    assert p["coreml_column"] == ("real" if sys.platform == "darwin" else
                                  "emulated-fp32" if precision == "fp32" else "emulated-fp16")
    row = p["outputs"][0]
    assert set(row) == {"output", "tflite_vs_source", "coreml_vs_source", "tflite_vs_coreml"}
    assert row["coreml_vs_source"]["cosine"] > 0.999 and p["largest_disagreement"]["pair"] in row
    md = r.report.to_markdown()
    assert "## Parity: source vs TFLite vs Core ML" in md and md.count("**(largest)**") == 1
    worst = p["largest_disagreement"]
    assert f"| {worst['output']} | {worst['pair'].replace('_', ' ')} **(largest)** |" in md
    assert any(a["target"] == "coreml" and a["sha256"] for a in r.report["artifacts"])


TORCH_FP32_MODULES = ["0", "1", "2", "19"]  # the first conv block and the classifier of the example CNN


@pytest.mark.parametrize("precision", COREML_PRECISIONS)
def test_pytorch_model_to_coreml(torch_model, heldout_nchw, tmp_path: Path, precision: str) -> None:  # type: ignore[no-untyped-def]
    torch = pytest.importorskip("torch")
    x, y = heldout_nchw
    r = _convert(torch_model, tmp_path, precision, (x[:200], y[:200]), example_input=torch.zeros(1, 1, 28, 28),
                 coreml_fp32_ops=TORCH_FP32_MODULES if precision == "mixed" else ())
    cm = _structure_ok(r)
    c = cm["census"]
    assert c["inputs"][0]["shape"] == [1, 1, 28, 28] and cm["layout"] == "NCHW"  # Core ML keeps PyTorch's layout
    assert [i["name"] for i in c["inputs"]] == ["args_0"] and c["outputs"] == [
        {"name": "output_0", "kind": "multiArray", "shape": [1, 10], "dtype": "float32"}]
    # the module finalized by coremltools.optimize.torch holds quantized tensors torch.export cannot trace: w8a8 is traced
    assert cm["conversion_path"] == ("torch.jit.trace" if precision == "w8a8" else "torch.export")
    assert cm["requested_deployment_target"] == "iOS16"
    if precision == "w8a8":  # int8 activations need iOS17: the report says the target was raised, and why
        assert c["weight_dtypes"] == {"int8": 6} and c["compute_counts"].get("int", 0) > 0
        assert cm["deployment_target"] == "iOS17" and c["spec_version"] == 8 and "iOS17" in cm["deployment_target_note"]
    else:
        assert cm["deployment_target"] == "iOS16" and c["spec_version"] == 7 and cm["deployment_target_note"] is None
    if precision == "mixed":  # the requested modules' ops, and only those, in float32
        fp32 = {o["type"] for o in c["ops"] if o["compute"] == "float32" and o["type"] != "cast"}
        # conv 0 + batch norm 1 are one Core ML conv (named after the batch norm); the linear 19 produces output_0
        assert fp32 == {"conv", "relu", "linear"} and set(cm["fp32_kept_ops"]) == {
            "_native_batch_norm_legit_no_training", "relu", "output_0"}
        assert any(ch["name"] == "coreml_mixed_compute" for ch in cm["structure_checks"])
    if precision == "palettize4":
        assert c["weight_dtypes"].get("palettized-4bit", 0) >= 5
    p = cm["parity"]  # PyTorch source: NCHW Core ML column against the NHWC TFLite artifact, same samples
    assert p["coreml_column"] == ("real" if sys.platform == "darwin" else
                                  "emulated-fp32" if precision == "fp32" else "emulated-fp16")
    assert all(row["coreml_vs_source"]["cosine"] > 0.999 for row in p["outputs"])
    if precision in SIZE_LIMITS:
        assert cm["ratio_to_fp32"] <= SIZE_LIMITS[precision]


def test_image_input_and_class_labels(model_path: Path, small_heldout, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    r = edgemp.convert(model_path, "int8", CALIBRATION, small_heldout, tmp_path, targets=("tflite", "coreml"),
                       coreml_image_input=True, class_names=list(edgemp.demo.CLASSES), latency_runs=1, progress=False)
    cm = _structure_ok(r)
    assert cm["precision"] == "int8-weights" and "not TFLite's fully-integer int8" in cm["precision_meaning"]
    assert cm["census"]["inputs"][0]["kind"] == "image" and cm["census"]["inputs"][0]["dtype"] == "grayscale"
    assert cm["image_input"]["scale"] == pytest.approx(1 / 255) and cm["class_labels"] == 10
    # a classifier: the predicted label and the probability dictionary, named as the source's output
    assert {(o["name"], o["kind"]) for o in cm["census"]["outputs"]} == {("classLabel", "stringType"),
                                                                       ("logits", "dictionaryType")}
    assert cm["census"]["image_preprocessing"] == {"image": {"scale": pytest.approx(1 / 255), "bias": [0.0]}}
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
    kept = {o["name"] for o in cm["census"]["ops"] if o["compute"] == "float32" and o["type"] != "cast"}
    assert kept == set(cm["fp32_kept_ops"]) & {o["name"] for o in cm["census"]["ops"]}  # exactly those, checked
    p = cm["parity"]  # mixed: the Core ML column is the fp16 emulation, and says the fp32 ops are not emulated
    assert p["coreml_column"] == ("real" if sys.platform == "darwin" else "emulated-fp16")
    if sys.platform != "darwin":
        assert "ops kept in fp32 by 'mixed' are emulated in fp16" in p["note"]
    assert p["outputs"][0]["coreml_vs_source"]["cosine"] > 0.99 and "**(largest)**" in r.report.to_markdown()


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


def test_staging_folder_is_removed_whatever_happens(model_path: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import tempfile

    from edgemp.pipeline import Conversion

    shm = Path("/dev/shm")  # a temporary folder on another file system than the output, where there is one
    other_fs = shm.is_dir() and os.access(shm, os.W_OK) and shm.stat().st_dev != tmp_path.stat().st_dev
    temp = Path(tempfile.mkdtemp(dir=shm)) if other_fs else tmp_path / "tmp"
    temp.mkdir(exist_ok=True)
    monkeypatch.setattr(tempfile, "tempdir", str(temp))  # coremltools and the frameworks leave their own files there
    try:
        r = edgemp.convert(model_path, "fp16", output_dir=tmp_path / "out", targets=("coreml",), progress=False)
        assert (Path(r.artifacts["coreml"]) / "Manifest.json").exists() and not list(temp.glob("edgemp-*"))

        def crash(self, results):  # type: ignore[no-untyped-def]
            raise RuntimeError("crash between building the package and writing it")
        monkeypatch.setattr(Conversion, "report", crash)
        with pytest.raises(errors.InternalError, match="crash between"):
            edgemp.convert(model_path, "fp16", output_dir=tmp_path / "out2", targets=("coreml",), progress=False)
        assert not list(temp.glob("edgemp-*")) and not (tmp_path / "out2").exists()
    finally:
        if other_fs:
            import shutil
            shutil.rmtree(temp)


@pytest.mark.skipif(sys.platform != "darwin", reason="Core ML predictions need macOS (coremltools MLModel.predict)")
def test_numeric_validation_on_macos(model_path: Path, small_heldout, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    x, y = small_heldout
    r = _convert(model_path, tmp_path, "fp16", (x[:200], y[:200]))
    nv = r.report["coreml"]["numeric_validation"]
    assert nv["run"] and nv["outputs"][0]["cosine"] > 0.999 and abs(nv["top1"] - nv["float_top1"]) < 0.01


def _tiny_rgb(kind: str):  # type: ignore[no-untyped-def]
    """A small untrained RGB model of either framework (structure tests need no accuracy)."""
    if kind == "keras":
        import keras

        inp = keras.Input((16, 16, 3), name="image")
        x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(8, 3, activation="relu", name="conv")(inp))
        return keras.Model(inp, keras.layers.Dense(4, name="logits")(x), name="rgb"), {}
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(8, 4)).eval()
    return net, {"example_input": torch.rand(1, 3, 16, 16)}


@pytest.mark.parametrize("kind", ["keras", "pytorch"])
def test_rgb_image_input_folds_mean_and_std(tmp_path: Path, kind: str) -> None:
    model, kw = _tiny_rgb(kind)
    mean, std = (0.485, 0.456, 0.406), 0.226
    r = edgemp.convert(model, "fp32", output_dir=tmp_path, targets=("tflite", "coreml"), coreml_image_input=True,
                       preprocessing={"mean": mean, "std": (std, std, std), "color": "rgb"}, latency_runs=1,
                       progress=False, **kw)
    cm = _structure_ok(r)
    name = "image" if kind == "keras" else "args_0"
    assert cm["census"]["inputs"] == [{"name": name, "kind": "image", "shape": [16, 16], "dtype": "rgb"}]
    folded = cm["census"]["image_preprocessing"][name]  # read back from the saved spec's program
    assert folded["scale"] == pytest.approx(1 / 255 / std, rel=1e-5)
    assert folded["bias"] == pytest.approx([-m / std for m in mean], rel=1e-5)
    assert any(c["name"] == "coreml_image_preprocessing" and c["passed"] for c in cm["structure_checks"])

    other = tmp_path / "per_channel_std"
    with pytest.raises(errors.InputError, match="one scale for all channels.*differs per channel"):
        edgemp.convert(model, "fp32", output_dir=other, targets=("tflite", "coreml"), coreml_image_input=True,
                       preprocessing={"mean": mean, "std": (0.229, 0.224, 0.225)}, latency_runs=1, progress=False, **kw)
    assert not other.exists() or not any(other.iterdir())  # nothing written: no .tflite, no partial .mlpackage


def test_non_default_deployment_target_is_in_the_spec(model_path: Path, tmp_path: Path) -> None:
    r = edgemp.convert(model_path, "fp16", output_dir=tmp_path, targets=("tflite", "coreml"),
                       minimum_deployment_target="ios17", latency_runs=1, progress=False)
    cm = _structure_ok(r)
    assert cm["deployment_target"] == cm["requested_deployment_target"] == "iOS17"
    assert cm["census"]["spec_version"] == 8 and cm["deployment_target_note"] is None  # iOS16 gives 7


class _TwoRelus:  # built lazily: torch is optional
    @staticmethod
    def make():  # type: ignore[no-untyped-def]
        torch = pytest.importorskip("torch")

        class Net(torch.nn.Module):
            """A module named `relu` (a Core ML op type too) and another ReLU named `act`."""

            def __init__(self) -> None:
                super().__init__()
                self.conv, self.relu = torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU()
                self.conv2, self.act = torch.nn.Conv2d(16, 64, 3, padding=1), torch.nn.ReLU()  # weights dominate size
                self.fc = torch.nn.Linear(64, 4)

            def forward(self, x):  # type: ignore[no-untyped-def]
                return self.fc(self.act(self.conv2(self.relu(self.conv(x)))).mean(dim=(2, 3)))

        torch.manual_seed(0)
        return Net().eval(), torch.rand(1, 3, 16, 16)


@pytest.mark.parametrize(("requests", "fp32_relus"), [(["relu"], 1), (["type:relu"], 2)])
def test_layer_named_like_an_op_type_keeps_only_its_own_ops(tmp_path: Path, requests: list[str],
                                                            fp32_relus: int) -> None:
    net, example = _TwoRelus.make()
    r = edgemp.convert(net, "fp32", example_input=example, output_dir=tmp_path, targets=("tflite", "coreml"),
                       coreml_precision="mixed", coreml_fp32_ops=requests, latency_runs=1, progress=False)
    cm = _structure_ok(r)  # includes coreml_mixed_compute: the kept ops in fp32, all others fp16
    relus = sorted((o["name"], o["compute"]) for o in cm["census"]["ops"] if o["type"] == "relu")
    assert len(relus) == 2 and sum(c == "float32" for _, c in relus) == fp32_relus
    if fp32_relus == 1:  # the module `relu`, not the ReLU of `act`
        assert ("relu", "float32") in relus and cm["fp32_kept_ops"] == ["relu"]


def test_mixed_request_matching_nothing_fails_the_check(tmp_path: Path) -> None:
    net, example = _TwoRelus.make()
    r = edgemp.convert(net, "fp32", example_input=example, output_dir=tmp_path, targets=("tflite", "coreml"),
                       coreml_precision="mixed", coreml_fp32_ops=["relu", "conv9"], latency_runs=1, progress=False)
    check = next(c for c in r.report["coreml"]["structure_checks"] if c["name"] == "coreml_mixed_compute")
    assert not check["passed"] and "conv9" in check["detail"] and "type:<op>" in check["detail"] and not r.passed


def test_torch_export_rejection_falls_back_to_tracing(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from edgemp.targets.coreml.build import build_coreml
    from edgemp.sources import load_source

    class Branchy(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)

        def forward(self, x):  # type: ignore[no-untyped-def]
            y = self.conv(x)
            if y.mean() > 0:  # data-dependent Python control flow: export cannot guard on it; a trace keeps one branch
                return y * 2.0
            return y - 1.0

    torch.manual_seed(0)
    net, example = Branchy().eval(), torch.rand(1, 1, 8, 8)
    with pytest.raises(Exception, match="data-dependent"):
        torch.export.export(net, (example,))
    source = load_source(net, example_input=example)
    out = build_coreml(source, "fp16", tmp_path / "branchy.mlpackage", staging=tmp_path, fp32_ops=(), image=None, class_names=None,
                       target="iOS16", calibration=[], validation_inputs=None, reference=None, labels=None)
    assert out.section["conversion_path"] == "torch.jit.trace"
    assert all(c.passed for c in out.checks), [c.to_dict() for c in out.checks]
    assert out.section["census"]["outputs"][0]["shape"] == [1, 4, 8, 8]


def test_parity_of_a_pytorch_feature_map_lines_up_nchw_with_nhwc(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU()).eval()  # C=4 != H=W=8
    r = edgemp.convert(net, "fp32", example_input=torch.rand(1, 3, 8, 8), output_dir=tmp_path,
                       targets=("tflite", "coreml"), coreml_precision="fp16", latency_runs=1, progress=False)
    cm = _structure_ok(r)
    assert cm["census"]["outputs"][0]["shape"] == [1, 4, 8, 8]  # Core ML: NCHW, the TFLite artifact: NHWC
    assert r.report["model"]["input_layout"] == "NHWC"
    row = cm["parity"]["outputs"][0]
    assert row["coreml_vs_source"]["cosine"] > 0.9999 and row["tflite_vs_coreml"]["cosine"] > 0.9999


def test_parity_moves_nchw_only_where_told() -> None:
    import numpy as np

    from edgemp.validation.parity import parity, to_markdown

    rng = np.random.default_rng(0)
    nchw = rng.random((3, 8, 8, 8), dtype=np.float32)  # C == H == W: shapes cannot tell the layouts apart
    nhwc = np.moveaxis(nchw, 1, -1)
    p = parity([nhwc], [nhwc], [nchw], coreml_kind="emulated-fp16", output_names=["out"], note="", coreml_nchw=[0])
    assert p["outputs"][0]["coreml_vs_source"]["max_abs_error"] == 0.0
    wrong = parity([nhwc], [nhwc], [nchw], coreml_kind="emulated-fp16", output_names=["out"], note="")
    assert wrong["outputs"][0]["coreml_vs_source"]["max_abs_error"] > 0.1
    assert wrong["largest_disagreement"]["pair"] in ("coreml_vs_source", "tflite_vs_coreml")
    lines = [ln for ln in to_markdown(wrong) if "**(largest)**" in ln]
    assert len(lines) == 1 and "emulated" in "\n".join(to_markdown(wrong))


@pytest.mark.parametrize(("channels", "color", "channel_first"), [(1, "grayscale", False), (3, "rgb", True),
                                                                  (3, "bgr", False)])
def test_image_from_array_inverts_the_preprocessing(channels: int, color: str, channel_first: bool) -> None:
    import numpy as np

    from edgemp.config import Preprocessing
    from edgemp.targets.coreml.checks import image_from_array

    pre = Preprocessing(mean=(0.5, 0.4, 0.3)[:channels], std=(0.25,), color=color)
    rgb = np.random.default_rng(0).integers(0, 256, (6, 5, channels), dtype=np.uint8)  # what the camera gives
    model_order = rgb[..., ::-1] if color == "bgr" else rgb
    x = (model_order.astype(np.float32) * pre.scale - np.asarray(pre.mean, np.float32)) / 0.25
    x = np.moveaxis(x, -1, 0)[None] if channel_first else x[None]
    img = image_from_array(x, pre, channel_first)
    assert img.size == (5, 6) and img.mode == ("L" if channels == 1 else "RGB")
    got = np.asarray(img).reshape(6, 5, channels)
    assert np.array_equal(got, rgb)  # BGR models still get an RGB image: Core ML reorders the channels


def test_classifier_dictionary_is_read_in_class_order() -> None:
    import numpy as np

    from edgemp.targets.coreml.checks import outputs_in_order, probabilities_vector

    classes = ["cat", "dog", "bird"]
    probs = {"bird": 0.1, "cat": 0.7, "dog": 0.2}  # a dictionary has no order of its own
    assert probabilities_vector(probs, classes).tolist() == pytest.approx([0.7, 0.2, 0.1])
    assert probabilities_vector({0: 0.3, 1: 0.7}, [0, 1]).tolist() == pytest.approx([0.3, 0.7])
    with pytest.raises(ValueError, match="lack classes"):
        probabilities_vector({"cat": 1.0}, classes)
    pred = {"classLabel": "cat", "logits": probs, "embedding": np.ones((1, 2, 2), np.float32)}
    out = outputs_in_order(pred, ["classLabel", "logits", "embedding"], "classLabel", "logits", classes)
    assert [o.shape for o in out] == [(1, 3), (1, 2, 2)] and out[0][0].tolist() == pytest.approx([0.7, 0.2, 0.1])


@pytest.mark.skipif(sys.platform != "darwin", reason="Core ML predictions need macOS (coremltools MLModel.predict)")
def test_numeric_validation_of_image_classifier_on_macos(model_path: Path, small_heldout, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    x, y = small_heldout  # image input (PIL images from the preprocessing) and class-ordered probabilities
    r = edgemp.convert(model_path, "fp16", CALIBRATION, (x[:200], y[:200]), tmp_path, targets=("tflite", "coreml"),
                       coreml_image_input=True, class_names=list(edgemp.demo.CLASSES), latency_runs=1, progress=False)
    nv = r.report["coreml"]["numeric_validation"]
    assert nv["run"] and nv["outputs"][0]["cosine"] > 0.999 and abs(nv["top1"] - nv["float_top1"]) < 0.01
    assert r.report["coreml"]["parity"]["outputs"][0]["coreml_vs_source"]["cosine"] > 0.999


def test_keras_layer_named_like_an_op_type(tmp_path: Path) -> None:
    import keras

    inp = keras.Input((16, 16, 3), name="image")
    a, b = keras.layers.Conv2D(8, 3, name="a")(inp), keras.layers.Conv2D(8, 3, name="b")(inp)
    x = keras.layers.Concatenate(name="concat")([a, b])  # a layer called like the Core ML op type
    x = keras.layers.Concatenate(name="join")([x, keras.layers.Conv2D(8, 3, padding="same", name="c")(x)])
    model = keras.Model(inp, keras.layers.Dense(4, name="logits")(keras.layers.GlobalAveragePooling2D()(x)))
    r = edgemp.convert(model, "fp32", output_dir=tmp_path, targets=("tflite", "coreml"), coreml_precision="mixed",
                       coreml_fp32_ops=["concat"], latency_runs=1, progress=False)
    cm = _structure_ok(r)
    concats = [(o["name"], o["compute"]) for o in cm["census"]["ops"] if o["type"] == "concat"]
    assert len(concats) == 2 and [c for _, c in concats].count("float32") == 1, concats
    assert all("join" not in n for n, c in concats if c == "float32")
