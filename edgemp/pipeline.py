"""edgemp.convert: one call from a trained model to a validated, honestly labelled edge artifact."""

from __future__ import annotations

import dataclasses
import hashlib
import warnings
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from edgemp import __version__
from edgemp._io import check_overwrite, prepare_output_dir, write_all_atomic
from edgemp._versions import versions
from edgemp.targets.tflite.census import census
from edgemp.targets.tflite.compat import compact
from edgemp.calibration import CalibrationSet, load_calibration
from edgemp import _params as P
from edgemp.config import (DataOptions, DelegateSpec, GateOptions, IODType, Layout, MixedOptions, Precision, Preprocessing,
                           RuntimeOptions, parse_enum)
from edgemp.errors import (CalibrationError, EdgempError, InputError, MixedPrecisionError, PrecisionLabelError,
                           QualityGateError, UnsupportedOpsError, public, unexpected)
from edgemp.targets.coreml.build import build_coreml, coreml_precision_for, parity_section
from edgemp.mixed.pipeline import run_mixed
from edgemp.quantize import apply_recipe, calibrate, recipe_for
from edgemp.quantize.labels import label_error
from edgemp.quantize.rewrites import prepare_for_quantization
from edgemp.quantize.engine import CALLS
from edgemp.sources import load_source
from edgemp.validation import Check, Report, ValidationData, evaluate, label_checks, load_validation
from edgemp.targets.coreml.checks import can_predict
from edgemp.validation.data import random_inputs
from edgemp.validation.evaluate import batched
from edgemp.validation.runtime import check_token_ids
from edgemp.calibration.checks import check_ranges

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ConvertResult:
    """What convert() wrote and what it measured. `passed` is False when a collapse or accuracy check failed."""

    artifacts: dict[str, Path]
    report: Report
    precision: Precision

    @property
    def passed(self) -> bool:
        return self.report.passed


class _Timer:
    def __init__(self) -> None:
        self.times: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str):  # type: ignore[no-untyped-def]
        """Time a stage; an unexpected exception in it becomes an InternalError that names the stage."""
        t0 = time.perf_counter()
        try:
            yield
        except EdgempError:
            raise
        except Exception as exc:  # noqa: BLE001 - typed, with the cause chained
            raise unexpected(exc, f"during {name.replace('_', ' ')}") from exc
        finally:
            self.times[name] = round(self.times.get(name, 0.0) + time.perf_counter() - t0, 4)


