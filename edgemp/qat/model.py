"""The QAT module: a PyTorch model exported with torch.export and prepared by PT2E's `prepare_qat_pt2e` with the
quantizer edgemp's int8 uses (litert-torch's PT2EQuantizer: per-channel symmetric int8 weights, per-tensor int8
activations), so the scales it learns are the ones the .tflite keeps.

Two workarounds for the pinned stack live here (shared/STACK.md): torchao 0.18 passes plain functions to
torch.export when it matches patterns (torch 2.14 wants a module), so each is wrapped in torchao's own WrapperModule
while preparing; and exported graph modules refuse .train()/.eval(), so the wrapper switches them with torchao's
move_exported_model_to_train/eval.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
from collections.abc import Iterator
from typing import Any

import torch

from edgemp.errors import ConversionError, InputError
from edgemp.qat.rewrites import aten_name, bake_folds, constant_operand, drop_rsqrt_floors, is_fold


@contextlib.contextmanager
def patterns_as_modules() -> Iterator[None]:
    """While preparing: torchao's pattern matcher exports modules, not functions (torch.export requires them)."""
    import sys

    import litert_torch.quantize.pt2e_quantizer_utils  # noqa: F401 - imports the function by name: patched below
    import torchao.quantization.pt2e.qat_utils  # noqa: F401
    import torchao.quantization.pt2e.utils as utils
    from torchao.quantization.pt2e.export_utils import WrapperModule

    name = "_get_aten_graph_module_for_pattern"
    original = getattr(utils, name)

    def wrapped(pattern: Any, example_inputs: Any, is_cuda: bool = False, **kwargs: Any) -> Any:
        if not isinstance(pattern, torch.nn.Module):
            pattern = WrapperModule(pattern)
        return original(pattern, example_inputs, is_cuda, **kwargs)

    holders = [m for key, m in list(sys.modules.items())
               if key.startswith(("torchao.quantization.pt2e", "litert_torch.quantize")) and getattr(m, name, None) is original]
    for m in holders:
        setattr(m, name, wrapped)
    try:
        yield
    finally:
        for m in holders:
            setattr(m, name, original)


# aten ops litert-torch's quantizer leaves unannotated (it covers conv, linear, pooling, add, mul, cat) that have
# int8 TFLite kernels: annotated here too, so the .tflite is fully integer (scalings, norms, means, activations).
_ALSO_INT8 = ("mean.dim", "sum.dim_IntList", "rsqrt.default", "sqrt.default", "div.Tensor", "mul.Tensor",
              "sub.Tensor", "add.Tensor", "neg.default", "relu.default", "relu6.default", "hardtanh.default",
              "sigmoid.default", "tanh.default", "softmax.int", "_softmax.default", "mean.default", "gelu.default",
              "hardswish.default", "silu.default", "amax.default", "minimum.default", "maximum.default",
              "square.default", "pow.Tensor_Scalar", "exp.default", "log.default")


def int8_quantizer(learn_ranges: bool = False) -> Any:
    """`learn_ranges`: activations get torchao's LearnableFakeQuantize (LSQ: scale and zero point trained by
    backpropagation, initialised from the observers) instead of moving-average observers, so training can move a
    range the data sets badly (a concatenation whose one scale is set by its widest input, say)."""
    import dataclasses

    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config

    class EdgempQATQuantizer(PT2EQuantizer):  # type: ignore[misc]
        """litert-torch's quantizer, plus the elementwise and reduction ops it leaves in float."""

        def annotate(self, model: Any) -> Any:
            from torchao.quantization.pt2e.quantizer import QuantizationAnnotation

            for node in model.graph.nodes:  # a folded Linear's weight arithmetic: the weight's own spec covers it
                if is_fold(node):
                    node.meta["quantization_annotation"] = QuantizationAnnotation(_annotated=True)
            model = super().annotate(model)
            _annotate_remaining(model, self.global_config, observed.input_activation)
            return model

    config = observed = get_symmetric_quantization_config(is_per_channel=True, is_qat=True)
    if learn_ranges:
        from torchao.quantization.pt2e import LearnableFakeQuantize
        from torchao.quantization.pt2e.observer import MovingAverageMinMaxObserver

        act = config.input_activation
        learned = dataclasses.replace(act, observer_or_fake_quant_ctr=LearnableFakeQuantize.with_args(
            observer=MovingAverageMinMaxObserver, quant_min=act.quant_min, quant_max=act.quant_max, dtype=act.dtype,
            qscheme=act.qscheme, eps=2**-12, use_grad_scaling=True))
        config = dataclasses.replace(config, input_activation=learned, output_activation=learned)
    return EdgempQATQuantizer().set_global(config)


# TFLite's int8 kernels for these ops take one output scale and zero point only (LiteRT refuses others):
# LOGISTIC and SOFTMAX 1/256 and -128, TANH 1/128 and 0.
_FIXED_OUTPUT = {"sigmoid.default": (1 / 256, -128), "softmax.int": (1 / 256, -128), "_softmax.default": (1 / 256, -128),
                 "tanh.default": (1 / 128, 0)}


