"""Building the Core ML artifact: convert, save into the conversion's staging folder (the pipeline moves it into
place with the other outputs), census, validate (structure everywhere, numbers on macOS), parity, and the report section."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgemp.targets.coreml.convert import MEANINGS, WEIGHT_THRESHOLD, convert_coreml
from edgemp.targets.coreml.census import coreml_census, package_sha256
from edgemp.config import Layout, Preprocessing
from edgemp.errors import InputError
from edgemp.validation.checks import Check
from edgemp.targets.coreml.checks import numeric_validation, structure_checks


@dataclasses.dataclass
class CoreMLOutcome:
    path: Path  # the staged .mlpackage, moved to its place when the conversion is written
    section: dict[str, Any]
    checks: list[Check]
    artifact: dict[str, Any]  # the report's artifacts[] entry
    mlmodel: Any = None
    image: Preprocessing | None = None  # the preprocessing folded into an image input
    class_names: Sequence[str] | None = None  # classifier labels, in the source's output order


def build_coreml(source: Any, precision: str, final: Path, *, staging: Path, fp32_ops: Sequence[str], image: Preprocessing | None,
                 class_names: Sequence[str] | None, target: str, calibration: Sequence[dict[str, np.ndarray]],
                 validation_inputs: dict[str, np.ndarray] | None, reference: list[np.ndarray] | None,
                 labels: np.ndarray | None, searched: bool = False) -> CoreMLOutcome:
    """`final`: where the package will go (the report names it); it is saved in `staging` here."""
    frontend = source.coreml_frontend()
    conv = convert_coreml(source, precision, fp32_ops=fp32_ops, image=image, class_names=class_names,
                          target=target, calibration=calibration, searched=searched)
    mlmodel = conv.mlmodel
    path = staging / final.name
    try:
        mlmodel.save(str(path))
    except OSError as exc:
        raise InputError(f"cannot stage the Core ML package in {path.parent}: {exc.strerror}; free space in the "
                         "temporary folder (TMPDIR).") from exc
    c = coreml_census(path)
    fp32_size = None
    if precision != "fp32":
        ref = convert_coreml(source, "fp32", target=target)
        fp32_size = _in_memory_size(ref.mlmodel)
    channel_first = frontend.channels_first  # Core ML keeps the model's own layout
    checks = structure_checks(c, precision, source.input_specs(), frontend.output_specs(), image=image,
                              channel_first=channel_first, fp32_size=fp32_size, class_names=class_names,
                              fp32_kept=conv.fp32_kept, fp32_unmatched=conv.fp32_unmatched,
                              nothing_requested=searched and not fp32_ops)
    numeric = numeric_validation(mlmodel, validation_inputs or {}, reference or [], labels, image=image,
                                 channel_first=channel_first, class_names=class_names,
                                 nchw_to_nhwc=_nhwc_reference(source)) if validation_inputs else \
        {"run": False, "reason": "no validation data"}
    section = {
        "path": str(final), "precision": precision, "precision_meaning": MEANINGS[precision],
        "deployment_target": conv.deployment_target, "requested_deployment_target": conv.requested_target,
        "deployment_target_note": conv.target_note, "conversion_path": conv.conversion_path,
        "weight_threshold": WEIGHT_THRESHOLD, "fp32_ops": list(fp32_ops), "fp32_kept_ops": list(conv.fp32_kept),
        "image_input": image.to_dict() if image is not None else None, "class_labels": c.classifier_labels,
        "layout": source.data_layout.value, "census": c.to_dict(), "fp32_bytes": fp32_size,
        "ratio_to_fp32": c.size_bytes / fp32_size if fp32_size else 1.0,
        "structure_checks": [ch.to_dict() for ch in checks], "numeric_validation": numeric,
    }
    artifact = {"target": "coreml", "path": str(final), "bytes": c.size_bytes,
                "ratio_to_fp32": section["ratio_to_fp32"], "sha256": package_sha256(path)}
    return CoreMLOutcome(path, section, checks, artifact, mlmodel, image, class_names)


def _in_memory_size(mlmodel: Any) -> int:
    import tempfile

    from edgemp.targets.coreml.census import package_size

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "ref.mlpackage"
        mlmodel.save(str(p))
        return package_size(p)


def parity_section(source: Any, tflite: bytes | None, cm: CoreMLOutcome, inputs: dict[str, np.ndarray], adapt: Any,
                   max_samples: int = 256, output_tasks: Any = None) -> dict[str, Any]:
    """Source vs TFLite vs Core ML on the same samples (the Core ML column emulated where Core ML cannot run);
    source vs Core ML only when no .tflite was asked for."""
    from edgemp.targets.coreml.checks import can_predict, predict_coreml
    from edgemp.validation.evaluate import batched
    from edgemp.validation.parity import parity
    from edgemp.validation.runtime import Runner

    sub = {k: v[:max_samples] for k, v in inputs.items()}
    reference = batched(source.predict, sub)
    names = source.output_names()
    lite = Runner(tflite, output_order=names).run(adapt(sub)) if tflite is not None else None
    frontend = source.coreml_frontend()
    prec = cm.section["precision"]
    if can_predict():
        coreml = predict_coreml(cm.mlmodel, sub, image=cm.image, channel_first=frontend.channels_first,
                                class_names=cm.class_names)
        kind, note = "real", "Core ML predictions on this Mac."
    elif prec == "fp32":
        coreml, kind = batched(source.predict, sub), "emulated-fp32"
        note = "Core ML cannot run on this OS; an fp32 Core ML model computes what the source does, so its column is the source."
    else:
        coreml, kind = batched(source.predict_fp16, sub), "emulated-fp16"
        note = ("Core ML cannot run on this OS: its column is the source model run in float16 (weights and compute), "
                f"which is what Core ML {prec} computes; " + ("weight compression is not emulated."
                                                                if prec not in ("fp16", "mixed") else
                                                                "ops kept in fp32 by 'mixed' are emulated in fp16."))
    nchw = [i for i, o in enumerate(coreml) if np.ndim(o) == 4] if _nhwc_reference(source) and \
        kind != "emulated-fp32" else []
    from edgemp.validation.tasks import infer_tasks

    tasks = infer_tasks(names, [np.shape(o) for o in reference], source.output_channels_first(), output_tasks or {})
    return parity(reference, lite, coreml, coreml_kind=kind, output_names=names, note=note,
                  coreml_nchw=nchw, class_axes=[t.class_axis for t in tasks])


def _nhwc_reference(source: Any) -> bool:
    """The reference gives 4-D outputs channel-last (an NHWC artifact of an NCHW model) while Core ML keeps the
    model's channels-first layout."""
    return source.coreml_frontend().channels_first and source.artifact_layout is Layout.NHWC