@public
def convert(
    model: Any,
    precision: str | Precision = "int8",
    calibration: Any = None,
    validation: Any = None,
    output_dir: str | Path = "dist/",
    *,
    example_input: Any = None,
    input_layout: str | Layout | None = None,
    io_dtype: str | IODType = IODType.QUANTIZED,
    num_calibration_samples: int = 200,
    seed: int = 0,
    preprocessing: Preprocessing | Mapping[str, Any] | None = None,
    max_accuracy_drop: float | None = 0.01,
    max_validation_samples: int | None = None,
    class_names: Sequence[str] | None = None,
    batch_size: int | None = 1,
    num_threads: int = 1,
    xnnpack: bool = True,
    delegates: Sequence[str | DelegateSpec | Mapping[str, Any]] = (),
    latency_runs: int = 50,
    max_float_layers: int | float = 0.1,
    keep_float: Sequence[str] = (),
    never_float: Sequence[str] = (),
    min_sqnr_db: float | None = None,
    min_cosine: float | None = None,
    metric: Callable[..., float] | None = None,
    output_tasks: Mapping[str, str] | None = None,
    label_output: str | None = None,
    targets: Sequence[str] = ("tflite",),
    coreml_precision: str | None = None,
    coreml_fp32_ops: Sequence[str] = (),
    coreml_image_input: bool = False,
    minimum_deployment_target: str = "iOS16",
    name: str | None = None,
    force: bool = False,
    strict: bool = False,
    progress: bool | None = None,
    unsafe_load: bool = False,
) -> ConvertResult:
    """Convert a Keras or PyTorch model to a .tflite in `precision`, validate it on the host, write artifact + report.

    Example:
        >>> result = edgemp.convert("model.keras", precision="int8", calibration="calibration_data/",
        ...                         validation="val_images/", output_dir="dist/")
        >>> result.passed, result.artifacts["tflite"]

    PyTorch: pass an nn.Module with `example_input` (or an ExportedProgram / .pt2); data is given in the
    layout of example_input, and `input_layout="NHWC"` (default for 4-D inputs) or "NCHW" sets the artifact's.
    int8 gets int8 I/O unless io_dtype="float". `max_accuracy_drop` is a fraction (0.01 = one top-1 point);
    None disables the accuracy gate (the collapse checks always run). `batch_size` fixes the artifact's batch (1 by
    default, as on devices; None keeps it dynamic). `class_names` lists the classes in the
    model's output order (maps validation sub-folders to labels; recorded for the app). With strict=True a failed check
    raises QualityGateError after the artifact and report are written.

    `precision="mixed"`: INT8 with the fewest, most sensitive layers kept in float until the budget holds —
    `max_accuracy_drop` with labelled validation data, else `min_sqnr_db` / `min_cosine` (output fidelity);
    `max_float_layers` caps them (a count, or a fraction of the model's ops); `keep_float` /
    `never_float` force layers (names as `edgemp analyze` shows them, or regexes). A budget the search cannot
    meet under the cap raises MixedPrecisionError (after writing the best artifact and its report).

    Judging: with labels, the top-1 of the classification output (class ids) or the mIoU of the dense output (label
    maps (N, H, W)) must not drop more than `max_accuracy_drop`; `metric(outputs: dict[str, ndarray], labels) ->
    float` (higher is better) replaces that score for tasks edgemp cannot know (detection mAP, regression error), in
    the gate and in the mixed search. Every output no label or metric judges must keep a fidelity floor (SQNR and
    cosine against the float model, by default per precision: config.FIDELITY_FLOOR; or `min_sqnr_db` /
    `min_cosine`). `output_tasks` ({"boxes": "regression", "scores": "classification"}) overrides how outputs
    are read (inferred from names and shapes); `label_output` names the output labels judge.

    `targets=("tflite", "coreml")` also writes an .mlpackage: `coreml_precision` defaults to the counterpart of
    `precision` (fp32, fp16, dynamic-int8/int8 -> int8-weights, mixed -> mixed with the layers the TFLite search
    kept in float); `coreml_fp32_ops` (layer names, or 'type:<op>' for a Core ML op type) for Core ML `mixed`;
    `coreml_image_input` makes the input an ImageType with the calibration preprocessing folded in. On Linux
    Core ML is validated structurally; numeric validation runs on macOS only and the report says so.

    `unsafe_load=True` loads a .keras/.h5 that contains Python code (a Lambda layer) by running that code: only for
    files trusted as a script is trusted. Without it such a file raises ModelLoadError.
    """
    timer = _Timer()
    prec = parse_enum(Precision, precision, "precision")
    io = parse_enum(IODType, io_dtype, "io_dtype")
    pre = _preprocessing(preprocessing)
    opts = RuntimeOptions(num_threads=num_threads, xnnpack=xnnpack, delegates=delegates,  # type: ignore[arg-type]
                          latency_runs=latency_runs)
    gate = GateOptions(max_accuracy_drop, min_sqnr_db, min_cosine, metric, output_tasks or {}, label_output)
    DataOptions(num_calibration_samples, seed, max_validation_samples, batch_size, class_names)  # checks types
    MixedOptions(max_float_layers, keep_float, never_float)
    for flag_name, value in (("force", force), ("strict", strict), ("coreml_image_input", coreml_image_input)):
        P.flag(flag_name, value)
    P.optional_flag("progress", progress)
    P.text("name", name, none_ok=True)
    P.strings("targets", targets)
    P.path("output_dir", output_dir)
    if metric is None and max_accuracy_drop is not None and not 0 <= max_accuracy_drop <= 1:
        raise InputError(f"max_accuracy_drop is a fraction in [0, 1] (0.01 = one point), got {max_accuracy_drop}")
    if prec.needs_calibration and calibration is None:
        raise CalibrationError(f"precision {prec.value!r} needs calibration data: pass calibration= "
                               "(a folder of images, .npy/.npz, an array or an iterable of samples).")
    out_dir = prepare_output_dir(output_dir)

    with timer.stage("load_model"):
        source = load_source(model, example_input=example_input, input_layout=input_layout, unsafe_load=unsafe_load)
    if source.data_layout is Layout.NCHW:  # PyTorch data arrives shaped like example_input
        pre = dataclasses.replace(pre or Preprocessing(), layout=Layout.NCHW)
    if input_layout is not None and source.kind != "pytorch":
        raise InputError(f"input_layout applies to PyTorch sources; a {source.kind} model keeps its own layout.")
    base = name or source.name
    paths = {"tflite": out_dir / f"{base}_{prec.value}.tflite", "report_json": out_dir / f"{base}_{prec.value}.report.json",
             "report_md": out_dir / f"{base}_{prec.value}.report.md"}
    mixed_files = [out_dir / f"{base}_{prec.value}.sensitivity.{x}" for x in ("md", "png", "html")]
    coreml = _coreml_request(targets, prec, coreml_precision, minimum_deployment_target, source)
    if coreml:
        paths["coreml"] = out_dir / f"{base}_{coreml}.mlpackage"
    check_overwrite(list(paths.values()) + (mixed_files if prec is Precision.MIXED else []), force)

    with timer.stage("float_conversion"):
        float_tflite = source.to_float_tflite(batch_size)
        float_census = census(float_tflite)
        rewrites = list(getattr(source, "rewrites", []))
        qbase = float_tflite  # what calibration and quantization see
        if prec.needs_calibration:
            source, float_tflite, float_census, unrolled = _without_loops(source, float_tflite, float_census, batch_size,
                                                                          prec)
            prep = prepare_for_quantization(float_tflite)
            qbase = prep.model
            rewrites += unrolled + [f"{n} {k} (exact; so the op can be int8)" for k, n in prep.rewrites.items() if n]
    specs = source.input_specs()

    cal: CalibrationSet | None = None
    if calibration is not None:
        with timer.stage("calibration_data"):
            cal = load_calibration(calibration, specs, num_samples=num_calibration_samples, seed=seed,
                                   preprocessing=pre, progress=progress)

    vdata = note = mixed = None
    if prec is Precision.MIXED:
        assert cal is not None
        vdata, note = _validation_data(validation, specs, pre or cal.preprocessing, cal, max_validation_samples, seed,
                                       progress, class_names, opaque_labels=metric is not None)
        check_ranges(cal, vdata if validation is not None else None, pre or cal.preprocessing)
        check_token_ids(qbase, [source.artifact_inputs(s) for s in cal.samples], CalibrationError)
        calls = CALLS["calibrate"]
        with timer.stage("calibrate"):
            stats = calibrate(qbase, [source.artifact_inputs(s) for s in cal.samples], num_threads=num_threads,
                              progress=progress)
        with timer.stage("mixed_search"):
            mixed = run_mixed(source, qbase, stats, vdata, opts, float_io=io is IODType.FLOAT, gate=gate,
                              max_float_layers=max_float_layers, keep_float=keep_float, never_float=never_float,
                              tensor_samples=32, title=base, progress=progress, class_names=class_names)
        mixed.section["calibration_runs"] = CALLS["calibrate"] - calls
        artifact, recipe = mixed.artifact, mixed.recipe
    elif (recipe := recipe_for(prec, io)) is None:
        artifact = float_tflite
    else:
        stats = None
        if prec.needs_calibration:
            assert cal is not None
            check_token_ids(qbase, [source.artifact_inputs(s) for s in cal.samples], CalibrationError)
            with timer.stage("calibrate"):
                stats = calibrate(qbase, [source.artifact_inputs(s) for s in cal.samples],
                                  num_threads=num_threads, progress=progress)
        with timer.stage("quantize"):
            artifact = apply_recipe(qbase, recipe, stats)

    with timer.stage("census"):
        full_census = census(artifact)  # tensor names as in the float graph: errors can name the user's layers
        checks = label_checks(full_census, prec, io)
    if mixed is not None:
        checks.append(Check("mixed_regions", not mixed.region_problems,
                            f"float exactly where chosen: {len(mixed.section['float_ops'])} op(s)"
                            if not mixed.region_problems else "; ".join(mixed.region_problems[:8])))
    broken = [c for c in checks if not c.passed]
    if broken:
        raise PrecisionLabelError(label_error(prec, broken, full_census, float_census, source))
    with timer.stage("compact"):
        artifact = compact(artifact)  # after every check that matches full tensor names, before anything is measured
        art_census = census(artifact)

    if vdata is None:
        vdata, note = _validation_data(validation, specs, pre or (cal.preprocessing if cal else None), cal,
                                       max_validation_samples, seed, progress, class_names,
                                       opaque_labels=metric is not None)
        if cal is not None and validation is not None:
            check_ranges(cal, vdata, pre or cal.preprocessing)
    with timer.stage("validate"):
        vsection, qchecks = evaluate(artifact, source.predict, vdata, opts, gate, precision=prec,
                                     fp32_artifact=float_tflite if prec is not Precision.FP32 else None,
                                     progress=progress, data_note=note,
                                     adapt=source.artifact_inputs, channels_first=source.output_channels_first(),
                                     class_names=class_names, output_names=source.output_names())
    checks += qchecks
    if mixed is not None:
        checks.append(Check("mixed_budget", mixed.met, mixed.message))
    cm = None
    if coreml:
        with timer.stage("coreml"):
            fp32_ops = list(coreml_fp32_ops) or ([n for op in mixed.section["float_ops"] for n in (op["name"], *op["fused"])]
                                                 if mixed is not None and coreml == "mixed" else [])
            image = (pre or (cal.preprocessing if cal else None) or Preprocessing()) if coreml_image_input else None
            cm = build_coreml(source, coreml, paths["coreml"], fp32_ops=fp32_ops, image=image, class_names=class_names,
                              target=minimum_deployment_target,
                              calibration=cal.samples if cal and coreml == "w8a8" else [],
                              validation_inputs=vdata.inputs, labels=vdata.labels,
                              reference=batched(source.predict, vdata.inputs) if can_predict() else None)
            cm.section["parity"] = parity_section(source, artifact, cm, vdata.inputs, source.artifact_inputs,
                                                  output_tasks=gate.output_tasks)
        checks += cm.checks
    passed = all(c.passed for c in checks)
    overhead = _layout_overhead(source, art_census)

    fp32_bytes = len(compact(float_tflite))  # the fp32 artifact edgemp would write
    report = Report({
        "edgemp_version": __version__,
        "passed": passed,
        "model": {"name": base, "source": source.kind, "path": source.path, "parameters": source.num_parameters(),
                  "inputs": [s.to_dict() for s in specs], "batch_size": batch_size,
                  "input_layout": source.artifact_layout.value, "rewrites": rewrites,
                  "layout_transposes": overhead},
        "precision": prec.value,
        "precision_meaning": prec.meaning,
        "io_dtype": _io_label(prec, io),
        "recipe": recipe,
        "artifacts": [{"target": "tflite", "path": str(paths["tflite"]), "bytes": len(artifact),
                       "ratio_to_fp32": len(artifact) / fp32_bytes, "sha256": hashlib.sha256(artifact).hexdigest()}]
        + ([cm.artifact] if cm is not None else []),
        "fp32_reference": {"bytes": fp32_bytes, "ops": float_census.compute_counts},
        "census": {k: v for k, v in art_census.to_dict().items() if k != "ops"} | {"ops": art_census.to_dict()["ops"]},
        "preprocessing": _app_preprocessing(cal, source.artifact_layout),
        "class_names": list(class_names) if class_names is not None else vdata.class_names,
        "calibration": cal.summary() if cal else None,
        "gate": gate.to_dict(),
        "validation": vsection,
        "mixed": mixed.section if mixed is not None else None,
        "coreml": cm.section if cm is not None else None,
        "checks": [c.to_dict() for c in checks],
        "timings_s": timer.times,
        "versions": versions() | source.framework_versions(),
    })
    stem = f"{base}_{prec.value}"
    if not passed and any(paths[k].exists() for k in ("tflite", "report_json", "report_md")):
        stem += ".failed"  # never replace an earlier artifact with a failing one (docs/errors.md, Outputs and --force)
        paths |= {k: out_dir / f"{stem}{ext}" for k, ext in
                  (("tflite", ".tflite"), ("report_json", ".report.json"), ("report_md", ".report.md"))}
        next(a for a in report["artifacts"] if a["target"] == "tflite")["path"] = str(paths["tflite"])
        log.warning("%s exists: the FAILED conversion is written beside it as %s (and its reports), the earlier "
                    "files are kept", out_dir / f"{base}_{prec.value}.tflite", paths["tflite"])
    more = mixed.files if mixed is not None else {}
    write_all_atomic({paths["tflite"]: artifact, paths["report_json"]: report.to_json(),
                      paths["report_md"]: report.to_markdown()} | {out_dir / f"{stem}.{k}": v for k, v in more.items()},
                     overwrite=force)  # all or nothing; never over an existing file without force, even in a race
    paths |= {k.replace(".", "_"): out_dir / f"{stem}.{k}" for k in more}
    result = ConvertResult(paths, report, prec)
    if mixed is not None and not mixed.met:
        raise MixedPrecisionError(mixed.message, report, result)
    if not passed:
        log.warning("conversion to %s FAILED validation: %s", prec.value, "; ".join(report.failures))
        if strict:
            raise QualityGateError("validation failed: " + "; ".join(report.failures), report)
    return result


