"""The Core ML target: an .mlpackage (ML Program) from the same source, in the Core ML counterpart of the requested
precision, validated structurally everywhere and numerically on macOS, with the parity table against the source
(and the .tflite when it is built too). coremltools is imported only when this target builds.
See docs/coreml.md for what each Core ML precision means.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from edgemp.errors import InputError
from edgemp.targets import TargetResult

if TYPE_CHECKING:
    from edgemp.pipeline import Conversion

from edgemp.targets.coreml.convert import COREML_PRECISIONS


class CoreMLTarget:
    name: ClassVar[str] = "coreml"
    format: ClassVar[str] = "mlpackage"
    engine: ClassVar[str] = "Core ML"

    def plan(self, conv: Conversion) -> list[Path]:
        """The Core ML precision and deployment target are checked before any model is converted."""
        from edgemp.targets.coreml.convert import parse_target

        cm = self.precision(conv)
        if cm not in COREML_PRECISIONS:
            raise InputError(f"unknown Core ML precision {cm!r}; valid: {', '.join(COREML_PRECISIONS)}")
        parse_target(conv.coreml.minimum_deployment_target)
        frontend = conv.source.coreml_frontend()  # refuses sources coremltools cannot take
        if cm == "w8a8" and not frontend.supports_w8a8:
            frontend.w8a8_module([])  # raises with the frontend's explanation
        return [self._path(conv)]

    def precision(self, conv: Conversion) -> str:
        fixed = getattr(conv.source, "coreml_precision", None)  # a QAT module: W8A8 from its learned scales
        if fixed is not None:
            if conv.coreml.precision not in (None, fixed):
                raise InputError(f"a {conv.source.kind} source converts to Core ML {fixed!r} only, not "
                                 f"{conv.coreml.precision!r}")
            return fixed
        if conv.coreml.precision:
            return conv.coreml.precision
        if conv.spec.coreml is None:
            raise InputError(f"no Core ML counterpart of {conv.precision.value!r} (Core ML has no int16 activations); "
                             f"set the Core ML precision (coreml=CoreMLOptions(precision=...), CLI --coreml-precision) "
                             f"to one of {', '.join(COREML_PRECISIONS)}.")
        return conv.spec.coreml

    def build(self, conv: Conversion) -> TargetResult:
        from edgemp.config import Preprocessing
        from edgemp.targets.coreml.build import build_coreml, parity_section
        from edgemp.targets.coreml.checks import can_predict
        from edgemp.validation.evaluate import batched

        cm = self.precision(conv)
        opts = conv.coreml
        fp32_ops = list(opts.fp32_ops)
        searched = not fp32_ops and cm == "mixed" and conv.spec.searched
        if searched:  # the TFLite search's float layers (run here when no .tflite is asked for)
            fp32_ops = [n for op in conv.quantized.mixed.section["float_ops"] for n in (op["name"], *op["fused"])]
        cal = conv.calibration_set
        vdata, _ = conv.validation
        image = (conv.preprocessing or (cal.preprocessing if cal else None) or Preprocessing()) \
            if opts.image_input else None
        with conv.timer.stage("coreml"):
            out = build_coreml(conv.source, cm, self._path(conv), staging=conv.staging, fp32_ops=fp32_ops, image=image,
                               class_names=conv.data.class_names, target=opts.minimum_deployment_target,
                               calibration=cal.samples if cal and cm == "w8a8" else [],
                               validation_inputs=vdata.inputs, labels=vdata.labels,
                               reference=batched(conv.source.predict, vdata.inputs) if can_predict() else None,
                               searched=searched)
            # the .tflite when it is a target too (compact() leaves its outputs bit-identical: the quantized model serves)
            tflite = conv.quantized.artifact if any(t.name == "tflite" for t in conv.targets) else None
            out.section["parity"] = parity_section(conv.source, tflite, out, vdata.inputs, conv.source.artifact_inputs,
                                                   output_tasks=conv.gate.output_tasks)
        return TargetResult(self.name, {self._path(conv): out.path}, out.artifact, out.checks, {"coreml": out.section},
                            self._path(conv))

    def bundle_entry(self, report: dict[str, Any], data: bytes | None, path: Path) -> dict[str, Any]:
        from edgemp.bundle.manifest import coreml_tensors

        cm = report["coreml"]
        ins, outs = coreml_tensors(cm["census"], cm.get("layout"))
        return {"precision": cm["precision"], "precision_meaning": cm["precision_meaning"], "io_dtype": None,
                "layout": cm.get("layout") or "NHWC", "inputs": ins, "outputs": outs}

    def _path(self, conv: Conversion) -> Path:
        return conv.out_dir / f"{conv.base}_{self.precision(conv)}.mlpackage"
