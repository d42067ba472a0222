"""edgemp.analyze: which layers of a model tolerate INT8, before choosing a precision."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from edgemp._io import check_overwrite, prepare_output_dir, write_all_atomic
from edgemp.calibration import load_calibration
from edgemp.config import Layout, Preprocessing, RuntimeOptions
from edgemp import _params as P
from edgemp.config import DataOptions
from edgemp.pipeline import _preprocessing, _validation_data
from edgemp.errors import CalibrationError, public
from edgemp.mixed.pipeline import analyze_layers, sensitivity_json
from edgemp.mixed.report import plot_png, to_html, to_markdown
from edgemp.mixed.session import MixedSession
from edgemp.quantize import calibrate
from edgemp.quantize.engine import CALLS
from edgemp.sources import load_source


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
) -> AnalysisResult:
    """Rank the layers of a model by INT8 sensitivity; write `<name>_sensitivity.{json,md,png,html}`.

    Example:
        >>> a = edgemp.analyze("model.keras", "calibration_data/", "val_images/")
        >>> a.most_sensitive(3)

    Calibration runs once; each layer's effect comes from re-quantizing with that layer alone in float.
    With labels the ranking is by top-1 gain (then output SQNR gain), else by output SQNR gain.
    `unsafe_load=True` runs the Python code a .keras/.h5 may contain (see convert()).
    """
    if calibration is None:
        raise CalibrationError("analysis quantizes the model to INT8: pass calibration= (a folder of images, "
                               ".npy/.npz, an array or an iterable of samples).")
    pre = _preprocessing(preprocessing)
    opts = RuntimeOptions(num_threads=num_threads, xnnpack=xnnpack, latency_runs=0)
    DataOptions(num_calibration_samples, seed, max_validation_samples, 1, class_names)  # checks types up front
    P.integer("tensor_samples", tensor_samples, 1, 10**5)
    P.flag("force", force)
    P.optional_flag("progress", progress)
    P.text("name", name, none_ok=True)
    P.path("output_dir", output_dir)
    out_dir = prepare_output_dir(output_dir)
    source = load_source(model, example_input=example_input, input_layout=input_layout, unsafe_load=unsafe_load)
    if source.data_layout is Layout.NCHW:
        pre = dataclasses.replace(pre or Preprocessing(), layout=Layout.NCHW)
    base = f"{name or source.name}_sensitivity"
    paths = {k: out_dir / f"{base}.{k}" for k in ("json", "md", "png", "html")}
    check_overwrite(list(paths.values()), force)
    float_tflite = source.to_float_tflite(1)
    specs = source.input_specs()
    cal = load_calibration(calibration, specs, num_samples=num_calibration_samples, seed=seed, preprocessing=pre,
                           progress=progress)
    vdata, note = _validation_data(validation, specs, pre or cal.preprocessing, cal, max_validation_samples, seed,
                                   progress, list(class_names) if class_names else None)
    calls = CALLS["calibrate"]
    stats = calibrate(float_tflite, [source.artifact_inputs(s) for s in cal.samples], num_threads=num_threads,
                      progress=progress)
    session = MixedSession(source, float_tflite, stats, vdata, opts, progress=progress)
    rows, summary = analyze_layers(session, tensor_samples, progress)
    summary |= {"model": source.name, "source": source.kind, "calibration": cal.summary(),
                "validation": vdata.summary() | ({"note": note} if note else {}),
                "calibration_runs": CALLS["calibrate"] - calls}
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