def _annotate_remaining(model: Any, config: Any, constants: Any) -> None:
    """`constants`: the spec of constant operands (observed min/max, never learned: a constant's range is known, and
    LSQ scales on constants drove a per-pixel standardisation to chance)."""
    from litert_torch.quantize.pt2e_quantizer_utils import get_input_act_qspec, get_output_act_qspec
    from torchao.quantization.pt2e.quantizer import FixedQParamsQuantizationSpec, QuantizationAnnotation

    act_in, act_out = get_input_act_qspec(config), get_output_act_qspec(config)
    for node in model.graph.nodes:
        op = aten_name(node)
        if op not in _ALSO_INT8 or is_fold(node):
            continue
        ann = node.meta.get("quantization_annotation")
        if ann is not None and ann._annotated:
            _quantize_constants(model, node, ann.input_qspec_map, constants)
            continue
        inputs = {a: act_in for a in node.args if isinstance(a, torch.fx.Node) and a.op != "get_attr" and _is_float(a)}
        out = act_out
        if op in _FIXED_OUTPUT:
            scale, zero_point = _FIXED_OUTPUT[op]
            out = FixedQParamsQuantizationSpec(dtype=torch.int8, scale=scale, zero_point=zero_point, quant_min=-128,
                                               quant_max=127, qscheme=torch.per_tensor_affine)
        _quantize_constants(model, node, inputs, constants)
        node.meta["quantization_annotation"] = QuantizationAnnotation(input_qspec_map=inputs, output_qspec=out,
                                                                      _annotated=True)


# Elementwise ops whose constant tensor operand (a normalisation's mean and 1/std, a LayerNorm's weight and bias)
# the .tflite stores as an int8 tensor with one scale: fake-quantized in training the same way, or training never
# sees that rounding (a per-pixel standardisation trained to 92% in PyTorch and exported at 11%).
_CONSTANT_OPERANDS = ("mul.Tensor", "add.Tensor", "sub.Tensor")


def _quantize_constants(model: Any, node: Any, inputs: dict[Any, Any], spec: Any) -> None:
    if aten_name(node) not in _CONSTANT_OPERANDS:
        return
    for a in node.args:
        if a not in inputs and constant_operand(model, a) is not None:
            inputs[a] = spec


def _is_float(node: Any) -> bool:
    val = node.meta.get("val")
    return isinstance(val, torch.Tensor) and val.is_floating_point()