def _preprocessing(value: Any) -> Preprocessing | None:
    if value is None or isinstance(value, Preprocessing):
        return value
    if isinstance(value, Mapping):
        return Preprocessing.from_dict(value)
    raise InputError(f"preprocessing must be an edgemp.Preprocessing or a dict of its fields, got {value!r}.")


def _without_loops(source: Any, float_tflite: bytes, float_census: Any, batch_size: int | None, prec: Precision
                   ) -> tuple[Any, bytes, Any, list[str]]:
    """Static quantization cannot calibrate a WHILE loop (Keras recurrent layers): unroll them when the source can
    (same weights, same outputs), else refuse with the alternatives."""
    if not any(o.op == "WHILE" for o in float_census.ops):
        return source, float_tflite, float_census, []
    unrolled, why = source.unroll_loops()
    if unrolled is not None:
        float_tflite = unrolled.to_float_tflite(batch_size)
        float_census = census(float_tflite)
        if not any(o.op == "WHILE" for o in float_census.ops):
            return unrolled, float_tflite, float_census, why
    raise UnsupportedOpsError(
        f"precision {prec.value!r} needs every op calibrated, but the model's recurrent layer(s) lower to a WHILE loop, "
        "which the AI Edge Quantizer cannot calibrate" + (f" ({'; '.join(why)})" if why else "") + ". Options: give the "
        "recurrent layers a fixed sequence length so edgemp can unroll them (or build them with unroll=True) for a "
        "fully integer model; or precision 'dynamic-int8' (int8 weights, float compute; works with loops) or 'fp16'.",
        ops=["WHILE"])


