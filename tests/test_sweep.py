"""edgemp.sweep / `edgemp sweep`: a grid of conversions with one report per cell and one table; a failing cell is a
failed row, not a stopped sweep; Ray (slow tier) gives the same table and artifact bytes, retries a dead worker and
reports a task that raises."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

import edgemp
from edgemp import errors
from edgemp._ray import ray_session, run_tasks
from edgemp.cli import EXIT_GATE_FAILED, main

from .models import N_TRAIN, digits, keras_digits_cnn, keras_digits_mlp

FAST = {"runtime": edgemp.RuntimeOptions(latency_runs=1)}
# what must not depend on where or when a cell ran (latency and wall time do)
STABLE = ("model", "precision", "targets", "passed", "reason", "accuracy", "fidelity", "bytes", "float_layers",
          "report", "output_dir")


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two trained digit models saved as files (as the CLI takes them), calibration and labelled validation data."""
    d = tmp_path_factory.mktemp("grid")
    keras_digits_cnn().save(d / "cnn.keras")
    keras_digits_mlp().save(d / "mlp.keras")
    x, y = digits()
    np.save(d / "cal.npy", x[:64])
    np.savez(d / "val.npz", x=x[N_TRAIN:], y=y[N_TRAIN:])
    (d / "corrupt.keras").write_bytes(b"PK\x03\x04 not a keras archive")
    return {"cnn": d / "cnn.keras", "mlp": d / "mlp.keras", "corrupt": d / "corrupt.keras", "cal": d / "cal.npy",
            "val": d / "val.npz"}


def _sweep(grid: dict[str, Path], out: Path, **kw: Any) -> edgemp.SweepResult:
    return edgemp.sweep([grid["cnn"], grid["mlp"]], ("fp16", "int8"), ("tflite",), grid["cal"], grid["val"], out,
                        progress=False, **FAST, **kw)


def _tflite_digests(out: Path) -> dict[str, str]:
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.rglob("*.tflite"))}


