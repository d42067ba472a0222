"""edgemp.sweep (in edgemp.grid): a grid of conversions (models x precisions, each cell building the same targets),
one folder and report per cell, and one summary table for the grid (sweep.md + sweep.json) — serially, or as Ray
tasks.

A nightly zoo run is one sweep: a cell that fails (a corrupt file, a gate, a converter that cannot lower the model)
is a failed row with its reason, and the other cells go on.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from edgemp import __version__
from edgemp import _params as P
from edgemp._io import check_overwrite, prepare_output_dir, write_all_atomic
from edgemp._ray import (Outcome, check_task_options, describe, put, ray_session, require_ray, run_local,
                         run_tasks)
from edgemp._versions import versions
from edgemp.config import CoreMLOptions, DataOptions, GateOptions, MixedOptions, OnnxOptions, RuntimeOptions
from edgemp.errors import CalibrationError, InputError, MixedPrecisionError, ModelLoadError, public
from edgemp.pipeline import ConvertResult, convert
from edgemp.precisions import precision_spec
from edgemp.targets import get_target
from edgemp.validation.report import _f, _jsonable

EXECUTORS = ("local", "ray")
FILES = ("sweep.json", "sweep.md")
_GROUPS = {"data": DataOptions, "gate": GateOptions, "mixed": MixedOptions, "runtime": RuntimeOptions,
           "coreml": CoreMLOptions, "onnx": OnnxOptions}
# convert() parameters a sweep sets itself for every cell (the rest pass through **convert_options)
_OWN = {"model", "precision", "calibration", "validation", "output_dir", "targets", "force", "progress", "name", "flat"}


@dataclasses.dataclass(frozen=True)
class Cell:
    """One conversion of the grid: which model (a path, or an in-memory model with the local executor), its name in
    the table and the folder, the precision, and where its files go."""

    model: Any
    name: str
    precision: str
    out_dir: Path


@dataclasses.dataclass(frozen=True)
class Shared:
    """What every cell gets alike (put in the Ray object store once)."""

    calibration: Any
    validation: Any
    targets: tuple[str, ...]
    force: bool
    options: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class SweepResult:
    """The grid's rows (one dict per cell, in models x precisions order) and the table files written."""

    rows: list[dict[str, Any]]
    artifacts: dict[str, Path]
    summary: dict[str, Any]

    @property
    def passed(self) -> bool:
        return all(r["passed"] for r in self.rows)

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if not r["passed"]]

    def to_dict(self) -> dict[str, Any]:
        return {"schema_version": 1, **self.summary, "passed": self.passed, "cells": self.rows}

    def to_json(self) -> str:
        return json.dumps(_jsonable(self.to_dict()), indent=2) + "\n"

    def to_markdown(self) -> str:
        return render_markdown(self.to_dict())


@public
def sweep(models: Sequence[Any], precisions: Sequence[str] = ("fp16", "int8", "mixed"),
          targets: Sequence[str] = ("tflite",), calibration: Any = None, validation: Any = None,
          output_dir: str | os.PathLike[str] = "dist/sweep", *, executor: str = "local", ray_address: str | None = None,
          num_workers: int | None = None, retries: int = 2, timeout: float | None = None, force: bool = False,
          progress: bool | None = None, **convert_options: Any) -> SweepResult:
    """Convert every model to every precision (each cell builds all `targets`), write each cell's artifacts and
    report in `output_dir/<model>/<precision>/`, and the grid's table in `output_dir/sweep.md` and `sweep.json`.

    Example:
        >>> r = edgemp.sweep(["a.keras", "b.pt2"], ["fp16", "int8"], ("tflite",), "cal/", "val/", "dist/sweep")
        >>> r.passed, [(row["model"], row["precision"], row["passed"]) for row in r.rows]

    Why a grid call and not a loop over convert(): one failing cell (a corrupt model, a gate, a converter that cannot
    lower it) becomes a failed row with its reason instead of stopping the rest, and `executor="ray"` runs the cells
    as Ray tasks (a local Ray started for the run, or the cluster at `ray_address`; at most `num_workers` at once; a
    worker that dies is retried `retries` times; a cell over `timeout` seconds is cancelled and reported). Ray tasks
    load models from paths (.keras, .h5, SavedModel dir, .pt2); in-memory models need executor="local". Any other
    convert() keyword (`data=`, `gate=`, `mixed=`, `runtime=`, `coreml=`, `onnx=`, `io_dtype=`, ...) applies to every
    cell. Refuses to overwrite an existing sweep.json without `force` (which is also passed to every cell).
    """
    if executor not in EXECUTORS:
        raise InputError(f"executor must be one of {', '.join(map(repr, EXECUTORS))}, got {executor!r}.")
    given = [k for k, v in (("ray_address", ray_address), ("num_workers", num_workers), ("timeout", timeout))
             if v is not None]
    if given and executor != "ray":
        raise InputError(f"{', '.join(given)} apply to Ray tasks only: pass executor='ray' too, or leave them out.")
    check_task_options(num_workers, retries, timeout)
    P.flag("force", force)
    P.optional_flag("progress", progress)
    cells_models = _models(models, executor)
    names = P.strings("precisions", precisions) or ()
    precisions = _unique("precisions", [precision_spec(p).precision.value for p in names])  # "INT8" -> "int8"
    targets = _unique("targets", targets)
    for t in targets:
        get_target(t)
    if calibration is None and any(precision_spec(p).needs_calibration for p in precisions):
        needs = [p for p in precisions if precision_spec(p).needs_calibration]
        raise CalibrationError(f"precision(s) {', '.join(needs)} need calibration data: pass calibration= (CLI: -c), "
                               "a folder of images, .npy/.npz, an array or an iterable of samples.")
    options = _convert_options(convert_options)
    if executor == "ray":
        require_ray()  # the missing extra is named before anything runs
    out = prepare_output_dir(P.path("output_dir", output_dir))
    tables = [out / f for f in FILES]
    check_overwrite(tables, force)

    cells = [Cell(model, name, p, out / name / p) for name, model in cells_models for p in precisions]
    shared = Shared(_absolute(calibration), _absolute(validation), targets, force, options)
    t0 = time.perf_counter()
    label = f"sweep ({len(cells)} conversions)"
    if executor == "ray":
        with ray_session(ray_address, num_workers):
            outcomes = run_tasks(run_cell, cells, args=(put(shared),), num_workers=num_workers, retries=retries,
                                 timeout=timeout, progress=progress, label=label)
    else:
        outcomes = run_local(run_cell, cells, args=(shared,), progress=progress, label=label)
    rows = [_row(o, out, targets) for o in outcomes]
    summary = {"edgemp_version": __version__, "executor": executor, "ray_address": ray_address,
               "models": [name for name, _ in cells_models], "precisions": list(precisions), "targets": list(targets),
               "output_dir": str(out), "wall_s": round(time.perf_counter() - t0, 3), "versions": versions()}
    result = SweepResult(rows, dict(zip(("sweep_json", "sweep_md"), tables)), summary)
    write_all_atomic({tables[0]: result.to_json(), tables[1]: result.to_markdown()}, overwrite=force)
    return result


