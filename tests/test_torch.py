"""PyTorch sources through the same pipeline: trained CNN accuracy, NHWC without transposes, torchvision nets,
ExportedProgram / .pt2 inputs, and the PyTorch bad inputs."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

import edgemp
from edgemp.sources.torch_errors import UNLOWERABLE_HINT
from edgemp import errors

from .conftest import CALIBRATION

pytestmark = pytest.mark.slow  # real torchvision architectures and the trained PyTorch example at every precision

torch = pytest.importorskip("torch")
ALL = [p.value for p in edgemp.Precision if p is not edgemp.Precision.MIXED]


def test_torch_example_is_trained_and_big_enough(torch_model, heldout_nchw) -> None:  # type: ignore[no-untyped-def]
    x, y = heldout_nchw
    with torch.no_grad():
        acc = float((torch_model(torch.from_numpy(x[:2000])).argmax(1).numpy() == y[:2000]).mean())
    assert acc > 0.8 and sum(p.numel() for p in torch_model.parameters()) >= 100_000


@pytest.mark.parametrize("precision", ALL)
def test_every_precision_from_pytorch(torch_conversions, precision: str) -> None:  # type: ignore[no-untyped-def]
    r = torch_conversions(precision)
    assert r.passed, r.report.failures
    c = edgemp.inspect_model(r.artifacts["tflite"])
    assert c.transpose_count == 0
    assert c.inputs[0].shape == (1, 28, 28, 1)  # NHWC artifact, data given NCHW
    assert r.report["model"]["input_layout"] == "NHWC" and r.report["preprocessing"]["layout"] == "NHWC"
    assert r.report["model"]["source"] == "pytorch" and r.report["model"]["layout_transposes"] == []


def test_pytorch_int8_fully_integer_and_within_one_point(torch_conversions) -> None:  # type: ignore[no-untyped-def]
    r = torch_conversions("int8")
    c = edgemp.inspect_model(r.artifacts["tflite"])
    assert not c.float_compute_ops(allow_io_boundaries=False)
    assert {s.dtype for s in (*c.inputs, *c.outputs)} == {"int8"}
    acc = r.report["validation"]["accuracy"]
    assert r.report["validation"]["data"]["num_samples"] == 10_000
    assert acc["drop"] <= 0.01, acc


def test_pytorch_size_ratios(torch_conversions) -> None:  # type: ignore[no-untyped-def]
    fp32 = torch_conversions("fp32").report["artifacts"][0]["bytes"]
    assert torch_conversions("fp16").report["artifacts"][0]["bytes"] <= 0.52 * fp32
    assert torch_conversions("int8").report["artifacts"][0]["bytes"] <= 0.30 * fp32


def test_no_layout_tax_against_the_keras_twin(torch_model, torch_conversions, heldout, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Same architecture and weights built in Keras (native NHWC): the PyTorch-sourced int8 artifact has the same
    ops and no extra TRANSPOSE; the only difference is litert-torch lowering the 1-channel first conv as depthwise."""
    from .models import keras_twin_of_torch_example

    twin = edgemp.convert(keras_twin_of_torch_example(torch_model), "int8", CALIBRATION, heldout, tmp_path,
                          latency_runs=2)
    ours = edgemp.inspect_model(torch_conversions("int8").artifacts["tflite"])
    theirs = edgemp.inspect_model(twin.artifacts["tflite"])
    a, b = dict(ours.op_counts), dict(theirs.op_counts)
    assert ours.transpose_count == theirs.transpose_count == 0 and sum(a.values()) == sum(b.values())
    a["CONV_2D"] = a.get("CONV_2D", 0) + a.pop("DEPTHWISE_CONV_2D", 0)
    assert a == b
    assert abs(twin.report["validation"]["accuracy"]["top1"]
               - torch_conversions("int8").report["validation"]["accuracy"]["top1"]) < 0.005


