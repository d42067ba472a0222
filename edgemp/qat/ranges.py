"""Weight ranges for QAT (`prepare_qat(weight_ranges=...)`), each tracking the weights as training moves them.

PT2E's QAT weight observers keep a moving average of each output channel's min/max: the range lags the weights, and
a channel of one weight (a Linear split per concatenated part, edgemp.qat.rewrites.split_joined_linear: the raw
brightness's column) drifted out of it; the PyTorch twin of the demo's sensitive model fell from 85.0 to 63.1 after
fine-tuning, where ranges from the current weights (as TF-MOT's LastValueQuantizer takes them) gave 87.0.
"minmax": each channel's range is max |w| of the current weights. "output_error" (the default with calibration):
`ratio x max |w|`, the ratio chosen once on the calibration set to minimise sum_j E[x_j^2] (w_j - q(w_j))^2 — the
squared error the rounding adds to the layer's output, E[x_j^2] being the second moment of the input w_j multiplies.
Where a few input columns are far larger than the rest — a standardisation folded into a Linear, whose pixels that
hardly vary get 1/std ~1000x the median — max |w| ranges set every channel's step from those columns and most other
weights round to 0 (75% on pixel_std_mlp; benchmarks/results/qat_weight_ranges.md). The ratio stays fixed while
training moves the weights, and the export takes the same scale. "moving_average": PT2E's own observers, left as
they are.
"""

from __future__ import annotations

from typing import Any

import torch
from torchao.quantization.pt2e.fake_quantize import FakeQuantizeBase

from edgemp.qat.rewrites import aten_name

GRID = 64  # ratios tried per channel, 1/GRID .. 1
_LAYERS = ("linear.default", "conv2d.default")


