"""edgemp.analyze: which layers of a model tolerate INT8, before choosing a precision."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from edgemp import _params as P
from edgemp._io import check_overwrite, write_all_atomic
from edgemp.config import (CoreMLOptions, DataOptions, GateOptions, Layout, MixedOptions, OnnxOptions, Preprocessing,
                           RuntimeOptions)
from edgemp.errors import CalibrationError, public
from edgemp.mixed.pipeline import analyze_layers, executor_for, sensitivity_json
from edgemp.mixed.report import plot_png, to_html, to_markdown
from edgemp.mixed.session import MixedSession, reference_ahead
from edgemp.pipeline import Conversion
from edgemp.precisions import Precision


@dataclasses.dataclass
class AnalysisResult:
    """Per-layer INT8 sensitivity, most sensitive first. `layers[i]` has the source layer name (`label`), the
    op, the int8-vs-float tensor error at its output and the model's score with only that layer in float."""

    layers: list[dict[str, Any]]
    summary: dict[str, Any]
    artifacts: dict[str, Path]

    def to_dict(self) -> dict[str, Any]:
        return {"summary": self.summary, "layers": self.layers}

    def to_markdown(self) -> str:
        return self.artifacts["md"].read_text()

    def most_sensitive(self, n: int = 5) -> list[str]:
        return [r["label"] for r in self.layers if r["rank"] is not None][:n]


@public
def analyze(
    model: Any,
    calibration: Any,
    validation: Any = None,
    output_dir: str | Path = "dist/",
    *,
    example_input: Any = None,
    input_layout: str | Layout | None = None,
    num_calibration_samples: int = 200,
    seed: int = 0,
    preprocessing: Preprocessing | Mapping[str, Any] | None = None,
    max_validation_samples: int | None = 1000,
    class_names: Sequence[str] | None = None,
    tensor_samples: int = 32,
    num_threads: int = 1,
    xnnpack: bool = True,
    name: str | None = None,
    force: bool = False,
    progress: bool | None = None,
    unsafe_load: bool = False,
    executor: str = "local",
    ray_address: str | None = None,
    num_workers: int | None = None,
) -> AnalysisResult:
    """Rank the layers of a model by INT8 sensitivity; write `<name>_sensitivity.{json,md,png,html}`.

    Example:
        >>> a = edgemp.analyze("model.keras", "calibration_data/", "val_images/")
        >>> a.most_sensitive(3)

    Calibration runs once; each layer's effect comes from re-quantizing with that layer alone in float.
    With labels the ranking is by top-1 damage (then output SQNR damage), else by output SQNR damage. The layers
    adding the most noise in one run with preserved tensors are scored on a few samples; the 12 most damaging of
    those are measured on all of them (docs/guide.md).
    `executor="ray"` scores the candidates as Ray tasks (`ray_address`: an existing cluster; default a local Ray
    with `num_workers` workers; in-process, `num_workers` threads); the result is the same either way.
    `unsafe_load=True` runs the Python code a .keras/.h5 may contain (see convert()).
    """
    if calibration is None:
        raise CalibrationError("analysis quantizes the model to INT8: pass calibration= (a folder of images, "
                               ".npy/.npz, an array or an iterable of samples).")
    P.integer("tensor_samples", tensor_samples, 1, 10**5)
    mixed = MixedOptions(executor=executor, ray_address=ray_address, num_workers=num_workers)
    conv = Conversion(model, Precision.INT8, calibration, validation, output_dir,
                      options={"data": DataOptions(num_calibration_samples, seed, max_validation_samples, 1, class_names),
                               "gate": GateOptions(), "mixed": mixed, "coreml": CoreMLOptions(),
                               "onnx": OnnxOptions(),
                               "runtime": RuntimeOptions(num_threads=num_threads, xnnpack=xnnpack, latency_runs=0)},
                      example_input=example_input, input_layout=input_layout, io_dtype="quantized", targets=("tflite",),
                      preprocessing=preprocessing, name=name, force=force, strict=False, progress=progress,
                      unsafe_load=unsafe_load)
    with executor_for(mixed) as ex:
        conv.load()  # the same stages as convert(): integer-ready float model, data, one calibration
        conv.start_early(ex)  # a Ray warms its workers up while the model converts and calibrates
        base = f"{conv.base}_sensitivity"
        paths = {k: conv.out_dir / f"{base}.{k}" for k in ("json", "md", "png", "html")}
        check_overwrite(list(paths.values()), force)
        vdata, note = conv.validation
        ahead = reference_ahead(conv.source, vdata, ex.threads_here)  # beside the float conversion
        source, qbase = conv.source, conv.float_model.quantization_base
        stats = conv._statistics(qbase, executor=ex)
        session = MixedSession(source, qbase, stats, vdata, conv.runtime, progress=progress, executor=ex,
                               reference=ahead)
        rows, summary = analyze_layers(session, tensor_samples, progress)
    cal = conv.calibration_set
    assert cal is not None
    summary |= {"model": source.name, "source": source.kind, "calibration": cal.summary(),
                "validation": vdata.summary() | ({"note": note} if note else {}),
                "calibration_runs": conv.calibration_runs, "rewrites": conv.float_model.rewrites}
    title = f"{source.name}: per-layer INT8 sensitivity"
    int8 = summary["int8"]
    notes = [f"Full INT8 on {summary['validation_samples']} samples: "
             + (f"{summary['metric']} {int8['accuracy']:.4f} vs float {summary['float_accuracy']:.4f}, "
                if int8["accuracy"] is not None else "")
             + f"output SQNR {int8['sqnr_db']:.1f} dB.", *([note] if note else [])]
    md = to_markdown(rows, title, notes)
    png = plot_png(rows, title)
    write_all_atomic({paths["json"]: sensitivity_json(rows, summary), paths["md"]: md, paths["png"]: png,
                      paths["html"]: to_html(md, png, title)}, overwrite=force)
    return AnalysisResult(rows, summary, paths)
