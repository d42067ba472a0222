"""Quantization-aware training (PyTorch, PT2E): prepare, fine-tune (edgemp's recipe or the user's own loop), convert
to a fully integer .tflite that keeps the scales training learned; and the bad inputs."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import edgemp
from edgemp import errors

from .models import N_TRAIN, digit_tokens, digits, torch_digits_cnn, torch_digits_join, torch_transformer

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def data():  # type: ignore[no-untyped-def]
    x, y = digits()
    x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    return x, y


@pytest.fixture(scope="module")
def trained_qat(data):  # type: ignore[no-untyped-def]
    x, y = data
    qat = edgemp.prepare_qat(torch_digits_cnn(), torch.zeros(1, 1, 8, 8), x[:200], progress=False)
    return edgemp.finetune_qat(qat, (x[:N_TRAIN], y[:N_TRAIN]), epochs=2, progress=False)


def test_prepare_leaves_the_model_alone_and_initialises_ranges(data) -> None:  # type: ignore[no-untyped-def]
    x, _ = data
    model = torch_digits_cnn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    qat = edgemp.prepare_qat(model, torch.zeros(1, 1, 8, 8), x[:64], progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert qat.uninitialised_observers() == [] and qat.calibration["num_samples"] == 64
    assert isinstance(qat, torch.nn.Module) and sum(p.numel() for p in qat.parameters()) > 0


@pytest.mark.slow
def test_qat_gives_a_fully_integer_tflite_with_the_learned_scales(trained_qat, data, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    x, y = data
    qat = trained_qat
    assert qat.frozen["observers"] is not None and qat.frozen["batch_norm"] is not None  # the recipe ran
    r = edgemp.convert(qat, "int8", None, (x[N_TRAIN:], y[N_TRAIN:]), tmp_path, progress=False,
                       runtime=edgemp.RuntimeOptions(latency_runs=2))
    assert r.passed, r.report.failures
    c = r.report["census"]
    assert set(c["compute_counts"]) == {"int8"} and c["transpose_count"] == 0
    assert c["inputs"][0]["shape"] == [1, 8, 8, 1] and c["inputs"][0]["dtype"] == "int8"  # NHWC, as other torch sources
    assert r.report["qat"]["steps_trained"] == qat.steps_trained and r.report["recipe"][0]["quantization_parameters"] \
        == "learned by QAT"
    # the input scale is the one the QAT module's first fake-quant holds: nothing was recalibrated
    first = next(m for name, m in qat.prepared.named_modules() if name == "activation_post_process_0")
    assert c["inputs"][0]["scale"] == pytest.approx(float(first.scale), rel=1e-6)
    ptq = edgemp.convert(torch_digits_cnn(), "int8", x[:200], (x[N_TRAIN:], y[N_TRAIN:]), tmp_path / "ptq",
                         example_input=torch.zeros(1, 1, 8, 8), progress=False,
                         runtime=edgemp.RuntimeOptions(latency_runs=1))
    assert r.report["validation"]["accuracy"]["top1"] >= ptq.report["validation"]["accuracy"]["top1"]


@pytest.mark.slow
def test_core_ml_w8a8_from_the_learned_scales(trained_qat, data, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("coremltools")
    x, y = data
    r = edgemp.convert(trained_qat, "int8", None, (x[N_TRAIN:], y[N_TRAIN:]), tmp_path, targets=("tflite", "coreml"),
                       progress=False, runtime=edgemp.RuntimeOptions(latency_runs=1))
    assert r.passed, r.report.failures
    cm = r.report["coreml"]
    assert cm["precision"] == "w8a8" and set(cm["census"]["weight_dtypes"]) == {"int8"}
    checks = {c["name"]: c for c in cm["structure_checks"]}
    assert checks["coreml_int8_activations"]["passed"] and r.artifacts["coreml"].exists()
    with pytest.raises(errors.InputError, match="Core ML 'w8a8' only"):
        edgemp.convert(trained_qat, "int8", None, x[N_TRAIN:], tmp_path / "b", targets=("coreml",), progress=False,
                       coreml=edgemp.CoreMLOptions(precision="fp16"))


@pytest.mark.slow
def test_mixed_keeps_the_learned_scales_when_they_meet_the_budget(trained_qat, data, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    x, y = data
    r = edgemp.convert(trained_qat, "mixed", None, (x[N_TRAIN:], y[N_TRAIN:]), tmp_path, progress=False,
                       runtime=edgemp.RuntimeOptions(latency_runs=1))
    m = r.report["mixed"]
    assert r.passed and m["met"] and m["float_layers"] == [] and m["qat_learned_scales"]["met"]
    assert set(r.report["census"]["compute_counts"]) == {"int8"} and m["quantize_runs"] == 0
    learned = edgemp.convert(trained_qat, "int8", None, (x[N_TRAIN:], y[N_TRAIN:]), tmp_path / "int8",
                             progress=False, runtime=edgemp.RuntimeOptions(latency_runs=1))
    assert r.artifacts["tflite"].read_bytes() == learned.artifacts["tflite"].read_bytes()


@pytest.mark.slow
def test_mixed_searches_the_trained_weights_when_the_learned_scales_miss(trained_qat, data, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from edgemp.qat.model import QATModel

    x, y = data
    runs: list[bool] = []
    convert = QATModel._convert
    monkeypatch.setattr(QATModel, "_convert", lambda self, fold: runs.append(fold) or convert(self, fold))
    gate = edgemp.GateOptions(min_sqnr_db=60.0)  # beyond int8 anywhere: the learned scales miss it
    with pytest.raises(errors.CalibrationError, match="pass calibration="):
        edgemp.convert(trained_qat, "mixed", None, x[N_TRAIN:], tmp_path / "a", progress=False, gate=gate)
    with pytest.raises(errors.MixedPrecisionError) as info:
        edgemp.convert(trained_qat, "mixed", x[:200], x[N_TRAIN:], tmp_path / "b", progress=False, gate=gate,
                       mixed=edgemp.MixedOptions(max_float_layers=2))
    m = info.value.report["mixed"]
    assert not m["qat_learned_scales"]["met"] and len(m["float_layers"]) >= 1 and m["quantize_runs"] > 1
    assert "learned scales alone scored" in str(info.value)
    # the search quantized the trained weights, not the model prepare_qat started from
    trained = trained_qat.trained_float()
    xt = torch.from_numpy(x[N_TRAIN:])
    with torch.no_grad():
        assert not torch.allclose(trained(xt), trained_qat.float_model(xt))
    # PT2E converted the module once (or an earlier test did) for the learned artifact, the search's weights and the
    # check above (each conversion takes a minute here), each caller getting its own copy; training changes the key
    assert runs in ([], [False]) and trained_qat.converted() is not trained_qat.converted() and len(runs) <= 1
    more = copy.deepcopy(trained_qat)
    assert more._state_digest() == trained_qat._state_digest()
    edgemp.finetune_qat(more, (x[:64], y[:64]), epochs=1, progress=False)
    assert more._state_digest() != trained_qat._state_digest()


@pytest.mark.slow
def test_sigmoid_tanh_softmax_get_the_output_scales_tflite_requires(data, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    x, y = data

    class Heads(torch.nn.Module):  # a gate, a tanh and a softmax output: int8 kernels with fixed output scales
        def __init__(self) -> None:
            super().__init__()
            self.c, self.g, self.fc = torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.Linear(8, 8), torch.nn.Linear(8, 10)

        def forward(self, t: torch.Tensor) -> torch.Tensor:
            f = torch.relu(self.c(t)).mean(dim=(2, 3))
            return torch.softmax(self.fc(f * torch.sigmoid(self.g(f)) + torch.tanh(f)), dim=1)

    torch.manual_seed(0)
    qat = edgemp.prepare_qat(Heads(), torch.zeros(1, 1, 8, 8), x[:200], progress=False)
    edgemp.finetune_qat(qat, (x[:640], y[:640]), epochs=1, progress=False,
                        loss=lambda o, t: torch.nn.functional.nll_loss(torch.log(o + 1e-6), t))
    r = edgemp.convert(qat, "int8", None, (x[N_TRAIN:], y[N_TRAIN:]), tmp_path, progress=False,
                       runtime=edgemp.RuntimeOptions(latency_runs=1))
    assert r.passed and set(r.report["census"]["compute_counts"]) == {"int8"}
    ops = {o["op"]: o for o in r.report["census"]["ops"]}
    assert {"LOGISTIC", "TANH", "SOFTMAX"} <= set(ops)


@pytest.mark.slow
def test_efficientnet_and_mobilenetv3_activations_stay_int8(data, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """SiLU and hard-sigmoid lower to several TFLite ops (LOGISTIC+MUL, ADD+RELU6+MUL): each part gets its own fake
    quantization, or those ops came out in float (found converting a QAT EfficientNet-style net)."""
    x, y = data

    class Block(torch.nn.Module):  # conv + SiLU, a squeeze-excite gate with hard-sigmoid, hard-swish
        def __init__(self) -> None:
            super().__init__()
            self.c = torch.nn.Conv2d(1, 16, 3, padding=1)
            self.se1, self.se2 = torch.nn.Conv2d(16, 8, 1), torch.nn.Conv2d(8, 16, 1)
            self.fc = torch.nn.Linear(16, 10)

        def forward(self, t: torch.Tensor) -> torch.Tensor:
            f = torch.nn.functional.silu(self.c(t))
            f = f * torch.nn.functional.hardsigmoid(self.se2(torch.relu(self.se1(f.mean(dim=(2, 3), keepdim=True)))))
            return self.fc(torch.nn.functional.hardswish(f).mean(dim=(2, 3)))

    torch.manual_seed(0)
    qat = edgemp.prepare_qat(Block(), torch.zeros(1, 1, 8, 8), x[:200], progress=False)
    edgemp.finetune_qat(qat, (x[:640], y[:640]), epochs=1, progress=False)
    r = edgemp.convert(qat, "int8", None, (x[N_TRAIN:], y[N_TRAIN:]), tmp_path, progress=False,
                       runtime=edgemp.RuntimeOptions(latency_runs=1))
    assert r.passed and set(r.report["census"]["compute_counts"]) == {"int8"}
    assert {"LOGISTIC", "HARD_SWISH"} <= {o["op"] for o in r.report["census"]["ops"]}


@pytest.mark.slow
def test_a_transformer_trains_and_exports_fully_integer(tmp_path: Path) -> None:
    """nn.TransformerEncoder: LayerNorm and scaled_dot_product_attention are one aten op each, lowered to many TFLite
    ops with no fake quantization between them, so they came out in float (PrecisionLabelError, found on a tiny ViT).
    Split before preparing, exactly (the float graph gives the model's outputs), each part fake-quantized."""
    x, y = digit_tokens()
    model = torch_transformer()
    qat = edgemp.prepare_qat(model, torch.zeros(1, 8, 8), x[:200], progress=False)
    probe = torch.from_numpy(x[N_TRAIN : N_TRAIN + 64])
    with torch.no_grad():
        assert torch.allclose(qat.trained_float()(probe), model(probe), atol=1e-4)
    edgemp.finetune_qat(qat, (x[:N_TRAIN], y[:N_TRAIN]), epochs=1, progress=False)
    r = edgemp.convert(qat, "int8", None, (x[N_TRAIN:], y[N_TRAIN:]), tmp_path, progress=False,
                       runtime=edgemp.RuntimeOptions(latency_runs=1))
    assert r.passed and set(r.report["census"]["compute_counts"]) == {"int8"}
    assert {"BATCH_MATMUL", "SOFTMAX", "RSQRT"} <= {o["op"] for o in r.report["census"]["ops"]}
    assert r.report["validation"]["accuracy"]["top1"] > 0.7


def _pixel_std_model(flat: np.ndarray, head: str) -> torch.nn.Module:
    """(x - mean) / std per pixel with buffers, then a Linear ("linear") or a 1x1 convolution ("conv"); flat: the
    training images, (n, pixels), of square images with one channel."""
    from torch import nn

    class PixelStd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            n, side = flat.shape[1], int(round(flat.shape[1] ** 0.5))
            shape = (1, n) if head == "linear" else (1, 1, side, side)
            self.register_buffer("mean", torch.from_numpy(flat.mean(0).reshape(shape)))
            self.register_buffer("std", torch.from_numpy(flat.std(0).reshape(shape) + 1e-3))
            self.conv = nn.Conv2d(1, 4, 1) if head == "conv" else nn.Identity()
            self.net = nn.Sequential(nn.Linear(n * (4 if head == "conv" else 1), 64), nn.ReLU(), nn.Linear(64, 10))

        def forward(self, t: torch.Tensor) -> torch.Tensor:
            if isinstance(self.conv, nn.Conv2d):
                return self.net(self.conv((t - self.mean) / self.std).flatten(1))
            return self.net((t.flatten(1) - self.mean) / self.std)

    torch.manual_seed(0)
    return PixelStd()


def test_a_standardisation_folds_into_the_linear_it_feeds_exactly() -> None:
    """(x - mean) / std -> Linear and scaling by numbers after a LayerNorm become the Linear's weight and bias
    (computed from the trainable weight in the graph, baked before export); LayerNorm's own weight and bias stay
    trainable parameters; a constant that varies along another dimension, or feeds two ops, is left."""
    import copy

    from torch import nn

    from edgemp.qat.rewrites import bake_folds, split_composite_ops

    rng = np.random.default_rng(0)
    flat = rng.uniform(0, 16, (100, 64)).astype(np.float32)

    class LNHead(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ln, self.fc = nn.LayerNorm(64), nn.Linear(64, 8)
            with torch.no_grad():
                self.ln.weight.uniform_(0.5, 2.0)
                self.ln.bias.uniform_(-1.0, 1.0)

        def forward(self, t: torch.Tensor) -> torch.Tensor:
            return self.fc(2.0 - self.ln(t.flatten(1)) * 0.5)

    class Shared(nn.Module):  # the standardised input feeds the Linear and the output: not folded
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("scale", torch.from_numpy(flat.std(0) + 1.0))
            self.fc = nn.Linear(64, 64)

        def forward(self, t: torch.Tensor) -> torch.Tensor:
            z = t.flatten(1) * self.scale
            return self.fc(z) + z

    x = torch.from_numpy(flat[:5].reshape(5, 1, 8, 8))
    for model, folds in ((_pixel_std_model(flat, "linear"), True), (LNHead(), True), (Shared(), False),
                         (_pixel_std_model(flat, "conv"), False)):
        model.eval()
        gm = split_composite_ops(torch.export.export(model, (x,)).module())
        assert gm.meta["edgemp_rewrites"].get("constant scaling folded into the Linear it feeds", 0) == int(folds)
        ops = [str(n.target) for n in gm.graph.nodes if n.op == "call_function"]
        assert ("aten.mv.default" in ops or "aten.mul.Tensor" in ops) if folds else "aten.mv.default" not in ops
        torch.testing.assert_close(gm(x), model(x), rtol=1e-4, atol=1e-4)
        baked = copy.deepcopy(gm)
        bake_folds(baked)
        linears = [n for n in baked.graph.nodes if str(n.target) == "aten.linear.default"]
        assert all(a.op == "get_attr" for n in linears for a in n.args[1:3] if a is not None)
        torch.testing.assert_close(baked(x), model(x), rtol=1e-4, atol=1e-4)
        if isinstance(model, LNHead):
            assert {"ln_weight", "ln_bias"} <= {str(n.target).replace(".", "_") for n in gm.graph.nodes
                                                if n.op == "get_attr"}
        if folds:
            assert not any(str(n.target) in ("aten.sub.Tensor", "aten.div.Tensor") and n.users and
                           str(next(iter(n.users)).target) == "aten.linear.default" for n in baked.graph.nodes)


def test_a_concatenation_feeding_a_linear_becomes_one_linear_per_part(data) -> None:  # type: ignore[no-untyped-def]
    """Linear(cat([features, brightness])) -> Linear(features, W[:, :32]) + Linear(brightness, W[:, 32:]): exact in
    float, the slices computed from the trainable weight in the graph and baked to constants before export; a
    concatenation along another dimension, or read by a second op, is left as it is."""
    import copy

    from torch import nn

    from edgemp.qat.rewrites import bake_folds, constant_operand, split_composite_ops

    class Kept(nn.Module):
        def __init__(self, along: int, shared: bool) -> None:
            super().__init__()
            self.along, self.shared, self.fc = along, shared, nn.Linear(8, 4)

        def forward(self, t: torch.Tensor) -> torch.Tensor:
            a = t.flatten(1)[:, None, :8] if self.along == 1 else t.flatten(1)[:, :4]  # (n, 1, 8) or (n, 4)
            z = torch.cat([a, a * 2.0], dim=self.along)  # (n, 2, 8): the Linear reads the last dimension, not this one
            out = self.fc(z)
            return out + z.sum(-1, keepdim=True) if self.shared else out

    x = torch.from_numpy(data[0][:5] * 255.0)
    for model, split in ((torch_digits_join(), True), (torch_digits_join(clamped=False), True),
                         (Kept(along=1, shared=False), False), (Kept(along=-1, shared=True), False),
                         (Kept(along=-1, shared=False), True)):
        model.eval()
        gm = split_composite_ops(torch.export.export(model, (x,)).module())
        key = "concatenation feeding a Linear split into one Linear per part"
        assert gm.meta["edgemp_rewrites"].get(key, 0) == int(split), (type(model).__name__, gm.meta["edgemp_rewrites"])
        ops = [str(n.target) for n in gm.graph.nodes if n.op == "call_function"]
        assert ops.count("aten.linear.default") == (2 if split else 1) and ("aten.cat.default" in ops) != split
        torch.testing.assert_close(gm(x), model(x), rtol=1e-4, atol=1e-4)
        baked = copy.deepcopy(gm)
        bake_folds(baked)
        linears = [n for n in baked.graph.nodes if str(n.target) == "aten.linear.default"]
        assert all(a.op == "get_attr" for n in linears for a in n.args[1:3] if a is not None)
        widths = [int(constant_operand(baked, n.args[1]).shape[1]) for n in linears]
        assert widths == ([4, 4] if split else [8]) if isinstance(model, Kept) else widths == [32, 1]
        torch.testing.assert_close(baked(x), model(x), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_the_split_join_keeps_float_accuracy_in_int8_before_any_training(data, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The PTQ-hostile join (one int8 scale for L2-normalised features and a 0..255 brightness): with one Linear per
    part each has its own scale, and the prepared module converted before training is within a point of float where
    PTQ loses about 6 (measured: float 0.937, PTQ 0.877, split 0.935)."""
    x, y = data
    x = x * 255.0
    val = (x[N_TRAIN:], y[N_TRAIN:])
    common = {"progress": False, "preprocessing": {"scale": 1.0}, "runtime": edgemp.RuntimeOptions(latency_runs=0),
              "gate": edgemp.GateOptions(max_accuracy_drop=1.0, min_sqnr_db=0, min_cosine=0)}  # scored, not gated
    ptq = edgemp.convert(torch_digits_join(), "int8", x[:200], val, tmp_path / "ptq",
                         example_input=torch.zeros(1, 1, 8, 8), **common)
    qat = edgemp.prepare_qat(torch_digits_join(), torch.zeros(1, 1, 8, 8), x[:200], preprocessing={"scale": 1.0},
                             progress=False)
    r = edgemp.convert(qat, "int8", None, val, tmp_path / "qat", **common)
    c = r.report["census"]
    assert set(c["compute_counts"]) == {"int8"}
    ops = [o["op"] for o in c["ops"]]
    assert "CONCATENATION" not in ops and ops.count("FULLY_CONNECTED") == 2
    assert r.report["qat"]["graph_rewrites"]["concatenation feeding a Linear split into one Linear per part"] == 1
    acc, ptq_acc = r.report["validation"]["accuracy"], ptq.report["validation"]["accuracy"]
    assert ptq_acc["drop"] > 0.04, ptq_acc
    assert acc["drop"] <= 0.01, acc


def _hardly_varying_pixels() -> tuple[np.ndarray, Any, Any]:
    """64 pixels, 4 of them almost always 0, standardised into a Linear: its folded weights span 1/std."""
    rng = np.random.default_rng(0)
    flat = rng.uniform(0, 16, (300, 64)).astype(np.float32)
    flat[:, :4] = (rng.random((300, 4)) < 0.02).astype(np.float32)  # border pixels: almost always 0
    return np.ascontiguousarray(flat.reshape(-1, 1, 8, 8)), _pixel_std_model(flat, "linear").eval(), torch.zeros(1, 1, 8, 8)


def test_weight_ranges_by_mode(data) -> None:  # type: ignore[no-untyped-def]
    """weight_ranges: output error by default with calibration (a fraction of max |w| per channel), the current
    weights' min/max without it or when asked, PT2E's moving-average observers when asked; convolutions (grouped
    too) get per-channel ranges."""
    from edgemp.qat.ranges import WeightRangeFakeQuantize

    x, model, x0 = _hardly_varying_pixels()
    opts = {"preprocessing": {"scale": 1.0}, "progress": False}
    minmax = edgemp.prepare_qat(model, x0, x[:200], weight_ranges="minmax", **opts)
    chosen = edgemp.prepare_qat(model, x0, x[:200], **opts)  # the default with calibration
    assert chosen.weight_ranges == "output error (2 layers)"
    assert minmax.weight_ranges == "min/max of the current weights (2 layers)"
    assert [float(m.ratio.min()) for m in minmax.prepared.modules() if isinstance(m, WeightRangeFakeQuantize)] == [1, 1]
    observed = edgemp.prepare_qat(model, x0, x[:200], weight_ranges="moving_average", **opts)
    assert observed.weight_ranges == "moving-average min/max (PT2E observers)"
    assert not any(isinstance(m, WeightRangeFakeQuantize) for m in observed.prepared.modules())
    uncalibrated = edgemp.prepare_qat(model, x0, progress=False)  # ranges from the weights, no data needed
    assert uncalibrated.weight_ranges == "min/max of the current weights (2 layers)"
    fq = [m for m in chosen.prepared.modules() if isinstance(m, WeightRangeFakeQuantize)]
    first = next(m for m in fq if m.ratio.numel() == 64)  # the Linear the standardisation folded into
    assert len(fq) == 2 and float(first.ratio.median()) < 0.8 and bool((first.ratio <= 1).all())
    torch.manual_seed(0)
    dw = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3, groups=8),
                             torch.nn.Flatten(), torch.nn.Linear(8 * 4 * 4, 10))
    grouped = edgemp.prepare_qat(dw, x0, data[0][:64], weight_ranges="output_error", progress=False)
    assert grouped.weight_ranges == "output error (3 layers)"
    assert [tuple(m.ratio.shape) for m in grouped.prepared.modules()
            if isinstance(m, WeightRangeFakeQuantize)] == [(8,), (8,), (10,)]


@pytest.mark.slow
def test_output_error_weight_ranges_keep_the_small_weights(data, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A standardisation folded into a Linear, with pixels that hardly vary: min/max ranges round most of the folded
    weights to 0; weight_ranges="output_error" keeps more int8 levels for the pixels that vary, and the .tflite
    stores exactly the scales the module trains with (a CNN gets them on every conv and Linear)."""
    from ai_edge_litert.interpreter import Interpreter

    from edgemp.qat.ranges import WeightRangeFakeQuantize

    x, model, x0 = _hardly_varying_pixels()
    opts = {"preprocessing": {"scale": 1.0}, "progress": False}

    def first_fc(qat):  # type: ignore[no-untyped-def]
        r = edgemp.convert(qat, "int8", None, x[200:], tmp_path / qat.weight_ranges[:6], **opts,
                           runtime=edgemp.RuntimeOptions(latency_runs=0))
        assert set(r.report["census"]["compute_counts"]) == {"int8"}
        itp = Interpreter(model_path=str(r.artifacts["tflite"]), experimental_preserve_all_tensors=True)
        itp.allocate_tensors()
        itp.invoke()
        d = next(d for d in itp.get_tensor_details() if list(d["shape"]) == [64, 64] and d["dtype"] == np.int8)
        return itp.get_tensor(d["index"]), d["quantization_parameters"]["scales"], r.report["qat"]

    minmax = edgemp.prepare_qat(model, x0, x[:200], weight_ranges="minmax", **opts)
    chosen = edgemp.prepare_qat(model, x0, x[:200], **opts)
    first = next(m for m in chosen.prepared.modules() if isinstance(m, WeightRangeFakeQuantize) and m.ratio.numel() == 64)
    w_mm, _, _ = first_fc(minmax)
    w_oe, scales, report = first_fc(chosen)
    assert report["weight_ranges"] == "output error (2 layers)"
    np.testing.assert_allclose(scales, first.scale.numpy(), rtol=1e-5)  # what it trained with is what ships
    assert (w_oe == 0).mean() < (w_mm == 0).mean()  # the pixels that vary keep more int8 levels
    assert np.median(np.abs(w_oe[:, 4:])) > 1.3 * np.median(np.abs(w_mm[:, 4:]))
    cnn = edgemp.prepare_qat(torch_digits_cnn(), x0, data[0][:64], weight_ranges="output_error", progress=False)
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in torch_digits_cnn().modules())
    lins = sum(isinstance(m, torch.nn.Linear) for m in torch_digits_cnn().modules())
    assert cnn.weight_ranges == f"output error ({convs + lins} layers)"


@pytest.mark.slow
@pytest.mark.parametrize("head", ["linear", "conv"])
def test_qat_trains_the_constants_the_tflite_stores(data, head: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A per-pixel standardisation, (x - mean) / std with buffers. Into a Linear it folds into the Linear's weights
    (per output channel, trained): QAT reaches float where PTQ, which stores mean and 1/std as int8 tensors with one
    scale each, loses most of the model. Into a convolution it cannot fold (zero padding, channels): the constants
    are fake-quantized as the .tflite stores them, so the module's own accuracy is the artifact's (before, QAT
    trained to ~92% in PyTorch and exported at ~11%)."""
    from torch import nn

    if head == "linear":  # Fashion-MNIST, raw 0..255 pixels: every pixel varies (see docs/qat.md on those that don't)
        from edgemp.demo import fashion_mnist

        (xa, ya), (xb, yb) = fashion_mnist("train"), fashion_mnist("test")
        x = np.concatenate([xa[:6000], xb[:1000]]).transpose(0, 3, 1, 2).reshape(-1, 1, 28, 28) * 255.0
        y, n_train = np.concatenate([ya[:6000], yb[:1000]]), 6000
        stats = xa.reshape(len(xa), -1) * 255.0  # the statistics of the whole training set, as a scaler has them
    else:
        x, y = data
        x, n_train = x * 16.0, N_TRAIN  # raw 0..16 pixels
        stats = x[:n_train].reshape(n_train, -1)
    x = np.ascontiguousarray(x, np.float32)
    model = _pixel_std_model(np.ascontiguousarray(stats, np.float32), head)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    xt, yt = torch.from_numpy(x[:n_train]), torch.from_numpy(y[:n_train]).long()
    for _ in range(600):
        idx = torch.randint(0, n_train, (64,))
        opt.zero_grad()
        nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
        opt.step()
    xv, yv = x[n_train:], y[n_train:]

    def top1(m: torch.nn.Module) -> float:
        with torch.no_grad():
            return float((m.eval()(torch.from_numpy(xv)).argmax(1).numpy() == yv).mean())

    fp32 = top1(model)
    assert fp32 > 0.8
    opts = {"preprocessing": {"scale": 1.0}, "progress": False, "runtime": edgemp.RuntimeOptions(latency_runs=1)}
    ptq = edgemp.convert(model, "int8", x[:200], (xv, yv), tmp_path / "ptq",
                         example_input=torch.zeros(1, 1, x.shape[-1], x.shape[-1]),
                         **opts).report["validation"]["accuracy"]["top1"]
    side = x.shape[-1]
    qat = edgemp.prepare_qat(model, torch.zeros(1, 1, side, side), x[:200], preprocessing={"scale": 1.0},
                             progress=False)
    edgemp.finetune_qat(qat, (x[:n_train], y[:n_train]), epochs=1, progress=False)
    r = edgemp.convert(qat, "int8", None, (xv, yv), tmp_path / "qat", **opts)
    got = r.report["validation"]["accuracy"]["top1"]
    assert set(r.report["census"]["compute_counts"]) == {"int8"}
    assert abs(got - top1(qat)) < 0.02
    print(f"{head}: fp32 {fp32:.4f} PTQ {ptq:.4f} QAT {got:.4f}")
    rewrites = r.report["qat"]["graph_rewrites"]
    if head == "linear":
        assert rewrites == {"constant scaling folded into the Linear it feeds": 1}
        assert ptq < fp32 - 0.3 and got > fp32 - 0.03
    else:
        assert rewrites == {"x / constant written as x * (1 / constant)": 1}
        assert not r.passed  # int8 cannot hold these constants: the gate says so, whatever the training did


@pytest.mark.slow
def test_users_own_training_loop(data, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    x, y = data
    qat = edgemp.prepare_qat(torch_digits_cnn(), torch.zeros(1, 1, 8, 8), x[:100], progress=False)
    opt = torch.optim.SGD(qat.parameters(), lr=1e-3, momentum=0.9)
    qat.train()
    xt, yt = torch.from_numpy(x[:N_TRAIN]), torch.from_numpy(y[:N_TRAIN])
    for i in range(0, 640, 64):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(qat(xt[i : i + 64]), yt[i : i + 64]).backward()
        opt.step()
    qat.eval()
    r = edgemp.convert(qat, "int8", x[:100], (x[N_TRAIN:], y[N_TRAIN:]), tmp_path, example_input=torch.zeros(1, 1, 8, 8),
                       progress=False, runtime=edgemp.RuntimeOptions(latency_runs=1))
    assert r.passed and set(r.report["census"]["compute_counts"]) == {"int8"}


@pytest.mark.slow
def test_learned_ranges_train_a_ptq_hostile_model_past_ptq(data, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    x, y = data
    x = x * 255.0  # the model takes raw pixels: its brightness input is what sets the concatenation's int8 scale
    val = (x[N_TRAIN:], y[N_TRAIN:])
    common = {"progress": False, "preprocessing": {"scale": 1.0}, "runtime": edgemp.RuntimeOptions(latency_runs=1),
              "gate": edgemp.GateOptions(max_accuracy_drop=1.0, min_sqnr_db=0, min_cosine=0)}  # scored, not gated
    ptq = edgemp.convert(torch_digits_join(), "int8", x[:200], val, tmp_path / "ptq", example_input=torch.zeros(1, 1, 8, 8),
                         **common)
    qat = edgemp.prepare_qat(torch_digits_join(), torch.zeros(1, 1, 8, 8), x[:200], preprocessing={"scale": 1.0},
                             learn_ranges=True, progress=False)
    fq = [m for m in qat.prepared.modules() if type(m).__name__ == "LearnableFakeQuantize"]
    assert qat.learns_ranges and fq and all(m.scale.requires_grad for m in fq)
    trainable = {id(p) for p in qat.parameters()}
    assert all(id(m.scale) in trainable for m in fq)  # the optimizer sees them
    before = [float(m.scale.detach()) for m in fq]
    edgemp.finetune_qat(qat, (x[:N_TRAIN], y[:N_TRAIN]), epochs=6, progress=False)
    after = [float(m.scale.detach()) for m in fq]
    assert sum(a != b for a, b in zip(before, after, strict=True)) >= len(fq) // 2  # trained, not observed
    assert not any(m.scale.requires_grad for m in fq)  # frozen by the recipe for the last steps
    r = edgemp.convert(qat, "int8", None, val, tmp_path / "qat", **common)
    c = r.report["census"]
    assert set(c["compute_counts"]) == {"int8"} and r.report["qat"]["activation_ranges"] == "learned (LSQ)"
    first = next(m for name, m in qat.prepared.named_modules() if name == "activation_post_process_0")
    assert c["inputs"][0]["scale"] == pytest.approx(float(first.scale.detach()), rel=1e-6)  # the learned scale
    # measured here: float 0.937, PTQ 0.874, QAT with learned ranges 0.919 (3 epochs: 0.874; observed ranges: 0.874)
    acc, ptq_acc = r.report["validation"]["accuracy"], ptq.report["validation"]["accuracy"]
    assert ptq_acc["drop"] > 0.04, ptq_acc  # PTQ-hostile indeed
    assert acc["top1"] >= ptq_acc["top1"] + 0.015, (acc, ptq_acc)


@pytest.mark.slow
def test_an_l2_norm_trains_as_the_int8_rsqrt_saturates(data, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """v * rsqrt(sum(v^2) + 1e-6): int8 rounds short vectors' sums to 0, where TFLite's RSQRT gives its largest value;
    the training graph does the same (instead of an infinite value and a NaN loss), and the export drops the floor."""
    x, y = data
    x = x * 255.0
    val = (x[N_TRAIN:], y[N_TRAIN:])
    qat = edgemp.prepare_qat(torch_digits_join(clamped=False), torch.zeros(1, 1, 8, 8), x[:200],
                             preprocessing={"scale": 1.0}, progress=False)
    assert len(qat.saturating) == 1
    with torch.no_grad():
        qat.train()
        assert torch.isfinite(qat(torch.from_numpy(x[:256]))).all()  # fake-quantized: finite where rsqrt(0) is not
    edgemp.finetune_qat(qat, (x[:N_TRAIN], y[:N_TRAIN]), epochs=3, progress=False)
    r = edgemp.convert(qat, "int8", None, val, tmp_path, progress=False, preprocessing={"scale": 1.0},
                       runtime=edgemp.RuntimeOptions(latency_runs=1),
                       gate=edgemp.GateOptions(max_accuracy_drop=1.0, min_sqnr_db=0, min_cosine=0))
    c = r.report["census"]
    assert set(c["compute_counts"]) == {"int8"}
    ops = {o["op"] for o in c["ops"]}
    assert "RSQRT" in ops and "MAXIMUM" not in ops  # the floor lived in the training graph only
    assert r.report["validation"]["accuracy"]["top1"] > 0.8, r.report["validation"]["accuracy"]


def test_bad_inputs(data, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    x, y = data

    class Branchy(torch.nn.Module):  # data-dependent control flow: torch.export cannot capture it
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(64, 10)

        def forward(self, t: torch.Tensor) -> torch.Tensor:
            if t.sum() > 0:
                return self.fc(t.flatten(1))
            return -self.fc(t.flatten(1))

    with pytest.raises(errors.ConversionError, match="torch.export cannot capture"):
        edgemp.prepare_qat(Branchy(), torch.zeros(1, 1, 8, 8), progress=False)
    untrained = edgemp.prepare_qat(torch_digits_cnn(), torch.zeros(1, 1, 8, 8), progress=False)  # no calibration
    assert untrained.uninitialised_observers()
    with pytest.raises(errors.InputError, match="never initialised"):
        edgemp.convert(untrained, "int8", None, x[N_TRAIN:], tmp_path / "a", progress=False)
    qat = edgemp.prepare_qat(torch_digits_cnn(), torch.zeros(1, 1, 8, 8), x[:32], progress=False)
    with pytest.raises(errors.InputError, match="converts at precision 'int8' .* or 'mixed'"):
        edgemp.convert(qat, "fp16", None, x[N_TRAIN:], tmp_path / "b", progress=False)
    with pytest.raises(errors.InputError, match="targets 'tflite' and 'coreml'"):
        edgemp.convert(qat, "int8", None, x[N_TRAIN:], tmp_path / "e", targets=("onnx",), progress=False)
    with pytest.raises(errors.InputError, match="int8 inputs and outputs"):
        edgemp.convert(qat, "int8", None, x[N_TRAIN:], tmp_path / "c", io_dtype="float", progress=False)
    with pytest.raises(errors.InputError, match="prepared with"):
        edgemp.convert(qat, "int8", None, x[N_TRAIN:], tmp_path / "d", example_input=torch.zeros(1, 3, 8, 8),
                       progress=False)
    with pytest.raises(errors.InputError, match="takes a torch nn.Module"):
        edgemp.prepare_qat("model.keras", torch.zeros(1, 1, 8, 8))
    with pytest.raises(errors.InputError, match="already prepared"):
        edgemp.prepare_qat(qat, torch.zeros(1, 1, 8, 8))
    with pytest.raises(errors.InputError, match="train_data"):
        edgemp.finetune_qat(qat, "batches.npz")
    with pytest.raises(errors.InputError, match="as long as each other"):
        edgemp.finetune_qat(qat, (x[:10], y[:9]))
    with pytest.raises(errors.InputError, match="learn_ranges=True .* pass calibration="):
        edgemp.prepare_qat(torch_digits_cnn(), torch.zeros(1, 1, 8, 8), learn_ranges=True, progress=False)
    with pytest.raises(errors.InputError, match="weight_ranges='output_error' .* pass calibration="):
        edgemp.prepare_qat(torch_digits_cnn(), torch.zeros(1, 1, 8, 8), weight_ranges="output_error", progress=False)
    with pytest.raises(errors.InputError, match="weight_ranges must be one of 'output_error', 'minmax', 'moving_avera"):
        edgemp.prepare_qat(torch_digits_cnn(), torch.zeros(1, 1, 8, 8), x[:32], weight_ranges="mse", progress=False)
    with pytest.raises(errors.InputError, match="prepare_qat returned"):
        edgemp.finetune_qat(torch_digits_cnn(), (x[:10], y[:10]))
    assert not any(tmp_path.iterdir())