def test_two_models_by_two_precisions(grid: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    r = _sweep(grid, out)
    assert r.passed and len(r.rows) == 4
    assert [(row["model"], row["precision"]) for row in r.rows] == [("cnn", "fp16"), ("cnn", "int8"),
                                                                    ("mlp", "fp16"), ("mlp", "int8")]
    for row in r.rows:
        cell = out / row["model"] / row["precision"]
        report = json.loads((out / row["report"]).read_text())
        assert (out / row["report"]).parent == cell and report["precision"] == row["precision"]
        assert report["passed"] and list(cell.glob("*.report.md")) and len(list(cell.glob("*.tflite"))) == 1
        assert row["bytes"]["tflite"] == report["artifacts"][0]["bytes"] > 0
        assert row["accuracy"]["metric"] == "top1" and row["accuracy"]["value"] > 0.8
        assert row["fidelity"]["sqnr_db"] > 10 and row["float_layers"] is None and row["wall_s"] > 0
    # int8 is about a quarter of fp16's size for the same model (fp16 half of fp32)
    assert r.rows[1]["bytes"]["tflite"] < 0.75 * r.rows[0]["bytes"]["tflite"]
    table = json.loads((out / "sweep.json").read_text())
    assert table["passed"] and len(table["cells"]) == 4 and table["executor"] == "local"
    md = (out / "sweep.md").read_text()
    assert md.count("| pass |") == 4 and "tflite bytes" in md and "All passed" in md
    # the table is never silently replaced; force does
    with pytest.raises(errors.OutputExistsError, match="--force"):
        _sweep(grid, out)
    assert json.loads((out / "sweep.json").read_text()) == table


def test_a_failing_cell_is_a_failed_row_and_exit_code_3(grid: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    r = CliRunner().invoke(main, ["sweep", str(grid["corrupt"]), str(grid["mlp"]), "-p", "fp16", "-c",
                                  str(grid["cal"]), "--validation", str(grid["val"]), "-o", str(out),
                                  "--latency-runs", "1", "--no-progress"])
    assert r.exit_code == EXIT_GATE_FAILED, r.output
    table = json.loads((out / "sweep.json").read_text())
    bad, good = table["cells"]
    assert not table["passed"] and not bad["passed"] and good["passed"]
    assert bad["reason"].startswith("ModelLoadError") and "corrupt.keras" in bad["reason"]
    assert bad["report"] is None and bad["bytes"] == {} and good["bytes"]["tflite"] > 0
    assert "1 of 2 FAILED" in r.output and "corrupt / fp16: ModelLoadError" in r.output
    assert (out / "mlp" / "fp16").is_dir() and not (out / "corrupt" / "fp16").exists()


def test_bad_grids_are_refused_before_any_work(grid: dict[str, Path], tmp_path: Path) -> None:
    def call(models: Any = (grid["mlp"],), precisions: Any = ("fp16",), **kw: Any) -> Any:
        return edgemp.sweep(models, precisions, calibration=grid["cal"], output_dir=tmp_path / "o", **kw)

    with pytest.raises(errors.InputError, match=r"write \["):
        call(str(grid["mlp"]))
    with pytest.raises(errors.ModelLoadError, match="does not exist"):
        call([tmp_path / "missing.keras"])
    with pytest.raises(errors.UnknownPrecisionError, match="int8"):
        call(precisions=("int3",))
    with pytest.raises(errors.InputError, match="once"):
        call(precisions=("fp16", "fp16"))
    with pytest.raises(errors.InputError, match="unknown target"):
        call(targets=("tflight",))
    with pytest.raises(errors.CalibrationError, match="int8"):
        edgemp.sweep([grid["mlp"]], ("fp16", "int8"), output_dir=tmp_path / "o")
    with pytest.raises(errors.InputError, match="share the name"):
        call([grid["mlp"], grid["mlp"]])
    with pytest.raises(errors.InputError, match="strict|name"):
        call(name="x")
    with pytest.raises(errors.InputError, match="executor='local'"):
        call([keras_digits_mlp()], executor="ray")
    with pytest.raises(errors.InputError, match="executor='ray'"):
        call(ray_address="auto")
    with pytest.raises(errors.InputError, match="num_workers.*executor='ray'"):
        call(num_workers=2)
    assert not (tmp_path / "o").exists()


def test_missing_ray_names_the_extra(grid: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # as if edgemp[ray] were not installed
    with pytest.raises(errors.MissingDependencyError, match=r"pip install 'edgemp\[ray\]'"):
        edgemp.sweep([grid["mlp"]], ("fp16",), output_dir=tmp_path / "o", executor="ray")
    r = CliRunner().invoke(main, ["sweep", str(grid["mlp"]), "-p", "fp16", "-o", str(tmp_path / "o"),
                                  "--executor", "ray"])
    assert r.exit_code == 2 and "edgemp[ray]" in r.output
    assert not (tmp_path / "o").exists()


# -- slow tier: a local Ray with 2 workers, shared by the tests below --------------------------------------------------
@pytest.fixture(scope="module")
def ray_2_workers() -> Any:
    with ray_session(None, 2) as ray:
        yield ray


def _raises(item: int) -> int:
    if item == 1:
        raise ValueError(f"item {item} is bad")
    return item * 10


def _dies_once(marker: str) -> int:
    """Kills its worker process on the first attempt (no marker yet), succeeds on the retry."""
    if not os.path.exists(marker):
        Path(marker).touch()
        os._exit(1)
    return os.getpid()


def _sleeps(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@pytest.mark.slow
def test_ray_gives_the_serial_table_and_bytes(grid: dict[str, Path], tmp_path: Path, ray_2_workers: Any) -> None:
    serial = _sweep(grid, tmp_path / "serial")
    on_ray = _sweep(grid, tmp_path / "ray", executor="ray", num_workers=2)
    assert on_ray.summary["executor"] == "ray" and on_ray.passed
    assert [{k: row[k] for k in STABLE} for row in on_ray.rows] == [{k: row[k] for k in STABLE} for row in serial.rows]
    digests = _tflite_digests(tmp_path / "serial")
    assert len(digests) == 4 and _tflite_digests(tmp_path / "ray") == digests
    assert ray_2_workers.is_initialized()  # the session the application started is left running


@pytest.mark.slow
def test_ray_reports_a_task_that_raises(ray_2_workers: Any) -> None:
    t0 = time.perf_counter()
    outcomes = run_tasks(_raises, [0, 1, 2], num_workers=2, timeout=120)
    assert [o.value for o in outcomes] == [0, None, 20]
    assert outcomes[1].error == "ValueError: item 1 is bad" and outcomes[0].ok and outcomes[2].ok
    slow = run_tasks(_sleeps, [0.0, 60.0], num_workers=2, timeout=5)
    assert slow[0].ok and not slow[1].ok and slow[1].error.startswith("TimeoutError")
    assert time.perf_counter() - t0 < 45


@pytest.mark.slow
def test_ray_retries_a_worker_that_died(tmp_path: Path, ray_2_workers: Any) -> None:
    marker = str(tmp_path / "died-once")
    (outcome,) = run_tasks(_dies_once, [marker], num_workers=2, retries=1, timeout=120)
    assert outcome.ok and Path(marker).exists() and outcome.value != os.getpid()
    Path(marker).unlink()
    (outcome,) = run_tasks(_dies_once, [marker], num_workers=2, retries=0, timeout=120)
    assert not outcome.ok and outcome.error.startswith("WorkerCrashedError") and "died" in outcome.error
