"""Public helpers beside convert(): inspect an artifact, validate an existing artifact against a reference."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any


from edgemp import __version__, _params as P
from edgemp._versions import versions
from edgemp.targets.tflite.census import Census, census
from edgemp.config import DelegateSpec, GateOptions, Precision, Preprocessing, RuntimeOptions
from edgemp.errors import ModelLoadError, NotATFLiteModelError, public
from edgemp.sources import load_source
from edgemp.sources.base import TensorSpec
from edgemp.validation import Report, Runner, evaluate, load_validation
from edgemp.validation.data import random_inputs


def read_tflite(model: str | os.PathLike[str] | bytes) -> tuple[bytes, str | None]:
    if isinstance(model, bytes | bytearray):
        return bytes(model), None
    path = Path(model)
    if not path.is_file():
        raise ModelLoadError(f"TFLite model {path} does not exist or is not a file.")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelLoadError(f"cannot read {path}: {exc.strerror}") from exc
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise NotATFLiteModelError(f"{path} is not a TFLite flatbuffer (no 'TFL3' identifier); pass a .tflite file.")
    return data, str(path)


@public
def inspect_model(model: str | os.PathLike[str] | bytes) -> Any:
    """The op census of a .tflite (every op's compute dtype, weights, I/O with scale/zero-point, size), or of an
    .mlpackage (I/O, ops by compute precision, weight storage dtypes, size) as a CoreMLCensus.

    Example:
        >>> c = edgemp.inspect_model("dist/model_int8.tflite"); c.compute_counts
    """
    if not isinstance(model, bytes | bytearray) and Path(model).suffix == ".mlpackage":
        if not Path(model).is_dir():
            raise ModelLoadError(f"Core ML package {model} does not exist (an .mlpackage is a directory).")
        from edgemp.targets.coreml.census import coreml_census

        return coreml_census(Path(model))
    data, _ = read_tflite(model)
    return census(data)


@public
def validate(
    model: str | os.PathLike[str] | bytes,
    reference: Any = None,
    data: Any = None,
    *,
    preprocessing: Preprocessing | Mapping[str, Any] | None = None,
    max_accuracy_drop: float | None = 0.01,
    max_samples: int | None = None,
    class_names: Sequence[str] | None = None,
    num_threads: int = 1,
    xnnpack: bool = True,
    delegates: Sequence[str | DelegateSpec | Mapping[str, Any]] = (),
    latency_runs: int = 50,
    progress: bool | None = None,
    min_sqnr_db: float | None = None,
    min_cosine: float | None = None,
    metric: Callable[..., float] | None = None,
    output_tasks: Mapping[str, str] | None = None,
    label_output: str | None = None,
    unsafe_load: bool = False,
) -> Report:
    """Validate an existing .tflite on the host against a reference (Keras model/path or another .tflite).

    Judged as convert() judges (labels, `metric`, or the fidelity floor of the precision the census finds).
    `unsafe_load=True` runs the Python code a reference .keras/.h5 may contain (see convert()).

    Example:
        >>> report = edgemp.validate("dist/m_int8.tflite", reference="m.keras", data="val/"); report.passed
    """
    t0 = time.perf_counter()
    gate = GateOptions(max_accuracy_drop, min_sqnr_db, min_cosine, metric, output_tasks or {}, label_output)
    P.integer("max_samples", max_samples, 1, none_ok=True)
    P.strings("class_names", class_names, none_ok=True)
    P.optional_flag("progress", progress)
    artifact, path = read_tflite(model)
    c = census(artifact)
    precision = Precision(_precision_of(c))
    specs = [TensorSpec(s.name, tuple(None if d < 0 else d for d in s.shape),
                        s.dtype if s.dtype.startswith(("int", "uint", "bool")) and not s.scale else "float32")
             for s in c.inputs]
    from edgemp.config import as_preprocessing

    pre = as_preprocessing(preprocessing)
    opts = RuntimeOptions(num_threads=num_threads, xnnpack=xnnpack, delegates=delegates,  # type: ignore[arg-type]
                          latency_runs=latency_runs)
    predict, ref_name, ref_outputs = _reference(reference, unsafe_load)
    if data is None:
        vdata = random_inputs(specs, 32, 0)
    else:
        vdata = load_validation(data, specs, pre, max_samples, progress, list(class_names) if class_names else None,
                                opaque_labels=metric is not None)
    section, checks = evaluate(artifact, predict, vdata, opts, gate, precision=precision, progress=progress,
                               class_names=class_names, output_names=ref_outputs)
    return Report({
        "edgemp_version": __version__,
        "passed": all(ch.passed for ch in checks),
        "model": {"name": Path(path).stem if path else "model", "source": "tflite", "path": path,
                  "reference": ref_name, "inputs": [s.to_dict() for s in specs]},
        "precision": precision.value,
        "precision_meaning": "inferred from the op census",
        "io_dtype": ",".join(sorted({s.dtype for s in c.inputs})),
        "artifacts": [{"target": "tflite", "path": path or "<bytes>", "bytes": len(artifact), "ratio_to_fp32": None,
                       "sha256": hashlib.sha256(artifact).hexdigest()}],
        "census": {k: v for k, v in c.to_dict().items()},
        "validation": section,
        "gate": gate.to_dict(),
        "checks": [ch.to_dict() for ch in checks],
        "timings_s": {"validate": round(time.perf_counter() - t0, 4)},
        "versions": versions(),
    })


def _reference(reference: Any, unsafe_load: bool = False) -> tuple[Any, str | None, list[str] | None]:
    """(predict, name, output names in predict's order) of the reference."""
    if reference is None:
        return None, None, None
    if isinstance(reference, str | os.PathLike | bytes) and (isinstance(reference, bytes) or
                                                              str(reference).lower().endswith(".tflite")):
        data, path = read_tflite(reference)
        runner = Runner(data, RuntimeOptions())
        return runner.run, path or "<bytes>", [d.name for d in runner.outputs]
    source = load_source(reference, unsafe_load=unsafe_load)
    return source.predict, source.path or source.name, source.output_names()


def _precision_of(c: Census) -> str:
    counts = c.compute_counts
    if not c.float_compute_ops(allow_io_boundaries=True):
        return "int16x8" if counts.get("int16") else "int8"
    if counts.get("hybrid-int8"):
        return "dynamic-int8"
    if c.weight_dtypes.get("float16"):
        return "fp16"
    if counts.get("int8") or counts.get("int16"):
        return "mixed"
    return "fp32"


