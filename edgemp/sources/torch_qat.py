"""A QAT module (edgemp.prepare_qat) as a source: the float model it was prepared from is the reference and the
fp32 .tflite; the int8 .tflite comes from the quantization parameters training learned (PT2E convert, then
litert-torch with the same quantizer), never from a new calibration that would throw them away."""

from __future__ import annotations

from typing import Any, ClassVar

from edgemp.errors import ConversionError, InputError
from edgemp.sources.torch import TorchSource, litert_bytes


def load_qat(model: Any, example_input: Any = None, input_layout: Any = None, **_: Any) -> QATSource:
    """`example_input` may be given again (as for any PyTorch model); it must match the one prepare_qat took."""
    import torch

    layout = input_layout if input_layout is not None else model.input_layout
    if example_input is not None:
        given = tuple(example_input) if isinstance(example_input, tuple | list) else (example_input,)
        shapes = [tuple(torch.as_tensor(a).shape[1:]) for a in given]
        prepared = [tuple(a.shape[1:]) for a in model.example_args]
        if shapes != prepared:
            raise InputError(f"example_input has per-sample shape(s) {shapes}, but the QAT module was prepared with "
                             f"{prepared}: leave example_input out (the module keeps its own)")
    return QATSource(model, layout)


class QATSource(TorchSource):
    kind: ClassVar[str] = "pytorch-qat"
    onnx_exporter: ClassVar[str | None] = None  # the ONNX target calibrates again: not for QAT modules (docs/qat.md)
    coreml_precision: ClassVar[str] = "w8a8"  # Core ML's counterpart of the learned int8 weights and activations

    def __init__(self, qat: Any, input_layout: Any) -> None:
        super().__init__(qat.float_model, qat.example_args, input_layout, name=qat.model_name)
        self.qat = qat

    def limits_message(self, precision: str, refused_targets: list[str]) -> str:
        if precision not in ("int8", "mixed"):
            return (f"a QAT module converts at precision 'int8' (its learned int8 scales) or 'mixed', not "
                    f"{precision!r}: convert the float model for other precisions (qat.float_model is the one it "
                    "was prepared from).")
        return (f"a QAT module converts to targets 'tflite' and 'coreml' (W8A8) only, not {', '.join(refused_targets)}: "
                "the ONNX target calibrates its own scales; convert qat.float_model for it (docs/qat.md).")

    def coreml_frontend(self) -> Any:
        from edgemp.sources.coreml_frontends import TorchCoreML

        qat = self.qat

        class QATCoreML(TorchCoreML):
            """Core ML W8A8 from the scales QAT learned (PT2E's int8 graph, weights folded to int8 constants)."""

            def w8a8_module(self, calibration: Any) -> Any:
                return qat.converted(fold_quantize=True)

        return QATCoreML(self)

    def trained_source(self) -> TorchSource:
        """The float model with the weights QAT trained, as a plain PyTorch source (what `mixed` quantizes when
        the learned scales alone miss the budget)."""
        return TorchSource(self.qat.trained_float(), self.example_args, self.layout, name=self.name)

    def qat_summary(self) -> dict[str, Any]:
        q = self.qat
        return {"steps_trained": q.steps_trained, "observers_frozen_at_step": q.frozen["observers"],
                "batch_norm_frozen_at_step": q.frozen["batch_norm"], "calibration": q.calibration,
                "activation_ranges": "learned (LSQ)" if q.learns_ranges else "observed (moving average)",
                "weight_ranges": q.weight_ranges,
                "scheme": "PT2E QAT: int8 per-channel symmetric weights, int8 per-tensor activations",
                "graph_rewrites": dict(getattr(q, "rewrites", {}))}

    def qat_tflite(self) -> bytes:
        """The fully integer .tflite with the learned scales, in the artifact's layout (NHWC without transposes)."""
        from litert_torch.quantize.quant_config import QuantConfig

        missing = self.qat.uninitialised_observers()
        if missing:
            raise InputError(f"the QAT module's quantization ranges were never initialised ({len(missing)} observer(s), "
                             f"e.g. {missing[0]}): pass calibration= to edgemp.prepare_qat, or train it first.")
        module, args = self.artifact_io(self.qat.converted(), tuple(a[:1] for a in self.example_args))
        try:
            return litert_bytes(module, args, quant_config=QuantConfig(pt2e_quantizer=self.qat.quantizer))
        except Exception as exc:  # noqa: BLE001 - one typed error with the converter's reason
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise ConversionError(f"litert-torch could not convert the QAT module {self.name!r}: {first}") from exc