def run_cell(cell: Cell, shared: Shared) -> dict[str, Any]:
    """One conversion (in this process or a Ray worker): what its row reports. Raises what convert() raised, except
    a mixed search that missed its budget, which still wrote its best artifact and report: a failed row."""
    t0 = time.perf_counter()
    reason = None
    try:
        result = convert(cell.model, cell.precision, shared.calibration, shared.validation, cell.out_dir,
                         targets=shared.targets, force=shared.force, progress=False, **shared.options)
    except MixedPrecisionError as exc:
        if not isinstance(exc.result, ConvertResult):
            raise
        result, reason = exc.result, describe(exc)
    if reason is None and not result.passed:
        reason = "; ".join(result.report.failures)
    return {"passed": reason is None, "reason": reason, "wall_s": round(time.perf_counter() - t0, 3),
            "report": str(result.artifacts["report_json"])} | measures(result.report.to_dict())


def measures(report: dict[str, Any]) -> dict[str, Any]:
    """A report's figures for one table row: accuracy (or the user's metric), fidelity, bytes per target, the
    layers mixed kept in float, host latency."""
    v = report.get("validation") or (report.get("onnx") or {}).get("validation") or {}
    a = v.get("accuracy")
    accuracy = None
    if a:
        kind = a.get("task")
        key, ref = {"metric": ("artifact", "float"), "segmentation": ("miou", "float_miou")}.get(
            kind, ("top1", "float_top1"))
        accuracy = {"metric": a.get("metric") if kind == "metric" else key, "value": a.get(key),
                    "float": a.get(ref), "drop": a.get("drop")}
    outputs = v.get("outputs") or []
    sqnr = [o["sqnr_db"] for o in outputs if isinstance(o.get("sqnr_db"), int | float)]
    cosine = [o["cosine"] for o in outputs if isinstance(o.get("cosine"), int | float)]
    mixed = report.get("mixed")
    return {"accuracy": accuracy,
            "fidelity": {"sqnr_db": min(sqnr), "cosine": min(cosine)} if sqnr and cosine else None,
            "bytes": {art["target"]: art["bytes"] for art in report.get("artifacts") or []},
            "float_layers": list(mixed.get("float_layers") or []) if mixed else None,
            "latency_ms": (v.get("latency") or {}).get("median_ms")}


def _row(o: Outcome, out: Path, targets: tuple[str, ...]) -> dict[str, Any]:
    cell: Cell = o.item
    row = {"model": cell.name, "model_path": str(cell.model) if isinstance(cell.model, str) else None,
           "precision": cell.precision, "targets": list(targets), "output_dir": str(cell.out_dir.relative_to(out))}
    if not o.ok:
        return row | {"passed": False, "reason": o.error, "wall_s": round(o.seconds, 3), "report": None,
                      "accuracy": None, "fidelity": None, "bytes": {}, "float_layers": None, "latency_ms": None}
    return row | o.value | {"report": os.path.relpath(o.value["report"], out)}