def _coreml_request(targets: Sequence[str], prec: Precision, coreml_precision: str | None, target: str,
                    source: Any) -> str | None:
    """The Core ML precision to build (None without the target); bad requests fail before anything is written."""
    unknown = set(targets) - {"tflite", "coreml"}
    if unknown or "tflite" not in targets:
        raise InputError(f"targets must include 'tflite' and may add 'coreml'; got {list(targets)}")
    if "coreml" not in targets:
        if coreml_precision:
            raise InputError("coreml_precision is set but 'coreml' is not in targets=")
        return None
    from edgemp.targets.coreml.convert import COREML_PRECISIONS, parse_target

    cm = coreml_precision_for(prec.value, coreml_precision)
    if cm not in COREML_PRECISIONS:
        raise InputError(f"unknown Core ML precision {cm!r}; valid: {', '.join(COREML_PRECISIONS)}")
    parse_target(target)
    if cm == "w8a8" and source.kind != "pytorch":
        raise InputError("Core ML w8a8 needs a PyTorch source (activations are calibrated in PyTorch with "
                         "coremltools.optimize.torch); for Keras models use coreml_precision='int8-weights'.")
    return cm


def _layout_overhead(source: Any, c: Any) -> list[str]:
    """TRANSPOSE ops left in a PyTorch-sourced artifact: layout overhead the user should know about."""
    found = [o.outputs[0].name for o in c.ops if o.op == "TRANSPOSE" and o.outputs]
    if found and source.kind == "pytorch":
        warnings.warn(f"{len(found)} TRANSPOSE op(s) remain in the {source.artifact_layout.value} artifact "
                      f"({', '.join(found[:4])}): layout overhead on device. A Flatten of a conv feature map before a "
                      "Linear keeps PyTorch's NCHW order; a global-pooling head (AdaptiveAvgPool2d(1) + Flatten) "
                      "removes it.", stacklevel=3)
    return found