class QATModel(torch.nn.Module):
    """A trainable module with fake quantization in its forward pass (from `edgemp.prepare_qat`). Train it with any
    optimizer over `parameters()`; `train()`/`eval()` work as usual. `edgemp.convert(qat, "int8", ...)` exports the
    quantization parameters it learned to a fully integer .tflite (no recalibration).

    `float_model` is the model it was prepared from (the reference convert() validates against), untouched.
    """

    def __init__(self, prepared: Any, float_model: torch.nn.Module, example_args: tuple[Any, ...],
                 quantizer: Any, input_layout: Any, name: str, saturating: list[str] | None = None,
                 rewrites: dict[str, int] | None = None) -> None:
        super().__init__()
        self.prepared = prepared
        self.float_model = float_model
        self.example_args = example_args
        self.quantizer = quantizer
        self.input_layout = input_layout
        self.model_name = name
        self.steps_trained = 0
        self.calibration: dict[str, Any] | None = None
        self.frozen: dict[str, int | None] = {"observers": None, "batch_norm": None}
        self.saturating = saturating or []  # fake-quant modules on saturating int8 ops' outputs (saturate_rsqrt)
        self.rewrites = dict(rewrites or {})  # what split_composite_ops changed in the graph (the report lists it)
        self.weight_ranges = "moving-average min/max (PT2E observers)"  # or edgemp.qat.ranges' (prepare_qat)
        self._bn_frozen = False
        self._converted: dict[bool, tuple[str, Any]] = {}  # fold_quantize -> (state digest, converted graph)
        self.train()

    def forward(self, *args: Any) -> Any:
        return self.prepared(*args)

    def train(self, mode: bool = True) -> QATModel:
        from torchao.quantization.pt2e import move_exported_model_to_eval, move_exported_model_to_train

        self.training = mode
        if mode and not self._bn_frozen:
            move_exported_model_to_train(self.prepared)
        else:  # eval, or training with batch-norm statistics frozen (running statistics, as at inference)
            move_exported_model_to_eval(self.prepared)
        return self

    def _learnable(self) -> list[Any]:
        from torchao.quantization.pt2e import LearnableFakeQuantize

        return [m for m in self.prepared.modules() if isinstance(m, LearnableFakeQuantize)]

    @property
    def learns_ranges(self) -> bool:
        return bool(self._learnable())

    def start_range_learning(self) -> None:
        """Learned ranges (prepare_qat(learn_ranges=True)): from the calibrated ranges on, scales and zero points are
        parameters the optimizer trains (observers off)."""
        for m in self._learnable():
            if m.scale is None:
                raise InputError("learned ranges start from calibrated ones: pass calibration= to prepare_qat")
            m.enable_range_learning()

    def freeze_observers(self) -> None:
        """Stop updating the quantization ranges (observed or learned): from here on training adapts the weights to
        fixed scales."""
        from torchao.quantization.pt2e.fake_quantize import disable_observer

        self.prepared.apply(disable_observer)
        for m in self._learnable():
            m.disable_range_learning()
        self.frozen["observers"] = self.steps_trained

    def fix_saturating_ranges(self) -> None:
        """After calibration: the ranges on saturating ops' outputs (rsqrt) stay the calibrated ones, as in the int8
        kernel, instead of growing to the floored values a zero input gives in training."""
        modules = dict(self.prepared.named_modules())
        for name in self.saturating:
            modules[name].disable_observer()

    def freeze_batch_norm(self) -> None:
        """Batch norm uses (and keeps) its running statistics while training goes on: the standard QAT recipe."""
        self._bn_frozen = True
        self.frozen["batch_norm"] = self.steps_trained
        self.train(self.training)

    def non_finite_ranges(self) -> list[str]:
        """Fake-quant modules whose observed range holds inf or NaN (training cannot go on from there)."""
        out = []
        for name, mod in self.prepared.named_modules():
            obs = getattr(mod, "activation_post_process", None)
            vals = [getattr(obs, k, None) for k in ("min_val", "max_val")]
            learned = getattr(mod, "scale", None) if mod.__class__.__name__ == "LearnableFakeQuantize" else None
            if any(isinstance(v, torch.Tensor) and v.numel() and torch.isnan(v).any() for v in vals) or \
                    (isinstance(vals[1], torch.Tensor) and vals[1].numel() and (vals[1] == float("inf")).any()) or \
                    (isinstance(learned, torch.Tensor) and not torch.isfinite(learned).all()):
                out.append(name)
        return out

    def uninitialised_observers(self) -> list[str]:
        """Fake-quant modules whose observer never saw data (their range is still ±inf): no scale to export."""
        out = []
        for name, mod in self.prepared.named_modules():
            obs = getattr(mod, "activation_post_process", None)
            lo = getattr(obs, "min_val", None)
            if isinstance(lo, torch.Tensor) and lo.numel() and not torch.isfinite(lo).all():
                out.append(name)
        return out

    def converted(self, fold_quantize: bool = False) -> Any:
        """The int8 graph (quantize/dequantize ops with the learned scales), from a copy: this module stays trainable.
        `fold_quantize`: weights stored as int8 constants (what coremltools takes) instead of quantize ops.

        Kept for the module's current state (every parameter and buffer: weights, observers, scales), and a copy
        returned: PT2E's convert exports a pattern graph per conv/batch-norm variant each time (75 s for the digits
        CNN on a 2-core host), and `mixed` asks for it twice (the learned artifact, then the trained weights)."""
        digest = self._state_digest()
        kept = self._converted.get(fold_quantize)
        if kept is None or kept[0] != digest:
            kept = self._converted[fold_quantize] = (digest, self._convert(fold_quantize))
        return copy.deepcopy(kept[1])

    def _state_digest(self) -> str:
        h = hashlib.sha256()
        for name, t in sorted(self.prepared.state_dict().items()):  # a deep copy lists them in another order
            t = t.detach().cpu().contiguous()
            h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()

    def _convert(self, fold_quantize: bool) -> Any:
        from torchao.quantization.pt2e import move_exported_model_to_eval
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

        graph = copy.deepcopy(self.prepared)
        move_exported_model_to_eval(graph)
        try:
            bake_folds(graph)
            converted = convert_pt2e(graph, fold_quantize=fold_quantize)
            drop_rsqrt_floors(converted)
            return converted
        except Exception as exc:  # noqa: BLE001 - one typed error with the cause
            raise ConversionError(f"PT2E could not convert the QAT module: {type(exc).__name__}: "
                                  f"{str(exc).splitlines()[0] if str(exc) else ''}") from exc

    def trained_float(self) -> torch.nn.Module:
        """The float model with the weights training learned: PT2E's int8 graph (batch norm folded as in the int8
        model) with every quantize/dequantize pair removed. `precision="mixed"` quantizes this one when the learned
        scales alone miss the budget (the layers it keeps int8 then get scales from calibration)."""
        graph = self.converted()
        for node in list(graph.graph.nodes):
            if node.op != "call_function" or not str(node.target).startswith("quantized_decomposed.dequantize"):
                continue
            src = node.args[0]
            if isinstance(src, torch.fx.Node) and str(src.target).startswith("quantized_decomposed.quantize"):
                node.replace_all_uses_with(src.args[0])
        graph.graph.eliminate_dead_code()
        graph.recompile()
        return graph


def check_module(model: Any) -> torch.nn.Module:
    if isinstance(model, QATModel):
        raise InputError("this model is already prepared for QAT; fine-tune it, or pass it to edgemp.convert")
    if not isinstance(model, torch.nn.Module):
        raise InputError(f"prepare_qat takes a torch nn.Module, got {type(model).__name__}. Keras models: see "
                         "docs/qat.md (no maintained QAT path for Keras 3; use precision 'mixed' or the PyTorch path).")
    return model
