"""Detection post-processing inside a PyTorch forward() (NMS, x[mask], torch.nonzero, top-k with k from data) is
refused with a PostProcessingError naming the op, the user's line and the documented fix; the network before
the post-processing (raw boxes and scores) converts and is judged output by output."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import edgemp
from edgemp import errors

from . import models

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")

FIX = "run decoding/NMS in the app"
HERE = "test_torch_postprocessing.py"


def _line(fn: Any, text: str) -> int:
    """The line number of the first source line of `fn` that contains `text`."""
    lines, start = inspect.getsourcelines(fn)
    return start + next(i for i, ln in enumerate(lines) if text in ln)


class Head(torch.nn.Module):
    """A conv head over an 8x8 map: per anchor (64 of them) a box (4) and a score."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 5, 3, padding=1)

    def forward(self, x):  # type: ignore[no-untyped-def]
        y = self.conv(x).flatten(2).transpose(1, 2)  # (N, 64, 5)
        return y[..., :4], torch.sigmoid(y[..., 4])


class KeepConfident(torch.nn.Module):
    def forward(self, boxes, scores):  # type: ignore[no-untyped-def]
        return boxes[scores > 0.5], scores[scores > 0.5]  # boolean mask: as many rows as scores above 0.5


class MaskedDetector(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head, self.post = Head(), KeepConfident()

    def forward(self, x):  # type: ignore[no-untyped-def]
        boxes, scores = self.head(x)
        return self.post(boxes[0], scores[0])


class NonzeroDetector(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = Head()

    def forward(self, x):  # type: ignore[no-untyped-def]
        boxes, scores = self.head(x)
        idx = torch.nonzero(scores[0] > 0.5).squeeze(1)
        return boxes[0, idx], scores[0, idx]


class DataTopK(torch.nn.Module):
    """topk whose k is the number of confident anchors, written three ways."""

    def __init__(self, form: str) -> None:
        super().__init__()
        self.head, self.form = Head(), form

    def forward(self, x):  # type: ignore[no-untyped-def]
        boxes, scores = self.head(x)
        s = scores[0]
        if self.form == "int":
            k = int((s > 0.5).sum())
            return torch.topk(s, k)
        if self.form == "item":
            return torch.topk(s, (s > 0.5).sum().item())
        return torch.topk(s, int((s > 0.5).sum()))


class FixedTopK(torch.nn.Module):
    """The static alternative: a constant k, low scores masked by multiplication."""

    def __init__(self) -> None:
        super().__init__()
        self.head = Head()

    def forward(self, x):  # type: ignore[no-untyped-def]
        boxes, scores = self.head(x)
        top, idx = torch.topk(scores * (scores > 0.5), 5, dim=1)
        return {"boxes": torch.gather(boxes, 1, idx.unsqueeze(-1).expand(-1, -1, 4)), "scores": top}


def _refused(model: Any, example: Any, out: Path) -> errors.PostProcessingError:
    with pytest.raises(errors.PostProcessingError) as info:
        edgemp.convert(model.eval(), "fp32", example_input=example, output_dir=out)
    err = info.value
    msg = str(err)
    assert isinstance(err, errors.UnsupportedOpsError) and isinstance(err, errors.EdgempError)
    assert err.exit_code == 4
    assert FIX in msg and "docs/families.md#detection" in msg and "torch.topk with a constant k" in msg
    assert "_assert_scalar" not in msg and "sym_constrain_range" not in msg  # export's runtime checks, never blamed
    assert "\n" not in msg  # one line for the CLI
    assert err.findings and err.ops
    assert not out.exists() or not any(out.iterdir())  # nothing written
    return err


def _scene() -> Any:
    x, _ = models.detection_data(1)
    return torch.from_numpy(x)


def test_nms_in_forward_is_named_with_its_line(tmp_path: Path) -> None:
    model = models.torch_nms_detector()
    err = _refused(model, _scene(), tmp_path)
    line = _line(type(model).forward, "torchvision.ops.nms(")
    msg = str(err)
    assert "non-maximum suppression (torchvision.ops.nms / batched_nms)" in msg
    assert f"models.py:{line}" in msg and "`keep = torchvision.ops.nms(xyxy, scores, 0.5)`" in msg
    assert err.ops == ["torchvision.nms.default"]
    assert err.findings[0]["line"] == line and err.findings[0]["file"].endswith("models.py")


def test_boolean_mask_is_named_with_its_module_path_and_line(tmp_path: Path) -> None:
    err = _refused(MaskedDetector(), torch.rand(1, 1, 8, 8), tmp_path)
    msg = str(err)
    line = _line(KeepConfident.forward, "scores > 0.5")
    assert "boolean-mask indexing (x[mask])" in msg and f"{HERE}:{line}" in msg
    assert "in post (KeepConfident)" in msg
    assert err.findings[0]["module"] == "post" and err.findings[0]["op"] == "aten.index.Tensor"


def test_nonzero_is_named_with_its_line(tmp_path: Path) -> None:
    err = _refused(NonzeroDetector(), torch.rand(1, 1, 8, 8), tmp_path)
    line = _line(NonzeroDetector.forward, "torch.nonzero(")
    assert "torch.nonzero" in str(err) and f"{HERE}:{line}" in str(err)
    assert "boolean-mask" not in str(err)  # the index by the nonzero result is not blamed: it has its size


@pytest.mark.parametrize(("form", "text"),
                         [("int", "k = int("), ("item", ".item())"), ("inline", "torch.topk(s, int(")])
def test_topk_with_k_from_data_is_named_with_its_line(form: str, text: str, tmp_path: Path) -> None:
    err = _refused(DataTopK(form), torch.rand(1, 1, 8, 8), tmp_path)
    line = _line(DataTopK.forward, text)
    assert "top-k with k computed from data" in str(err) and f"{HERE}:{line}" in str(err)
    assert "control flow" not in str(err)


class CountThenBranch(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = Head()

    def forward(self, x):  # type: ignore[no-untyped-def]
        boxes, scores = self.head(x)
        n = int((scores > 0.5).sum())
        if n > 3:
            return boxes * 2
        return boxes


def test_python_branch_on_data_keeps_the_control_flow_hint(tmp_path: Path) -> None:
    with pytest.raises(errors.ConversionError) as info:
        edgemp.convert(CountThenBranch().eval(), "fp32", example_input=torch.rand(1, 1, 8, 8), output_dir=tmp_path)
    assert not isinstance(info.value, errors.PostProcessingError)
    msg = str(info.value)
    assert "data-dependent control flow" in msg and "torch.cond" in msg
    assert f"{HERE}:{_line(CountThenBranch.forward, 'n = int(')}" in msg


def test_code_without_source_lines_is_located_by_its_caller(tmp_path: Path) -> None:
    """Code run from a string has no source lines: the op, its module path and the line calling it still come out."""
    scope: dict[str, Any] = {"torch": torch}
    exec("class Keep(torch.nn.Module):\n    def forward(self, b, s):\n        return b[s > 0.5]\n", scope)
    model = MaskedDetector()
    model.post = scope["Keep"]()
    err = _refused(model, torch.rand(1, 1, 8, 8), tmp_path)
    line = _line(MaskedDetector.forward, "self.post(")
    assert "boolean-mask indexing (x[mask]) [aten.index.Tensor] in post (Keep) at " in str(err)
    assert f"{HERE}:{line}: `return self.post(boxes[0], scores[0])`" in str(err)


def test_litert_lowering_failure_is_read_when_export_cannot_be_repeated() -> None:
    from edgemp.sources.torch_postprocess import NMS, litert_finding

    text = ("Lowering not found: torchvision.nms.default\n\nWhile executing %nms : [num_users=3] = call_function["
            "target=torch.ops.torchvision.nms.default](args = (%cat_1, %getitem_6, 0.5), kwargs = {})\n"
            "Original traceback:\nFile \"/venv/lib/python3.11/site-packages/litert_torch/x.py\", line 56, in forward\n"
            "    outputs = self.wrapped(*args)\n  File \"/src/det.py\", line 31, in forward\n"
            "    keep = torchvision.ops.nms(b, s, 0.5)\n")
    f = litert_finding(RuntimeError(text))
    assert f is not None and f.what == NMS and (f.file, f.line) == ("/src/det.py", 31)
    assert f.code == "keep = torchvision.ops.nms(b, s, 0.5)"
    assert litert_finding(RuntimeError("While executing %inv : [num_users=1] = call_function[target=torch.ops.aten."
                                       "linalg_inv_ex.default](args = (%x,), kwargs = {})")) is None


def test_fixed_k_topk_with_masking_converts(tmp_path: Path) -> None:
    """Converts; judged by a metric on the selected scores, as docs/families.md says: among masked (tied, zero)
    scores the runtimes pick different boxes, so the boxes output is no per-element match for the float model's."""
    torch.manual_seed(0)
    x = torch.rand(8, 1, 8, 8)

    def mean_top_score(outputs: dict[str, np.ndarray], _: Any) -> float:
        return float(outputs["scores"].mean())

    result = edgemp.convert(FixedTopK().eval(), "fp32", example_input=x[:1], validation=x.numpy(),
                            metric=mean_top_score, max_accuracy_drop=1e-4, output_dir=tmp_path, latency_runs=2)
    assert result.passed, result.report.failures
    assert [o["name"] for o in result.report["validation"]["outputs"]] == ["boxes", "scores"]
    assert [o["shape"] for o in result.report["validation"]["outputs"]] == [[5, 4], [5]]


def _nms_pt2(path: Path) -> Path:
    model = models.torch_nms_detector()
    torch.export.save(torch.export.export(model, (_scene(),)), str(path))
    return path


def test_cli_exits_4_with_one_line(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from edgemp.cli import main

    pt2 = _nms_pt2(tmp_path / "nms.pt2")
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["convert", str(pt2), "-p", "fp32", "-o", str(out)])
    assert r.exit_code == 4, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r.output
    line = _line(type(models.torch_nms_detector()).forward, "torchvision.ops.nms(")
    assert "non-maximum suppression" in r.output and f"models.py:{line}" in r.output and FIX in r.output
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.slow
def test_cli_in_a_fresh_process_exits_4(tmp_path: Path) -> None:
    pt2 = _nms_pt2(tmp_path / "nms.pt2")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    r = subprocess.run([sys.executable, "-m", "edgemp", "convert", str(pt2), "-p", "fp32", "-o", str(tmp_path / "o")],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 4, r.stderr[-2000:]
    assert "non-maximum suppression" in r.stderr and "Traceback" not in r.stderr


def _convert_detector(precision: str, out: Path) -> Any:
    x, targets = models.detection_data()
    return edgemp.convert(models.torch_detector(), precision, example_input=torch.from_numpy(x[:1]),
                          calibration=x[:200] if precision == "int8" else None,
                          validation=(x[models.N_TRAIN:], targets[models.N_TRAIN:]),
                          metric=models.detection_accuracy, max_accuracy_drop=0.02, output_dir=out, latency_runs=2)


def _assert_judged_per_output(result: Any, metric: str = "detection_accuracy") -> None:
    v = result.report["validation"]
    outputs = {o["name"]: o for o in v["outputs"]}
    assert list(outputs) == ["boxes", "scores"]
    assert outputs["boxes"]["task"] == "regression" and outputs["boxes"]["shape"] == [16, 4]
    scores = outputs["scores"]
    assert scores["task"] == "classification" and scores["num_classes"] == 11 and scores["shape"] == [16, 11]
    assert scores["top1_agreement"] >= 0.95  # the argmax class of each of the 16 anchors
    acc = v["accuracy"]
    assert acc["task"] == "metric" and acc["metric"] == metric
    assert acc["float"] > 0.5 and acc["drop"] <= 0.02  # the trained detector finds most digits
    assert result.passed, result.report.failures


def test_plain_detector_converts_at_int8_judged_per_output(tmp_path: Path) -> None:
    _assert_judged_per_output(_convert_detector("int8", tmp_path))


def test_plain_detector_judged_per_output_at_dynamic_int8(tmp_path: Path) -> None:
    _assert_judged_per_output(_convert_detector("dynamic-int8", tmp_path))


class HeadOutputs(torch.nn.Module):
    """docs/families.md#detection: the trained detector up to its heads, decoding and NMS left to the app."""

    def __init__(self, detector: Any) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, x):  # type: ignore[no-untyped-def]
        f = self.detector.features(x)
        boxes = self.detector.box_head(f).flatten(2).transpose(1, 2)  # (N, A, 4): dx, dy, size logits
        logits = self.detector.cls_head(f).flatten(2).transpose(1, 2)  # (N, A, K)
        return {"boxes": boxes, "scores": torch.softmax(logits, -1)}


def test_head_outputs_with_decoding_in_the_metric_convert_at_int8(tmp_path: Path) -> None:
    """The documented export: raw head outputs convert fully int8; the metric decodes as the app would."""
    detector = models.torch_detector()
    centers = detector.centers.numpy()

    def decoded_accuracy(outputs: dict[str, np.ndarray], targets: list[dict[str, Any]]) -> float:
        d = outputs["boxes"]
        sizes = 3 * models.CELL / (1 + np.exp(-d[..., 2:]))  # sigmoid(d) * 3 cells, as TinySSD decodes
        boxes = np.concatenate([centers + d[..., :2] * models.CELL, sizes], -1) * models.ORIGINAL
        return models.detection_accuracy({"boxes": boxes, "scores": outputs["scores"]}, targets)

    x, targets = models.detection_data()
    result = edgemp.convert(HeadOutputs(detector).eval(), "int8", example_input=torch.from_numpy(x[:1]),
                            calibration=x[:200], validation=(x[models.N_TRAIN:], targets[models.N_TRAIN:]),
                            metric=decoded_accuracy, max_accuracy_drop=0.02, output_dir=tmp_path, latency_runs=2)
    _assert_judged_per_output(result, "decoded_accuracy")
    assert "fully_integer" in [c["name"] for c in result.report["checks"] if c["passed"]]