def _app_preprocessing(cal: CalibrationSet | None, layout: Layout) -> dict[str, Any] | None:
    """What the app must do to an image: the calibration spec, in the artifact's layout."""
    if cal is None or cal.preprocessing is None:
        return None
    return dataclasses.replace(cal.preprocessing, layout=layout).to_dict()


def _io_label(prec: Precision, io: IODType) -> str:
    if not prec.needs_calibration or io is IODType.FLOAT:
        return "float32"
    return "int16" if prec is Precision.INT16X8 else "int8"


def _validation_data(validation: Any, specs: list[Any], pre: Preprocessing | None, cal: CalibrationSet | None,
                     max_samples: int | None, seed: int, progress: bool | None,
                     class_names: Sequence[str] | None, opaque_labels: bool = False) -> tuple[ValidationData, str | None]:
    """The given validation data, else the calibration samples, else seeded random inputs — labelled as such."""
    if validation is not None:
        names = list(class_names) if class_names is not None else None
        return load_validation(validation, specs, pre, max_samples, progress, names, opaque_labels), None
    if cal is not None:
        inputs = {k: np.concatenate([s[k] for s in cal.samples]) for k in cal.samples[0]}
        return (ValidationData(inputs, None, None, "calibration samples", []),
                "no validation data given: fidelity measured on the calibration samples, accuracy not measured")
    return (random_inputs(specs, 32, seed),
            "no validation or calibration data given: fidelity measured on random inputs only")