def test_nchw_layout_keeps_pytorch_io(torch_model, heldout_nchw, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    x, y = heldout_nchw
    r = edgemp.convert(torch_model, "int8", x[:200], (x[:500], y[:500]), tmp_path,
                       example_input=torch.zeros(1, 1, 28, 28), input_layout="NCHW", latency_runs=2)
    assert r.passed, r.report.failures
    assert edgemp.inspect_model(r.artifacts["tflite"]).inputs[0].shape == (1, 1, 28, 28)
    assert r.report["model"]["input_layout"] == "NCHW"


def _warmed(name: str):  # type: ignore[no-untyped-def]
    """Random-init torchvision nets give ~1e-10 outputs in eval mode: set batch-norm statistics first."""
    import torchvision

    m = getattr(torchvision.models, name)(weights=None)
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.momentum = None
    m.train()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _ in range(3):
            m(torch.rand(8, 3, 224, 224, generator=g))
    return m.eval()


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_mobilenet_v3_small_nhwc_has_no_transposes(precision: str, tmp_path: Path) -> None:
    model = _warmed("mobilenet_v3_small")
    data = torch.rand(16, 3, 224, 224, generator=torch.Generator().manual_seed(1)).numpy()
    # random weights and random images, no labels: the fidelity floor for int8 (25 dB, from the study) is for
    # trained models; this test is about layout, so it states the fidelity it accepts
    r = edgemp.convert(model, precision, data, data, tmp_path, example_input=torch.rand(1, 3, 224, 224),
                       input_layout="NHWC", latency_runs=2, min_sqnr_db=15, min_cosine=0.95)
    assert r.passed, r.report.failures
    c = edgemp.inspect_model(r.artifacts["tflite"])
    assert c.transpose_count == 0 and c.inputs[0].shape == (1, 224, 224, 3)
    out = r.report["validation"]["outputs"][0]
    if precision == "fp16":
        assert out["cosine"] >= 0.99
    else:
        assert not c.float_compute_ops(allow_io_boundaries=False) and out["cosine"] >= 0.95


def test_resnet18_nhwc_has_no_transposes(tmp_path: Path) -> None:
    model = _warmed("resnet18")
    data = torch.rand(8, 3, 224, 224, generator=torch.Generator().manual_seed(2)).numpy()
    r = edgemp.convert(model, "fp16", None, data, tmp_path, example_input=torch.rand(1, 3, 224, 224),
                       input_layout="NHWC", latency_runs=2)
    assert r.passed, r.report.failures
    c = edgemp.inspect_model(r.artifacts["tflite"])
    assert c.transpose_count == 0 and c.inputs[0].shape == (1, 224, 224, 3)
    assert r.report["validation"]["outputs"][0]["cosine"] >= 0.99


def test_spatial_mean_is_rewritten_to_remove_the_transpose(tmp_path: Path) -> None:
    class MeanHead(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 16, 3, padding=1)
            self.fc = torch.nn.Linear(16, 4)

        def forward(self, x):  # type: ignore[no-untyped-def]
            return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))

    r = edgemp.convert(MeanHead().eval(), "fp32", example_input=torch.rand(1, 3, 16, 16), output_dir=tmp_path,
                       latency_runs=2)
    assert r.passed and edgemp.inspect_model(r.artifacts["tflite"]).transpose_count == 0
    assert any("adaptive_avg_pool2d" in w for w in r.report["model"]["rewrites"])
    assert r.report["validation"]["outputs"][0]["max_abs_error"] < 1e-4


def test_flatten_head_transpose_is_reported(tmp_path: Path) -> None:
    """Flatten of an NCHW feature map keeps PyTorch's element order: one TRANSPOSE stays, and the user is told."""
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(8 * 8 * 8, 4)).eval()
    with pytest.warns(UserWarning, match="1 TRANSPOSE op.*global-pooling head"):
        r = edgemp.convert(model, "fp32", example_input=torch.rand(1, 1, 8, 8), output_dir=tmp_path, latency_runs=1)
    assert r.passed and len(r.report["model"]["layout_transposes"]) == 1


def test_exported_program_and_pt2_file(torch_model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    example = torch.zeros(1, 1, 28, 28)
    program = torch.export.export(torch_model, (example,))
    a = edgemp.convert(program, "fp32", CALIBRATION, output_dir=tmp_path / "a", latency_runs=2)
    torch.export.save(program, tmp_path / "model.pt2")
    b = edgemp.convert(tmp_path / "model.pt2", "fp32", CALIBRATION, output_dir=tmp_path / "b", latency_runs=2)
    assert a.passed and b.passed
    assert a.artifacts["tflite"].read_bytes() == b.artifacts["tflite"].read_bytes()
    # the graph module of an exported program (refuses .eval(): its mode was fixed at export) converts the same
    c = edgemp.convert(program.module(), "fp32", CALIBRATION, output_dir=tmp_path / "c", example_input=example,
                       latency_runs=2)
    assert c.passed and c.report["validation"]["outputs"][0]["sqnr_db"] > 60


def test_training_mode_module_is_put_in_eval_mode_with_a_warning(tmp_path: Path) -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Dropout(0.5), torch.nn.Flatten())
    model.train()
    with pytest.warns(UserWarning, match="training mode"):
        r = edgemp.convert(model, "fp32", example_input=torch.rand(1, 1, 8, 8), output_dir=tmp_path, latency_runs=1)
    assert not model.training and r.passed