class WeightRangeFakeQuantize(FakeQuantizeBase):
    """Per-channel symmetric weight fake quantization with range `ratio x max |w|` per output channel (axis 0);
    convert_pt2e exports the scale of the last forward with observers on (`calculate_qparams`)."""

    def __init__(self, ratio: torch.Tensor, quant_min: int, quant_max: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.register_buffer("ratio", ratio.float())
        self.register_buffer("scale", torch.ones_like(self.ratio))
        self.register_buffer("zero_point", torch.zeros(len(ratio), dtype=torch.int32))
        self.register_buffer("initialised", torch.tensor([0], dtype=torch.uint8))
        self.quant_min, self.quant_max, self.dtype = quant_min, quant_max, dtype
        self.qscheme, self.ch_axis, self.is_dynamic = torch.per_channel_symmetric, 0, False

    def calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        return self.scale, self.zero_point

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if self.observer_enabled[0] == 1 or not self.initialised[0]:
            amax = w.detach().abs().flatten(1).amax(1)
            self.scale.copy_(torch.clamp(amax * self.ratio / ((self.quant_max - self.quant_min) / 2), min=2**-24))
            self.initialised[0] = 1
        if self.fake_quant_enabled[0] == 1:
            return torch.fake_quantize_per_channel_affine(w, self.scale, self.zero_point, 0, self.quant_min,
                                                          self.quant_max)
        return w


def set_weight_ranges(prepared: Any, batches: list[tuple[torch.Tensor, ...]], output_error: bool = True) -> int:
    """Replace the per-channel weight fake-quant of every Linear and 2-D convolution with one that follows the current
    weights: ranges that minimise the output error on `batches` (the calibration set, in the module's layout), or
    (output_error=False) max |w|, for which `batches` may be the example input alone. Returns how many were replaced.
    Runs with every observer off, so the activation ranges calibration set are left as they are."""
    layers = _weight_layers(prepared)
    if not layers:
        return 0
    modules = dict(prepared.named_modules())
    on = {n: int(m.observer_enabled[0]) for n, m in modules.items() if isinstance(m, FakeQuantizeBase)}
    for n in on:
        modules[n].disable_observer()
    weights: dict[Any, torch.Tensor] = {}
    sums: dict[Any, tuple[Any, int]] = {}

    fake_quants = {fq: layer for layer, fq in layers.items()}

    class Capture(torch.fx.Interpreter):
        def run_node(self, n: Any) -> Any:
            if n in fake_quants:  # the weight as training computes it (a fold's product too); freed after this node
                weights[fake_quants[n]] = self.env[n.args[0]].detach().double()
            if n in layers:  # sums and counts over every sample (and position): a short last batch weighs its size
                x = self.env[n.args[0]].detach().double()
                rows = x.reshape(-1, x.shape[-1]) if aten_name(n) == "linear.default" else \
                    x.transpose(0, 1).reshape(x.shape[1], -1).T  # a convolution's input channels
                total, count = sums.get(n, (0, 0))
                sums[n] = (total + (rows * rows).sum(0), count + rows.shape[0])
            return super().run_node(n)

    try:
        with torch.no_grad():
            for b in batches:
                Capture(prepared).run(*b)
    finally:
        for n, was in on.items():
            modules[n].enable_observer(bool(was))
    moments = {n: total / count for n, (total, count) in sums.items()}
    for node, fq_node in layers.items():
        old = modules[fq_node.target]
        ratio = best_ratios(weights[node], _input_weighting(node, weights[node], moments[node]), old.quant_max) \
            if output_error else torch.ones(weights[node].shape[0], dtype=torch.float64)
        new = WeightRangeFakeQuantize(ratio, old.quant_min, old.quant_max, old.dtype)
        with torch.no_grad():  # its scale from the calibrated weights now: exportable before any training step
            new(weights[node].float())
        new.enable_observer(bool(on[fq_node.target]))
        _set_module(prepared, fq_node.target, new)
    return len(layers)


def best_ratios(w: torch.Tensor, weighting: torch.Tensor, qmax: int) -> torch.Tensor:
    """Per output channel, the ratio of max |w| (from GRID tried, largest first on ties) minimising the weighted
    squared rounding error sum_j weighting_j (w_j - q(w_j))^2."""
    rows = w.flatten(1)
    amax = rows.abs().amax(1, keepdim=True).clamp(min=1e-30)
    best, err = torch.ones(len(rows), dtype=torch.float64), torch.full((len(rows),), float("inf"), dtype=torch.float64)
    for r in torch.linspace(1.0, 1.0 / GRID, GRID, dtype=torch.float64):
        step = amax * r / qmax
        e = (((torch.clamp(torch.round(rows / step), -qmax, qmax) * step - rows) ** 2) * weighting).sum(1)
        better = e < err
        best[better], err[better] = r, e[better]
    return best


def _input_weighting(node: Any, w: torch.Tensor, moment: torch.Tensor) -> torch.Tensor:
    """E[x^2] of the input each weight multiplies, shaped like the weight's rows: a Linear's input features; a
    convolution's input channels (its group's, for grouped and depthwise ones), the same over the kernel window."""
    if aten_name(node) == "linear.default":
        return moment[None, :].expand(w.shape[0], -1)
    groups = int(node.args[6]) if len(node.args) > 6 else 1
    out_ch, in_per_group = w.shape[0], w.shape[1]
    first = (torch.arange(out_ch) // (out_ch // groups)) * in_per_group
    idx = first[:, None] + torch.arange(in_per_group)[None, :]
    return moment[idx][:, :, None].expand(-1, -1, w[0, 0].numel()).reshape(out_ch, -1)


def _weight_layers(prepared: Any) -> dict[Any, Any]:
    """Linear/conv2d node -> the call_module node fake-quantizing its weight per output channel."""
    out = {}
    for node in prepared.graph.nodes:
        if aten_name(node) not in _LAYERS or len(node.args) < 2:
            continue
        w = node.args[1]
        if not isinstance(w, torch.fx.Node) or w.op != "call_module":
            continue
        mod = prepared.get_submodule(w.target)
        if isinstance(mod, FakeQuantizeBase) and getattr(mod, "ch_axis", None) == 0 and \
                getattr(mod, "qscheme", None) == torch.per_channel_symmetric:
            out[node] = w
    return out


def _set_module(root: Any, target: str, module: torch.nn.Module) -> None:
    parent, _, name = target.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, module)
