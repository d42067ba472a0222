"""The TFLite target: the quantized .tflite checked against its label, compacted, validated on the host with LiteRT
against the source model, and described for the report and for device bundles."""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from edgemp.errors import PrecisionLabelError
from edgemp.targets import TargetResult

if TYPE_CHECKING:
    from edgemp.pipeline import Conversion


class TFLiteTarget:
    name: ClassVar[str] = "tflite"
    format: ClassVar[str] = "tflite"
    engine: ClassVar[str] = "LiteRT (ai_edge_litert / org.tensorflow.lite)"

    def plan(self, conv: Conversion) -> list[Path]:
        return [self._path(conv)]

    def build(self, conv: Conversion) -> TargetResult:
        from edgemp.quantize.labels import label_error
        from edgemp.targets.tflite.census import census
        from edgemp.targets.tflite.compat import compact
        from edgemp.validation import Check, evaluate, label_checks

        q = conv.quantized
        fm = conv.float_model
        with conv.timer.stage("census"):
            full = census(q.artifact)  # tensor names as in the float graph: errors can name the user's layers
            checks = label_checks(full, conv.precision, conv.io)
            if q.mixed is not None:
                problems = q.mixed.region_problems
                checks.append(Check("mixed_regions", not problems,
                                    f"float exactly where chosen: {len(q.mixed.section['float_ops'])} op(s)"
                                    if not problems else "; ".join(problems[:8])))
            broken = [c for c in checks if not c.passed]
            if broken:
                raise PrecisionLabelError(label_error(conv.precision, broken, full, fm.census, conv.source))
            artifact = compact(q.artifact)  # after every check that matches full tensor names
            art_census = census(artifact)
        vdata, note = conv.validation
        known = q.mixed.reference if q.mixed is not None else None  # the search ran the same float model on this data
        with conv.timer.stage("validate"):
            section, quality = evaluate(artifact, conv.source.predict, vdata, conv.runtime, conv.gate,
                                        reference_outputs=known[2] if known and known[0] is conv.source
                                        and known[1] is vdata else None,
                                        precision=conv.precision,
                                        fp32_artifact=fm.tflite if q.recipe is not None else None,
                                        progress=conv.progress, data_note=note, adapt=conv.source.artifact_inputs,
                                        channels_first=conv.source.output_channels_first(),
                                        class_names=conv.data.class_names, output_names=conv.source.output_names(),
                                        interpreters=validation_interpreters(conv))
        checks += quality
        if q.mixed is not None:
            checks.append(Check("mixed_budget", q.mixed.met, q.mixed.message))
        fp32_bytes = len(compact(fm.tflite))  # the fp32 artifact edgemp would write
        path = self._path(conv)
        census_dict = art_census.to_dict()
        return TargetResult(
            self.name, {path: artifact},
            {"target": self.name, "path": str(path), "bytes": len(artifact), "ratio_to_fp32": len(artifact) / fp32_bytes,
             "sha256": hashlib.sha256(artifact).hexdigest()},
            checks,
            {"fp32_reference": {"bytes": fp32_bytes, "ops": fm.census.compute_counts},
             "census": {k: v for k, v in census_dict.items() if k != "ops"} | {"ops": census_dict["ops"]},
             "validation": section, "model": {"layout_transposes": _layout_overhead(conv.source, art_census)}},
            path)

    def bundle_entry(self, report: dict[str, Any], data: bytes | None, path: Path) -> dict[str, Any]:
        from edgemp.bundle.manifest import tflite_tensors
        from edgemp.targets.tflite.census import census

        layout = (report.get("model") or {}).get("input_layout")
        ins, outs = tflite_tensors(census(data if data is not None else path.read_bytes()), layout)
        return {"precision": report["precision"], "precision_meaning": report["precision_meaning"],
                "io_dtype": report.get("io_dtype"), "layout": layout or "NHWC", "inputs": ins, "outputs": outs}

    @staticmethod
    def _path(conv: Conversion) -> Path:
        return conv.out_dir / f"{conv.stem}.tflite"


def _layout_overhead(source: Any, c: Any) -> list[str]:
    """TRANSPOSE ops left where edgemp changed the layout (an NHWC artifact of an NCHW model): overhead on device."""
    found = [o.outputs[0].name for o in c.ops if o.op == "TRANSPOSE" and o.outputs]
    if found and source.data_layout is not source.artifact_layout:
        warnings.warn(f"{len(found)} TRANSPOSE op(s) remain in the {source.artifact_layout.value} artifact "
                      f"({', '.join(found[:4])}): layout overhead on device. A Flatten of a conv feature map before a "
                      "Linear keeps the model's NCHW order; a global-pooling head (AdaptiveAvgPool2d(1) + Flatten) "
                      "removes it.", stacklevel=6)  # the user's call of edgemp.convert
    return found


def validation_interpreters(conv: Conversion) -> int:
    """Interpreters validating side by side, each with RuntimeOptions.num_threads threads: the cores a mixed search
    may use (MixedOptions.num_workers=1 keeps the whole run on one core), else this machine's (at most
    LOCAL_WORKERS)."""
    from edgemp.mixed.executor import LOCAL_WORKERS, usable_cpus

    cores = conv.executor.threads_here if conv.spec.searched else min(usable_cpus(), LOCAL_WORKERS)
    return max(1, cores // conv.runtime.num_threads)