def render_markdown(d: Mapping[str, Any]) -> str:
    """sweep.md: one row per cell, then why each failed cell failed."""
    targets = list(d["targets"])
    rows = d["cells"]
    failed = [r for r in rows if not r["passed"]]
    verdict = f"{len(failed)} of {len(rows)} FAILED" if failed else "All passed"
    lines = [f"# edgemp sweep: {len(d['models'])} model(s) x {len(d['precisions'])} precision(s), targets "
             f"{', '.join(targets)}", "",
             f"**{verdict}** — executor {d['executor']}, {d['wall_s']:.1f} s", "",
             "| model | precision | result | accuracy (drop) | SQNR dB / cosine | "
             + " | ".join(f"{t} bytes" for t in targets) + " | float layers | latency ms | wall s | report |",
             "|---|---|---|---|---|" + "---|" * len(targets) + "---|---|---|---|"]
    for r in rows:
        a, fid = r["accuracy"], r["fidelity"]
        acc = f"{a['metric']} {_f(a['value'], 4)} ({_f(a['drop'], 4)})" if a else "—"
        fidelity = f"{_f(fid['sqnr_db'], 1)} / {_f(fid['cosine'], 5)}" if fid else "—"
        sizes = " | ".join(f"{r['bytes'][t]:,}" if t in r["bytes"] else "—" for t in targets)
        fl = r["float_layers"]
        layers = "—" if fl is None else (f"{len(fl)}: {', '.join(fl)}" if fl else "0")
        lines.append(f"| {r['model']} | {r['precision']} | {'pass' if r['passed'] else '**FAIL**'} | {acc} | "
                     f"{fidelity} | {sizes} | {layers} | {_f(r['latency_ms'], 3)} | {r['wall_s']:.1f} | "
                     + (f"`{r['report']}`" if r["report"] else "—") + " |")
    if failed:
        lines += ["", "## Failed cells", ""]
        lines += [f"- {r['model']} / {r['precision']}: {_one_line(r['reason'])}" for r in failed]
    return "\n".join(lines) + "\n"


def _one_line(text: str | None) -> str:
    return " ".join((text or "no reason recorded").split()).replace("|", "\\|")


def _models(models: Any, executor: str) -> list[tuple[str, Any]]:
    """(name, model) per model: paths made absolute (workers may start elsewhere); names unique."""
    if isinstance(models, str | bytes | os.PathLike) or not isinstance(models, Sequence) or not models:
        raise InputError(f"models must be a non-empty list of model paths (or in-memory models), got {models!r}"
                         + (f"; write [{models!r}]." if isinstance(models, str | os.PathLike) else "."))
    out: list[tuple[str, Any]] = []
    for m in models:
        if isinstance(m, str | os.PathLike):
            path = Path(m).absolute()
            if not path.exists():
                raise ModelLoadError(f"model {m} does not exist: check the path (a .keras/.h5 file, a SavedModel "
                                     "folder or a .pt2 file).")
            out.append((_safe(path.stem or path.name), str(path)))
        elif executor == "ray":
            raise InputError(f"executor='ray' loads each model from its path in a worker; {type(m).__name__} is an "
                             "in-memory model: save it (model.save('m.keras'), torch.export.save(ep, 'm.pt2')) and "
                             "pass the path, or use executor='local'.")
        else:
            name = getattr(m, "name", None)
            out.append((_safe(name if isinstance(name, str) and name else type(m).__name__), m))
    names = [n for n, _ in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise InputError(f"two models share the name {dup[0]!r} (the name of their folder under output_dir): rename "
                         "one of the files, or sweep them into separate output directories.")
    return out


def _safe(name: str) -> str:
    """A model's name as one folder name."""
    return re.sub(r"[^\w.-]+", "_", name).strip(".") or "model"


def _unique(name: str, values: Any) -> tuple[str, ...]:
    got = P.strings(name, values) or ()
    if not got or len(set(got)) != len(got):
        raise InputError(f"{name} must name each value once, at least one: {list(got)}")
    return got


def _convert_options(given: dict[str, Any]) -> dict[str, Any]:
    """The convert() keywords every cell gets, checked once here (not once per cell): unknown or sweep-owned names
    are refused; option groups given as dicts are built (and checked) now."""
    allowed = set(inspect.signature(convert).parameters) - _OWN
    bad = sorted(set(given) - allowed)
    if bad:
        raise InputError(f"sweep() got keyword(s) {bad} it cannot pass to each convert(): use one of "
                         f"{sorted(allowed)} (models, precisions, targets, data and output_dir are sweep's own).")
    out = dict(given)
    for key, cls in _GROUPS.items():
        if isinstance(out.get(key), Mapping):
            out[key] = cls.from_dict(out[key])
    return out


def _absolute(data: Any) -> Any:
    """Data given as a path, made absolute: a Ray worker may run in another working directory."""
    return str(Path(data).absolute()) if isinstance(data, str | os.PathLike) else data
