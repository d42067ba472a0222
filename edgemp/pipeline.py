"""edgemp.convert: one call from a trained model to validated, honestly labelled edge artifacts.

The body is a short sequence of named stages over a `Conversion`, and a loop over the requested targets; each
target asks the conversion for what it needs (the float model, calibration, the quantized .tflite, the mixed
search), and each of those runs once, only when asked.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from edgemp import __version__
from edgemp import _params as P
from edgemp._io import check_overwrite, prepare_output_dir, save_dir_atomic, write_all_atomic
from edgemp._versions import versions
from edgemp.calibration import CalibrationSet, load_calibration
from edgemp.calibration.checks import check_ranges
from edgemp.config import (CoreMLOptions, DataOptions, GateOptions, IODType, Layout, MixedOptions, OnnxOptions,
                           Preprocessing, RuntimeOptions, as_preprocessing, group_options, parse_enum)
from edgemp.errors import CalibrationError, InputError, MixedPrecisionError, QualityGateError, public
from edgemp.precisions import Precision, precision_spec
from edgemp.sources import load_source
from edgemp.stages import FloatModel, Quantized, Timer, validation_data, without_loops
from edgemp.targets import TargetResult, get_target
from edgemp.validation import Report, ValidationData

log = logging.getLogger(__name__)

@dataclasses.dataclass(frozen=True)
class ConvertResult:
    """What convert() wrote and what it measured. `passed` is False when a collapse, accuracy or fidelity check
    failed."""

    artifacts: dict[str, Path]
    report: Report
    precision: Precision

    @property
    def passed(self) -> bool:
        return self.report.passed


@public
def convert(model: Any, precision: str | Precision = "int8", calibration: Any = None, validation: Any = None,
            output_dir: str | Path = "dist/", *, example_input: Any = None, input_layout: str | Layout | None = None,
            io_dtype: str | IODType = IODType.QUANTIZED, targets: Sequence[str] = ("tflite",),
            preprocessing: Preprocessing | Mapping[str, Any] | None = None, data: DataOptions | None = None,
            gate: GateOptions | None = None, mixed: MixedOptions | None = None, runtime: RuntimeOptions | None = None,
            coreml: CoreMLOptions | None = None, onnx: OnnxOptions | None = None, name: str | None = None, force: bool = False, strict: bool = False,
            progress: bool | None = None, unsafe_load: bool = False, **flat: Any) -> ConvertResult:
    """Convert a Keras or PyTorch model in `precision` for each target, validate it on the host, write artifacts and
    report.

    Example:
        >>> result = edgemp.convert("model.keras", "int8", "calibration_data/", "val_images/", "dist/")
        >>> result.passed, result.artifacts["tflite"]
        >>> edgemp.convert(model, "mixed", cal, (x, y), gate=edgemp.GateOptions(max_accuracy_drop=0.005),
        ...                targets=("tflite", "coreml"), example_input=torch.zeros(1, 3, 224, 224))

    Options come in frozen groups (each checked up front): `data` (calibration sample count, seed, validation
    samples, batch, class names), `gate` (accuracy drop, fidelity floor, `metric=`, output tasks), `mixed`
    (the float-layer cap, layers forced float or int8), `runtime` (threads, XNNPACK, delegates, latency runs),
    `coreml` (the Core ML target's precision, fp32 ops, image input, deployment target), `onnx` (the ONNX target's
    opset and fp16 I/O). The flat keywords of
    earlier releases (`max_accuracy_drop=`, `num_threads=`, ...) still work, with a DeprecationWarning.

    `targets`: any registered targets ("tflite", "coreml", "onnx"), alone or together: an iOS app can ask for Core ML only
    (a `mixed` Core ML model still gets its fp32 layers from the TFLite search, run without writing a .tflite).
    PyTorch: pass an nn.Module with `example_input` (or an ExportedProgram / .pt2); data is given in the layout of
    example_input; `input_layout` ("NHWC", the default for 4-D inputs, or "NCHW") sets the artifact's. int8 gets
    int8 I/O unless io_dtype="float". With strict=True a failed check raises QualityGateError after everything is
    written. `unsafe_load=True` runs the Python code of a .keras/.h5 Lambda layer: only for trusted files.
    How artifacts are judged: docs/validation.md; the families that convert at each precision: docs/families.md.
    """
    conv = Conversion(model, precision, calibration, validation, output_dir,
                      options=group_options(data, gate, mixed, runtime, coreml, onnx, flat), example_input=example_input,
                      input_layout=input_layout, io_dtype=io_dtype, targets=targets, preprocessing=preprocessing,
                      name=name, force=force, strict=strict, progress=progress, unsafe_load=unsafe_load)
    with conv:
        conv.load()
        conv.plan()
        results = [target.build(conv) for target in conv.targets]
        return conv.write(results, conv.report(results))


class Conversion:
    """One conversion's state, built stage by stage: what targets read (`source`, `float_model`, `calibration_set`,
    `validation`, `quantized`, `artifact`) is computed on first use and kept."""

    def __init__(self, model: Any, precision: str | Precision, calibration: Any, validation: Any,
                 output_dir: str | Path, *, options: dict[str, Any], example_input: Any, input_layout: Any,
                 io_dtype: Any, targets: Sequence[str], preprocessing: Any, name: str | None, force: bool,
                 strict: bool, progress: bool | None, unsafe_load: bool) -> None:
        self.timer = Timer()
        self.spec = precision_spec(precision)
        self.precision = self.spec.precision
        self.io = parse_enum(IODType, io_dtype, "io_dtype")
        self.data: DataOptions = options["data"]
        self.gate: GateOptions = options["gate"]
        self.mixed_options: MixedOptions = options["mixed"]
        self.runtime: RuntimeOptions = options["runtime"]
        self.coreml: CoreMLOptions = options["coreml"]
        self.onnx: OnnxOptions = options["onnx"]
        names = P.strings("targets", targets)
        if not names or len(set(names)) != len(names):
            raise InputError(f"targets must name each target once, at least one: {list(names or [])}")
        self.targets = [get_target(t) for t in names]
        for flag_name, value in (("force", force), ("strict", strict), ("unsafe_load", unsafe_load)):
            P.flag(flag_name, value)
        self.force, self.strict, self.unsafe_load = force, strict, unsafe_load
        self.progress = P.optional_flag("progress", progress)
        self.name = P.text("name", name, none_ok=True)
        self.preprocessing = as_preprocessing(preprocessing)
        from edgemp.sources import is_qat_module

        self.qat = is_qat_module(model)
        if self.spec.needs_calibration and calibration is None and not self.qat:
            raise CalibrationError(f"precision {self.precision.value!r} needs calibration data: pass calibration= "
                                   "(a folder of images, .npy/.npz, an array or an iterable of samples).")
        self.out_dir = prepare_output_dir(P.path("output_dir", output_dir))
        self._model, self._calibration, self._validation = model, calibration, validation
        self._example_input, self._input_layout = example_input, input_layout
        self.calibration_runs = 0
        self.float_from_cache = self.statistics_from_cache = False

    def __enter__(self) -> Conversion:
        return self

    def __exit__(self, *exc: object) -> None:
        """Whatever happened, the staging folder goes: a failed run leaves nothing in the temporary folder."""
        staging = self.__dict__.pop("staging", None)
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        executor = self.__dict__.pop("executor", None)
        if executor is not None:  # a Ray this run started is shut down
            executor.close()

    @functools.cached_property
    def executor(self) -> Any:
        """Where mixed-precision candidates run (MixedOptions.executor); a local Ray starts when there is work for it
        (start_early)."""
        from edgemp.mixed.executor import make_executor

        m = self.mixed_options
        return make_executor(m.executor, m.ray_address, m.num_workers)

    @functools.cached_property
    def staging(self) -> Path:
        """A private temporary folder for artifacts that are folders (.mlpackage) until write() moves them."""
        return Path(tempfile.mkdtemp(prefix="edgemp-staging-"))

    # -- stages ---------------------------------------------------------------------------------------------------
    def load(self) -> None:
        with self.timer.stage("load_model"):
            self.source = load_source(self._model, example_input=self._example_input, input_layout=self._input_layout,
                                      unsafe_load=self.unsafe_load)
        self._check_limits()
        if self.spec.searched:
            self.start_early(self.executor)
        if self.source.data_layout is Layout.NCHW:  # data arrives shaped like the model's own input
            self.preprocessing = dataclasses.replace(self.preprocessing or Preprocessing(), layout=Layout.NCHW)
        self.base = self.name or self.source.name
        self.stem = f"{self.base}_{self.precision.value}"

    def start_early(self, executor: Any) -> None:
        """A local Ray to be started warms its workers up while the model converts and calibrates. A float model
        from the disk cache (a second run on the same file) leaves nothing to overlap, and a search that then finds
        its scores cached may need no Ray at all: the executor starts it when a batch needs it."""
        from edgemp import _diskcache

        if not _diskcache.has_float_tflite(self.source, self.data.batch_size):
            executor.start()

    def _check_limits(self) -> None:
        """A source limited to some precisions or targets (a QAT module: int8 .tflite) refuses the others."""
        from edgemp.sources import source_limits

        limits = source_limits(self.source.kind)
        if limits is None:
            return
        precisions, targets = limits
        refused = [t.name for t in self.targets if t.name not in targets]
        if self.precision.value not in precisions or refused:
            raise InputError(self.source.limits_message(self.precision.value, refused))
        if self.qat and self.io is IODType.FLOAT:
            raise InputError("a QAT module's .tflite has int8 inputs and outputs (litert-torch's PT2E conversion); "
                             "io_dtype='float' is not available for it: quantize inputs with the manifest's scale.")

    def plan(self) -> None:
        """Every target checks its options and names its files; nothing exists that force would not replace."""
        self.planned = {t.name: t.plan(self) for t in self.targets}
        reports = [self.out_dir / f"{self.stem}.report.{x}" for x in ("json", "md")]
        mixed = [self.out_dir / f"{self.stem}.sensitivity.{x}" for x in ("md", "png", "html")] if self.spec.searched else []
        check_overwrite([p for paths in self.planned.values() for p in paths] + reports + mixed, self.force)

    @functools.cached_property
    def float_model(self) -> FloatModel:
        from edgemp.quantize.rewrites import prepare_for_quantization
        from edgemp.targets.tflite.census import census

        with self.timer.stage("float_conversion"):
            tflite = self._cached_float_tflite()
            fcensus = census(tflite)
            rewrites = list(getattr(self.source, "rewrites", []))
            if not self.spec.needs_calibration:
                return FloatModel(tflite, fcensus, tflite, rewrites)
            self.source, tflite, fcensus, unrolled = without_loops(self.source, tflite, fcensus, self.data.batch_size,
                                                                   self.precision)
            prep = prepare_for_quantization(tflite)
            rewrites += unrolled + [f"{n} {k} (exact; so the op can be int8)" for k, n in prep.rewrites.items() if n]
            return FloatModel(tflite, fcensus, prep.model, rewrites)

    def _cached_float_tflite(self) -> bytes:
        """A model file converted before (same bytes, batch, edgemp version) is not converted again."""
        from edgemp import _diskcache

        tflite, self.float_from_cache = _diskcache.float_tflite(self.source, self.data.batch_size)
        return tflite

    @functools.cached_property
    def calibration_set(self) -> CalibrationSet | None:
        if self._calibration is None:
            return None
        with self.timer.stage("calibration_data"):
            return load_calibration(self._calibration, self.source.input_specs(),
                                    num_samples=self.data.num_calibration_samples, seed=self.data.seed,
                                    preprocessing=self.preprocessing, progress=self.progress)

    @functools.cached_property
    def validation(self) -> tuple[ValidationData, str | None]:
        """(data, note): the given validation data, else the calibration samples, else random inputs."""
        cal = self.calibration_set
        with self.timer.stage("validation_data"):
            vdata, note = validation_data(self._validation, self.source.input_specs(),
                                          self.preprocessing or (cal.preprocessing if cal else None), cal,
                                          self.data.max_validation_samples, self.data.seed, self.progress,
                                          self.data.class_names, opaque_labels=self.gate.metric is not None)
        if cal is not None and self._validation is not None:
            check_ranges(cal, vdata, self.preprocessing or cal.preprocessing)
        return vdata, note

    @functools.cached_property
    def quantized(self) -> Quantized:
        """The .tflite in this precision, before compact(): tensor names still those of the float graph."""
        from edgemp.quantize import apply_recipe

        if self.qat:  # the scales training learned: no calibration that would replace them
            with self.timer.stage("qat_export"):
                artifact = self.source.qat_tflite()
            learned = Quantized(artifact, [{"quantization_parameters": "learned by QAT"} | self.source.qat_summary()])
            if not self.spec.searched:
                return learned
            from edgemp.mixed.pipeline import qat_mixed

            outcome = qat_mixed(self, learned.artifact, learned.recipe)
            return Quantized(outcome.artifact, outcome.recipe, outcome, self.calibration_runs)
        ahead = None
        if self.spec.searched and "float_model" not in self.__dict__:  # the search's float reference, meanwhile
            from edgemp.mixed.session import reference_ahead

            ahead = reference_ahead(self.source, self.validation[0], self.executor.threads_here)
        fm = self.float_model
        recipe = self.spec.recipe(self.io, fm.census)
        if recipe is None:
            return Quantized(fm.tflite, None)
        stats = self._statistics(fm.quantization_base) if self.spec.needs_calibration else None
        if self.spec.searched:
            from edgemp.mixed.pipeline import run_mixed

            vdata, _ = self.validation
            with self.timer.stage("mixed_search"):
                m = self.mixed_options
                outcome = run_mixed(self.source, fm.quantization_base, stats, vdata, self.runtime,
                                    float_io=self.io is IODType.FLOAT, gate=self.gate,
                                    max_float_layers=m.max_float_layers, keep_float=m.keep_float,
                                    never_float=m.never_float, tensor_samples=32, title=self.base,
                                    progress=self.progress, class_names=self.data.class_names,
                                    executor=self.executor, reference=ahead)
            outcome.section["calibration_runs"] = self.calibration_runs
            return Quantized(outcome.artifact, outcome.recipe, outcome, self.calibration_runs)
        with self.timer.stage("quantize"):
            artifact = apply_recipe(fm.quantization_base, recipe, stats)
            if self.spec.finish is not None:
                artifact, _ = self.spec.finish(artifact)
            return Quantized(artifact, recipe, None, self.calibration_runs)

    def _statistics(self, qbase: bytes, source: Any = None, executor: Any = None) -> Any:
        """`executor`: where calibration runs (a Ray one shards it across its workers); default: in this process,
        or the mixed search's executor when this conversion searches."""
        from edgemp.quantize import calibrate
        from edgemp.validation.inputs import check_token_ids

        cal = self.calibration_set
        if cal is None:  # a QAT module whose learned scales missed the mixed budget
            raise CalibrationError("the QAT module's learned scales miss the budget, so precision 'mixed' keeps "
                                   "layers in float and calibrates the int8 ones around them: pass calibration=.")
        if self.spec.searched:
            self.validation  # noqa: B018 - the range checks see calibration and validation data together
        samples = [(source or self.source).artifact_inputs(s) for s in cal.samples]
        check_token_ids(qbase, samples, CalibrationError)
        from edgemp import _diskcache

        def run() -> Any:
            with self.timer.stage("calibrate"):
                self.calibration_runs += 1
                ex = executor or (self.executor if self.spec.searched else None)
                run_on = ex.calibrate if ex is not None else calibrate
                return run_on(qbase, samples, num_threads=self.runtime.num_threads, progress=self.progress)

        stats, self.statistics_from_cache = _diskcache.statistics(qbase, samples, run)
        return stats

    # -- report and files -----------------------------------------------------------------------------------------
    def report(self, results: list[TargetResult]) -> Report:
        checks = [c for r in results for c in r.checks]
        quantized = self.__dict__.get("quantized")
        mixed = quantized.mixed if quantized is not None else None
        vdata = self.__dict__["validation"][0] if "validation" in self.__dict__ else None
        cal = self.calibration_set
        fm = self.__dict__.get("float_model")
        data: dict[str, Any] = {
            "edgemp_version": __version__,
            "passed": all(c.passed for c in checks),
            "model": {"name": self.base, "source": self.source.kind, "path": self.source.path,
                      "parameters": self.source.num_parameters(),
                      "inputs": [s.to_dict() for s in self.source.input_specs()], "batch_size": self.data.batch_size,
                      "input_layout": self.source.artifact_layout.value, "rewrites": fm.rewrites if fm else [],
                      "layout_transposes": []},
            "precision": self.precision.value,
            "precision_meaning": self.spec.meaning,
            "io_dtype": self.spec.io_label(self.io),
            "targets": [t.name for t in self.targets],
            "recipe": quantized.recipe if quantized is not None else None,
            "artifacts": [r.artifact for r in results],
            "fp32_reference": None, "census": None, "validation": None, "coreml": None, "onnx": None,
            "preprocessing": _app_preprocessing(cal, self.source.artifact_layout),
            "class_names": list(self.data.class_names) if self.data.class_names is not None else
            (vdata.class_names if vdata is not None else None),
            "calibration": cal.summary() if cal else None,
            "gate": self.gate.to_dict(),
            "mixed": mixed.section if mixed is not None else None,
            "qat": self.source.qat_summary() if self.qat else None,
            "reused": {"float_tflite": self.float_from_cache, "statistics": self.statistics_from_cache},
        }
        for r in results:
            for key, value in r.report.items():
                data[key] = data[key] | value if isinstance(data.get(key), dict) and isinstance(value, dict) else value
        data |= {"checks": [c.to_dict() for c in checks], "timings_s": self.timer.times,
                 "versions": versions() | self.source.framework_versions()}
        return Report(data)

    def write(self, results: list[TargetResult], report: Report) -> ConvertResult:
        """All files or none; never over an existing file without force; a failing conversion never replaces
        an earlier artifact of the same name (it is written beside it as <name>.failed.*)."""
        stem = self.stem
        files: dict[Path, bytes | str | Path] = {p: c for r in results for p, c in r.files.items()}
        if not report.passed and any(p.exists() for p in files):
            stem += ".failed"
            renamed = {p: p.with_name(f"{p.stem}.failed{p.suffix}") for p in files}
            files = {renamed[p]: c for p, c in files.items()}
            for r in results:
                r.artifact["path"] = str(renamed[r.primary])
                r.primary = renamed[r.primary]
            log.warning("an earlier artifact exists: the FAILED conversion is written beside it (%s, and its reports "
                        "%s.report.*); the earlier files are kept", ", ".join(str(r.primary) for r in results),
                        self.out_dir / stem)
        mixed = self.__dict__.get("quantized")
        extra = mixed.mixed.files if mixed is not None and mixed.mixed is not None else {}
        paths = {r.target: r.primary for r in results} | {"report_json": self.out_dir / f"{stem}.report.json",
                                                          "report_md": self.out_dir / f"{stem}.report.md"}
        blobs = {p: c for p, c in files.items() if not isinstance(c, Path)}
        blobs |= {paths["report_json"]: report.to_json(), paths["report_md"]: report.to_markdown()}
        blobs |= {self.out_dir / f"{stem}.{k}": v for k, v in extra.items()}
        write_all_atomic(blobs, overwrite=self.force)
        for p, staged in files.items():
            if isinstance(staged, Path):  # a finished folder (.mlpackage) in self.staging, maybe on another file system
                save_dir_atomic(p, lambda dest, src=staged: shutil.move(str(src), str(dest)), overwrite=self.force)
        paths |= {k.replace(".", "_"): self.out_dir / f"{stem}.{k}" for k in extra}
        result = ConvertResult(paths, report, self.precision)
        if mixed is not None and mixed.mixed is not None and not mixed.mixed.met:
            raise MixedPrecisionError(mixed.mixed.message, report, result)
        if not report.passed:
            log.warning("conversion to %s FAILED validation: %s", self.precision.value, "; ".join(report.failures))
            if self.strict:
                raise QualityGateError("validation failed: " + "; ".join(report.failures), report)
        return result


def _app_preprocessing(cal: CalibrationSet | None, layout: Layout) -> dict[str, Any] | None:
    """What the app must do to an image: the calibration spec, in the artifact's layout."""
    if cal is None or cal.preprocessing is None:
        return None
    return dataclasses.replace(cal.preprocessing, layout=layout).to_dict()