# -- bad inputs ------------------------------------------------------------------------------------------
def test_module_without_example_input(torch_model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(errors.InputError, match="example_input"):
        edgemp.convert(torch_model, "fp32", output_dir=tmp_path)


def test_example_input_the_model_rejects(torch_model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(errors.InputError, match=r"rejects example_input of shape\(s\) \[\(1, 3, 28, 28\)\]"):
        edgemp.convert(torch_model, "fp32", example_input=torch.zeros(1, 3, 28, 28), output_dir=tmp_path)
    with pytest.raises(errors.InputError, match=r"dtype\(s\) \['torch.int64'\]"):
        edgemp.convert(torch_model, "fp32", example_input=torch.zeros(1, 1, 28, 28, dtype=torch.int64),
                       output_dir=tmp_path)


def test_data_dependent_control_flow_is_named(tmp_path: Path) -> None:
    class Branchy(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 4, 3)

        def forward(self, x):  # type: ignore[no-untyped-def]
            y = self.conv(x)
            if y.sum() > 0:  # depends on the data: cannot be exported as one graph
                return y * 2
            return y

    with pytest.raises(errors.ConversionError) as info:
        edgemp.convert(Branchy().eval(), "fp32", example_input=torch.rand(1, 1, 8, 8), output_dir=tmp_path)
    msg = str(info.value)
    assert "data-dependent control flow" in msg and "torch.cond" in msg
    assert "in forward() at" in msg and "if y.sum() > 0" in msg  # the user's line, not torch internals
    assert not any(tmp_path.iterdir())


def test_op_without_lowering_is_named_with_its_module_path(tmp_path: Path) -> None:
    class Inverse(torch.nn.Module):
        def forward(self, x):  # type: ignore[no-untyped-def]
            return torch.linalg.inv(x)

    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), Inverse()).eval()
    with pytest.raises(errors.UnsupportedOpsError) as info:
        edgemp.convert(model, "fp32", example_input=torch.rand(1, 1, 6, 6), output_dir=tmp_path)
    assert "aten.linalg_inv_ex.default in 1 (Inverse)" in str(info.value)
    assert UNLOWERABLE_HINT in str(info.value)  # and what to change
    assert info.value.ops == ["aten.linalg_inv_ex.default"] and not any(tmp_path.iterdir())


def test_calibration_not_shaped_like_example_input(torch_model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    nhwc = np.zeros((8, 28, 28, 1), np.float32)  # NHWC arrays for an NCHW example: a common mistake
    with pytest.raises(errors.CalibrationError, match=r"expects \(1, 28, 28\)"):
        edgemp.convert(torch_model, "int8", nhwc, example_input=torch.zeros(1, 1, 28, 28), output_dir=tmp_path)


def test_corrupt_pt2_and_pickles_are_refused(torch_model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "bad.pt2").write_bytes(b"PK\x03\x04" + b"\x00" * 100)
    with pytest.raises(errors.ModelLoadError, match="not a torch.export archive|corrupt"):
        edgemp.convert(tmp_path / "bad.pt2", "fp32", output_dir=tmp_path / "o")
    import zipfile

    with zipfile.ZipFile(tmp_path / "other.pt2", "w") as z:  # a valid zip that is not an export archive
        z.writestr("notes.txt", "hello")
    with pytest.raises(errors.UnsupportedModelError, match="not an ExportedProgram archive"):
        edgemp.convert(tmp_path / "other.pt2", "fp32", output_dir=tmp_path / "o")
    torch.save(torch_model.state_dict(), tmp_path / "weights.pt")
    with pytest.raises(errors.UnsupportedModelError, match="arbitrary code"):
        edgemp.convert(tmp_path / "weights.pt", "fp32", output_dir=tmp_path / "o")
    scripted = torch.jit.trace(torch_model, torch.zeros(1, 1, 28, 28))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(scripted, str(tmp_path / "scripted.pt2"))  # TorchScript under a .pt2 name
    with pytest.raises(errors.UnsupportedModelError, match="TorchScript"):
        edgemp.convert(tmp_path / "scripted.pt2", "fp32", output_dir=tmp_path / "o")


def test_torch_export_after_tensorflow_does_not_crash() -> None:
    """Importing Triton after TensorFlow segfaults; edgemp must guard the torch import (see edgemp._compat)."""
    import subprocess
    import sys

    code = ("import tensorflow, torch; import edgemp.sources.torch; import torch._dynamo, litert_torch; "
            "print('alive')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "alive" in out.stdout, out.stderr[-2000:]
