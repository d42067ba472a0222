"""Quantization-aware training (PyTorch): when neither PTQ nor mixed precision is good enough.

    qat = edgemp.prepare_qat(model, example_input=x0, calibration=cal)   # fake-quant in the forward pass
    edgemp.finetune_qat(qat, (x_train, y_train), epochs=3)               # or your own training loop
    edgemp.convert(qat, "int8", cal, (x_val, y_val), "dist/")            # the learned scales, fully integer

See docs/qat.md for the recipe and what Keras users can do.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from edgemp import _params as P
from edgemp.errors import ConversionError, InputError, public


WEIGHT_RANGES = ("output_error", "minmax", "moving_average")


@public
def prepare_qat(model: Any, example_input: Any, calibration: Any = None, *, num_calibration_samples: int = 256,
                preprocessing: Any = None, input_layout: str | None = None, learn_ranges: bool = False,
                weight_ranges: str | None = None, seed: int = 0, progress: bool | None = None) -> Any:
    """A trainable copy of `model` with fake quantization in its forward pass (PT2E QAT, edgemp's int8 scheme:
    per-channel symmetric int8 weights, per-tensor int8 activations). `calibration` (the same kinds of data as for
    convert) initialises the quantization ranges before training; without it they start from the first training
    batches. `input_layout` is the layout of the .tflite convert() will write (NHWC by default for 4-D inputs).
    `learn_ranges`: the activation ranges are trained too (LSQ, torchao's LearnableFakeQuantize), starting from the
    calibrated ones (calibration is then required): for models whose measured ranges are the problem, e.g. a
    concatenation of features with a raw input of a much wider range. `weight_ranges` (edgemp.qat.ranges), each
    following the weights as they train: "output_error" (the default with calibration, which it needs) gives each
    weight channel a fraction of its max |w| chosen on the calibration set for the least error at the layer's output
    (it keeps the small weights of a Linear that a per-feature standardisation was folded into); "minmax" (the
    default without calibration) max |w| of the current weights; "moving_average" PT2E's own observers, whose lagging
    ranges let a one-weight channel drift (docs/qat.md). The model itself is not changed."""
    from edgemp._compat import prepare_torch_import

    prepare_torch_import()
    import torch
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    from edgemp.qat.model import QATModel, check_module, int8_quantizer, patterns_as_modules
    from edgemp.qat.rewrites import saturate_rsqrt, split_composite_ops
    from edgemp.sources.onnx_export import quiet
    from edgemp.sources.torch import load_torch

    module = check_module(model)
    P.integer("num_calibration_samples", num_calibration_samples, 1, 10**6)
    P.optional_flag("progress", progress)
    P.flag("learn_ranges", learn_ranges)
    if weight_ranges is None:
        weight_ranges = "output_error" if calibration is not None else "minmax"
    if weight_ranges not in WEIGHT_RANGES:
        raise InputError(f"weight_ranges must be one of {', '.join(map(repr, WEIGHT_RANGES))}, not {weight_ranges!r}")
    if weight_ranges == "output_error" and calibration is None:
        raise InputError("weight_ranges='output_error' chooses the ranges on the calibration set: pass calibration= "
                         "(the same kinds of data as for convert)")
    if learn_ranges and calibration is None:
        raise InputError("learn_ranges=True trains the activation ranges from calibrated ones: pass calibration= "
                         "(the same kinds of data as for convert)")
    float_model = copy.deepcopy(module).eval()
    source = load_torch(float_model, example_input=example_input, input_layout=input_layout)
    args = tuple(a[:1].expand(2, *a.shape[1:]).contiguous() for a in source.example_args)  # batch 2: not specialised
    try:
        with quiet():
            exported = torch.export.export(copy.deepcopy(float_model), args,
                                           dynamic_shapes=tuple({0: torch.export.Dim("batch")} for _ in args))
    except Exception as exc:  # noqa: BLE001 - torch.export raises many types; one typed error with its reason
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise ConversionError(f"torch.export cannot capture {source.name!r} for QAT ({type(exc).__name__}: {first}). "
                              "PT2E QAT needs a model torch.export can trace with a dynamic batch: no data-dependent "
                              "Python control flow, no .item()/.tolist() on tensors, no batch size baked into "
                              "reshapes (use x.flatten(1) or x.shape[0]).") from exc
    quantizer = int8_quantizer(learn_ranges)
    with patterns_as_modules(), quiet():
        rewritten = split_composite_ops(exported.module())
        prepared = prepare_qat_pt2e(rewritten, quantizer)
    qat = QATModel(prepared, float_model, source.example_args, quantizer, source.layout, source.name,
                   saturating=saturate_rsqrt(prepared), rewrites=rewritten.meta["edgemp_rewrites"])
    if weight_ranges == "minmax":  # before calibration: the activation ranges see the weights as they will be
        from edgemp.qat.ranges import set_weight_ranges

        n = set_weight_ranges(prepared, [tuple(source.example_args)], output_error=False)
        qat.weight_ranges = f"min/max of the current weights ({n} layers)"
    if calibration is not None:
        _initialise(qat, source, calibration, num_calibration_samples, preprocessing, seed, progress, weight_ranges)
    if learn_ranges:
        qat.start_range_learning()
    return qat


def _initialise(qat: Any, source: Any, calibration: Any, n: int, preprocessing: Any, seed: int,
                progress: bool | None, weight_ranges: str = "output_error") -> None:
    """Observers see the calibration set once, in eval mode (batch-norm statistics untouched), with fake quantization
    on (each range as the ranges before it quantize). The outputs of saturating ops (rsqrt: saturate_rsqrt) are
    observed first, in float, as post-training calibration sees them, then kept: fake-quantized, their inputs can round
    to 0, and the floored value that gives is the kernel's saturation, not a range to learn."""
    import torch
    from torchao.quantization.pt2e.fake_quantize import disable_fake_quant, enable_fake_quant

    from edgemp.calibration import load_calibration
    from edgemp.config import Layout, Preprocessing
    from edgemp.config import as_preprocessing

    pre = as_preprocessing(preprocessing)
    pre = dataclasses.replace(pre or Preprocessing(), layout=Layout.NCHW)
    cal = load_calibration(calibration, source.input_specs(), num_samples=n, seed=seed, preprocessing=pre,
                           progress=progress)
    names = [s.name for s in source.input_specs()]
    joined = [np.concatenate([s[k] for s in cal.samples]) for k in names]

    def run() -> None:
        with torch.no_grad():
            for i in range(0, len(joined[0]), 32):
                qat(*(torch.from_numpy(np.ascontiguousarray(a[i : i + 32])) for a in joined))

    qat.eval()
    if qat.saturating:
        others = [m for name, m in qat.prepared.named_modules()
                  if hasattr(m, "disable_observer") and name not in qat.saturating]
        qat.prepared.apply(disable_fake_quant)
        for m in others:
            m.disable_observer()
        try:
            run()
        finally:
            qat.prepared.apply(enable_fake_quant)
            for m in others:
                m.enable_observer()
            qat.fix_saturating_ranges()
    run()
    if weight_ranges == "output_error":
        from edgemp.qat.ranges import set_weight_ranges

        batches = [tuple(torch.from_numpy(np.ascontiguousarray(a[i : i + 32])) for a in joined)
                   for i in range(0, len(joined[0]), 32)]
        qat.weight_ranges = f"output error ({set_weight_ranges(qat.prepared, batches)} layers)"
    qat.calibration = cal.summary()
    qat.train()


@public
def finetune_qat(qat: Any, train_data: Any, *, epochs: int = 3, lr: float = 1e-3, batch_size: int = 64,
                 loss: Callable[[Any, Any], Any] | None = None, freeze_observers_after: float = 0.5,
                 freeze_batch_norm_after: float = 0.3, seed: int = 0, progress: bool | None = None) -> Any:
    """Fine-tune a QAT module with the standard recipe, for users without their own loop: SGD with momentum 0.9 and a
    cosine-decaying learning rate from `lr`; batch-norm statistics frozen after `freeze_batch_norm_after` of the
    steps and the quantization ranges after `freeze_observers_after` (so the last steps adapt the weights to fixed
    scales). `train_data`: an (x, y) pair of arrays (shuffled each epoch), or an iterable of (x, y) batches (read
    once, reused every epoch). `loss(outputs, targets)`: cross-entropy on class indices by default. Returns `qat`, trained."""
    import torch

    from edgemp._progress import track
    from edgemp.qat.model import QATModel

    if not isinstance(qat, QATModel):
        raise InputError(f"finetune_qat takes the module edgemp.prepare_qat returned, got {type(qat).__name__}")
    P.integer("epochs", epochs, 1, 10**4)
    P.integer("batch_size", batch_size, 1, 10**6)
    for name, v in (("freeze_observers_after", freeze_observers_after), ("freeze_batch_norm_after", freeze_batch_norm_after)):
        if not isinstance(v, int | float) or not 0 <= v <= 1:
            raise InputError(f"{name} is a fraction of the training steps in [0, 1], got {v!r}")
    if not isinstance(lr, int | float) or not lr > 0:
        raise InputError(f"lr must be a positive number, got {lr!r}")
    batches = _batches(train_data, batch_size, seed)
    per_epoch = len(batches(0))
    total = per_epoch * epochs
    loss_fn = loss or torch.nn.functional.cross_entropy
    opt = torch.optim.SGD(qat.parameters(), lr=lr, momentum=0.9)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    torch.manual_seed(seed)
    qat.train()
    step = 0
    for epoch in range(epochs):
        for xb, yb in track(batches(epoch), f"QAT epoch {epoch + 1}/{epochs}", total=per_epoch, enabled=progress):
            if qat.frozen["batch_norm"] is None and step >= freeze_batch_norm_after * total:
                qat.freeze_batch_norm()
            if qat.frozen["observers"] is None and step >= freeze_observers_after * total:
                qat.freeze_observers()
            opt.zero_grad()
            try:
                value = loss_fn(qat(xb), yb)
            except RuntimeError as exc:  # e.g. "`zero_point` must be between `quant_min` and `quant_max`"
                bad = qat.non_finite_ranges()
                if not bad:
                    raise
                raise ConversionError(
                    f"QAT broke down at step {step}: the quantization range of {bad[0]} (and {len(bad) - 1} more) became "
                    f"infinite or NaN: the weights diverged (lower lr, now {lr}), or a division, rsqrt or log got an "
                    "input int8 rounds to zero (an L2 norm of small vectors, say: clamp the denominator to a floor "
                    "above its quantization step), or use precision='mixed' on the float model."
                ) from exc
            if not torch.isfinite(value) and step == 0:  # before any update: not the learning rate
                raise ConversionError(
                    f"the fake-quantized model gives a {float(value)} loss before any training step: an op takes a "
                    "value int8 rounds to zero where it cannot (a division, rsqrt or log: an L2 norm of small vectors, "
                    "say), and QAT cannot train through that. Clamp that input above its quantization step in the "
                    "model, or use precision='mixed' on the float model.")
            if not torch.isfinite(value):
                raise ConversionError(f"the QAT loss became {float(value)} at step {step}: lower lr (now {lr}).")
            value.backward()
            opt.step()
            sched.step()
            step += 1
            qat.steps_trained += 1
    qat.eval()
    return qat


def _batches(data: Any, batch_size: int, seed: int) -> Callable[[int], list[tuple[Any, Any]]]:
    """epoch -> the list of (x, y) tensor batches of that epoch."""
    import torch

    if isinstance(data, tuple) and len(data) == 2 and all(hasattr(a, "__len__") for a in data):
        x = torch.as_tensor(np.asarray(data[0], np.float32))
        y = torch.as_tensor(np.asarray(data[1]))
        if len(x) != len(y) or len(x) == 0:
            raise InputError(f"train_data: x and y must be non-empty and as long as each other ({len(x)} vs {len(y)})")

        def shuffled(epoch: int) -> list[tuple[Any, Any]]:
            order = torch.from_numpy(np.random.default_rng(seed + epoch).permutation(len(x)))
            return [(x[order[i : i + batch_size]], y[order[i : i + batch_size]]) for i in range(0, len(x), batch_size)]

        return shuffled
    if isinstance(data, Iterable) and not isinstance(data, str | bytes | dict):
        items = [(torch.as_tensor(np.asarray(b[0], np.float32)), torch.as_tensor(np.asarray(b[1]))) for b in data]
        if not items:
            raise InputError("train_data is an empty iterable: give (x, y) batches")
        return lambda _epoch: items
    raise InputError(f"train_data must be an (x, y) pair of arrays or an iterable of (x, y) batches, got "
                     f"{type(data).__name__}")

