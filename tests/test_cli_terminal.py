"""What a user sees at the terminal: no framework noise, one line per error, the right exit codes, Ctrl-C, nonsense
options refused, every option documented, wide tables in files, and `source scripts/env.sh` leaving the shell alone.

The subprocess tests run `python -m edgemp` with a clean environment (no TF_CPP_MIN_LOG_LEVEL, no EDGEMP_LOG): what a
user's shell gives it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import click
import numpy as np
import pytest
from click.testing import CliRunner

from edgemp import _quiet
from edgemp.cli import main

from .conftest import CALIBRATION, REPO, VALIDATION_FOLDER

# What the frameworks print on every run (and what a plain run must not show).
NOISE = [
    "absl::InitializeLog",
    "oneDNN custom operations",
    "cpu_feature_guard",
    "XNNPACK delegate",
    "Failed to load _ML",
    "has not been tested with coremltools",
    "is not supported. Minimum required version",
    "Reading SavedModel",
    "Saved artifact at",
    "Captures:",
    "_pytree.py",
]


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "EDGEMP_LOG", "COLUMNS")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env | extra


def _edgemp(*args: str, timeout: float = 600, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgemp", *args], capture_output=True, text=True,
                          env=_clean_env(**env), timeout=timeout)


def _noise_in(text: str) -> list[str]:
    return [n for n in NOISE if n in text]


# -- nonsense options: exit 2, a one-line "Error: ..." naming the option, no traceback -------------------------------
BAD_OPTIONS = [
    (["convert", "m.keras", "--max-float-layers", "-3"], "--max-float-layers"),
    (["convert", "m.keras", "--max-float-layers", "2.5"], "--max-float-layers"),
    (["convert", "m.keras", "--max-float-layers", "nan"], "--max-float-layers"),
    (["convert", "m.keras", "--latency-runs", "-1"], "--latency-runs"),
    (["convert", "m.keras", "--threads", "0"], "--threads"),
    (["convert", "m.keras", "-n", "0"], "--num-calibration-samples"),
    (["convert", "m.keras", "--max-validation-samples", "0"], "--max-validation-samples"),
    (["convert", "m.keras", "--seed", "-1"], "--seed"),
    (["convert", "m.keras", "--size", "0x0"], "--size"),
    (["convert", "m.keras", "--size", "224"], "--size"),
    (["convert", "m.keras", "--scale", "0"], "--scale"),
    (["convert", "m.keras", "--scale", "-0.5"], "--scale"),
    (["convert", "m.keras", "--scale", "inf"], "--scale"),
    (["convert", "m.keras", "--std", "0.5,0"], "--std"),
    (["convert", "m.keras", "--mean", "a,b"], "--mean"),
    (["convert", "m.keras", "--max-accuracy-drop", "2"], "--max-accuracy-drop"),
    (["convert", "m.keras", "--min-cosine", "1.5"], "--min-cosine"),
    (["convert", "m.keras", "--min-sqnr-db", "nan"], "--min-sqnr-db"),
    (["convert", "m.keras", "--delegate", "x.so", "--delegate-option", "novalue"], "--delegate-option"),
    (["bench", "m.tflite", "--runs", "-1"], "--runs"),
    (["bench", "m.tflite", "--runs", "0"], "--runs"),
    (["bench", "m.tflite", "--warmup", "-1"], "--warmup"),
    (["bench", "m.tflite", "--time-budget", "0"], "--time-budget"),
    (["bench", "m.tflite", "--threads", "0"], "--threads"),
    (["bench", "m.tflite", "--timeout", "-5"], "--timeout"),
    (["analyze", "m.keras", "-c", "cal", "-n", "0"], "--num-calibration-samples"),
    (["analyze", "m.keras", "-c", "cal", "--top", "0"], "--top"),
    (["analyze", "m.keras", "-c", "cal", "--tensor-samples", "0"], "--tensor-samples"),
    (["analyze", "m.keras", "-c", "cal", "--threads", "0"], "--threads"),
    (["validate", "m.tflite", "--max-samples", "0"], "--max-samples"),
    (["validate", "m.tflite", "--latency-runs", "-5"], "--latency-runs"),
    (["validate", "m.tflite", "--threads", "0"], "--threads"),
]


@pytest.mark.parametrize(("args", "option"), BAD_OPTIONS, ids=[" ".join(a[2:]) + f" ({a[0]})" for a, _ in BAD_OPTIONS])
def test_nonsense_option_is_refused(args: list[str], option: str) -> None:
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 2, r.output
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1 and option in errors[0], r.stderr
    assert "Traceback" not in r.output and isinstance(r.exception, SystemExit)


def test_a_bad_option_in_a_real_process_is_one_error_line() -> None:
    p = _edgemp("bench", "m.tflite", "--runs", "-1", timeout=120)
    assert p.returncode == 2 and p.stdout == ""
    assert "Error: Invalid value for '--runs': -1 is not in the range x>=1." in p.stderr.splitlines()
    assert "Traceback" not in p.stderr and "Usage: edgemp bench" in p.stderr


# -- every option says what it is for ---------------------------------------------------------------------------------
def _commands() -> list[tuple[str, click.Command]]:
    return [("edgemp", main)] + [(f"edgemp {n}", c) for n, c in sorted(main.commands.items())]


def test_every_option_has_help() -> None:
    missing = [f"{name} {p.opts[0]}" for name, cmd in _commands() for p in cmd.params
               if isinstance(p, click.Option) and not (p.help or "").strip()]
    assert not missing, f"options without --help text: {missing}"
    assert len(main.commands) >= 9


@pytest.mark.parametrize("command", sorted(main.commands))
def test_command_help(command: str) -> None:
    r = CliRunner().invoke(main, [command, "--help"])
    assert r.exit_code == 0 and "Usage:" in r.output and r.output.count("\n") > 5
    assert main.commands[command].help  # the command itself is described too


def test_python_dash_m_edgemp_works() -> None:
    p = _edgemp("--version", timeout=120)
    assert p.returncode == 0 and "version" in p.stdout and p.stderr == ""


def _patch_convert(monkeypatch: pytest.MonkeyPatch, fn: Any) -> None:
    """Replace the stage the CLI calls (the convert module; edgemp.convert is the function)."""
    import edgemp.pipeline  # noqa: F401

    monkeypatch.setattr(sys.modules["edgemp.pipeline"], "convert", fn)


# -- unexpected errors: one line and exit 1; --debug shows the traceback; EdgempError keeps its code -----------------
def _boom(*_: Any, **__: Any) -> Any:
    raise RuntimeError("boom: an internal error\nsecond line of detail")


def test_unexpected_error_is_one_line_with_a_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    _patch_convert(monkeypatch, _boom)
    r = CliRunner().invoke(main, ["convert", "m.keras", "-p", "fp32"])
    assert r.exit_code == 1
    assert r.stderr.splitlines() == ["error: unexpected RuntimeError: boom: an internal error [...]; re-run with --debug "
                                     "to see the traceback"], r.stderr
    assert "Traceback" not in r.output


def test_debug_shows_the_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    _patch_convert(monkeypatch, _boom)
    r = CliRunner().invoke(main, ["--debug", "convert", "m.keras", "-p", "fp32"])
    assert r.exit_code == 1
    assert "Traceback (most recent call last)" in r.stderr and "second line of detail" in r.stderr
    assert r.stderr.rstrip().splitlines()[-1] == "error: unexpected RuntimeError: boom: an internal error [...]"


def test_edgemp_error_keeps_its_exit_code_and_debug_adds_the_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    from edgemp.errors import CalibrationError

    def bad(*_: Any, **__: Any) -> Any:
        raise CalibrationError("no images in cal/: give a folder of images")

    _patch_convert(monkeypatch, bad)
    r = CliRunner().invoke(main, ["convert", "m.keras"])
    assert r.exit_code == CalibrationError.exit_code == 2
    assert r.stderr == "error: no images in cal/: give a folder of images\n"
    r = CliRunner().invoke(main, ["--debug", "convert", "m.keras"])
    assert r.exit_code == 2 and "Traceback" in r.stderr


def test_bad_validation_file_in_a_real_process_is_one_line(tmp_path: Path, model_path: Path) -> None:
    """A validation .npz numpy reads, with 3 labels for 8 images: one line naming the problem, exit 2."""
    x = np.random.default_rng(0).random((8, 28, 28, 1), dtype=np.float32)
    np.savez(tmp_path / "val.npz", x=x, y=np.zeros(3, np.int64))
    p = _edgemp("convert", str(model_path), "-p", "fp32", "--validation", str(tmp_path / "val.npz"), "-o",
                str(tmp_path / "o"), "--latency-runs", "0")
    assert p.returncode == 2, p.stderr
    assert p.stderr == "error: validation has 8 inputs but 3 labels; they must match one to one.\n"


_INJECTED = """
import sys
import edgemp.pipeline
def boom(*a, **k):
    raise ValueError("operands could not be broadcast together with shapes (8,10) (3,)")
sys.modules["edgemp.pipeline"].convert = boom
from edgemp.cli import main
main(prog_name="edgemp")
"""


@pytest.mark.parametrize("debug", [False, True])
def test_unexpected_error_in_a_real_process(debug: bool) -> None:
    args = ["--debug"] * debug + ["convert", "m.keras", "-p", "fp32"]
    p = subprocess.run([sys.executable, "-c", _INJECTED, *args], capture_output=True, text=True, env=_clean_env(),
                       timeout=120)
    assert p.returncode == 1 and p.stdout == ""
    last = "error: unexpected ValueError: operands could not be broadcast together with shapes (8,10) (3,)"
    if debug:
        assert p.stderr.startswith("Traceback (most recent call last):") and p.stderr.endswith(last + "\n"), p.stderr
    else:
        assert p.stderr == last + "; re-run with --debug to see the traceback\n"


def test_keyboard_interrupt_in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(*_: Any, **__: Any) -> Any:
        raise KeyboardInterrupt

    _patch_convert(monkeypatch, interrupted)
    r = CliRunner().invoke(main, ["convert", "m.keras", "-p", "fp32"])
    assert r.exit_code == 130 and r.stderr == "interrupted\n" and "Aborted" not in r.output


@pytest.mark.slow
def test_ctrl_c_during_a_conversion_exits_130_with_one_line(model_path: Path, tmp_path: Path) -> None:
    # 10^8 latency runs: whatever stage the signal lands in (import, conversion, validation, timing), the command
    # is still running; it must stop there.
    proc = subprocess.Popen([sys.executable, "-m", "edgemp", "convert", str(model_path), "-p", "fp16", "-o",
                             str(tmp_path / "o"), "--latency-runs", "100000000"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_clean_env())
    time.sleep(8)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err == "interrupted\n" and out == ""
    assert not (tmp_path / "o" / f"{model_path.stem}_fp16.tflite").exists()


# -- framework noise: none in a plain run, all of it with -v / EDGEMP_LOG=debug ---------------------------------------
@pytest.mark.slow
def test_plain_convert_prints_edgemp_output_only(model_path: Path, tmp_path: Path) -> None:
    p = _edgemp("convert", str(model_path), "-p", "int8", "-c", str(CALIBRATION), "--validation",
                str(VALIDATION_FOLDER), "-o", str(tmp_path))
    assert p.returncode == 0, p.stderr
    assert p.stderr == "", p.stderr  # not one line from TensorFlow, absl or LiteRT
    assert "PASSED" in p.stdout and "wrote " in p.stdout and not _noise_in(p.stdout)
    name = f"{model_path.stem}_int8.tflite"
    assert any(name in ln and "│" in ln for ln in p.stdout.splitlines()), "table cut at 80 columns:\n" + p.stdout
    assert "…" not in p.stdout


@pytest.mark.slow
def test_coreml_conversion_prints_no_coremltools_warnings(model_path: Path, tmp_path: Path) -> None:
    p = _edgemp("convert", str(model_path), "-p", "fp16", "--coreml", "-o", str(tmp_path), "--latency-runs", "0")
    assert p.returncode == 0, p.stderr
    assert p.stderr == "", p.stderr
    assert ".mlpackage" in p.stdout and not _noise_in(p.stdout)


@pytest.mark.slow
def test_verbose_and_edgemp_log_debug_show_the_framework_output(model_path: Path, tmp_path: Path) -> None:
    p = _edgemp("-v", "convert", str(model_path), "-p", "fp16", "-o", str(tmp_path / "a"), "--latency-runs", "1")
    assert p.returncode == 0 and "absl::InitializeLog" in p.stderr and "XNNPACK delegate" in p.stderr, p.stderr
    p = _edgemp("convert", str(model_path), "-p", "fp16", "-o", str(tmp_path / "b"), "--latency-runs", "1",
                EDGEMP_LOG="debug")
    assert p.returncode == 0 and "absl::InitializeLog" in p.stderr and "Reading SavedModel" in p.stderr, p.stderr


@pytest.mark.slow
def test_python_api_import_is_quiet_and_edgemp_log_debug_restores_it() -> None:
    # `import coremltools` alone segfaults in this stack (it loads TensorFlow, then torch's Triton): the process settles
    # the order first, as edgemp does before it imports either (import edgemp itself leaves Triton alone)
    code = ("import edgemp\nfrom edgemp._compat import prepare_torch_import\nprepare_torch_import()\n"
            "import tensorflow, coremltools")
    quiet = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_clean_env(), timeout=300)
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr
    loud = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env=_clean_env(EDGEMP_LOG="debug"))
    assert loud.returncode == 0 and "absl::InitializeLog" in loud.stderr and "coremltools" in loud.stderr


# -- the filters themselves: noise goes, everything else stays ------------------------------------------------------
@pytest.mark.parametrize(("line", "noise"), [
    ("WARNING: All log messages before absl::InitializeLog() is called are written to STDERR", True),
    ("I0000 00:00:1796137663.347332   26315 port.cc:153] oneDNN custom operations are on. You may see ...", True),
    ("W0000 00:00:1796138599.111384   12048 tf_tfl_flatbuffer_helpers.cc:364] Ignored output_format.", True),
    ("INFO: Created TensorFlow Lite XNNPACK delegate for CPU.", True),
    ("E0000 00:00:1796138599.1 12048 util.cc:131] something failed", False),  # errors pass
    ("F0000 00:00:1796138599.1 12048 op.cc:1] Check failed: x == y", False),
    ("error: 'tf.MatrixInverse' op is neither a custom op nor a flex op", False),
    ("Traceback (most recent call last):", False),
    ("Segmentation fault", False),
])
def test_noise_patterns(line: str, noise: bool) -> None:
    assert _quiet.is_noise(line.encode()) is noise


def test_captured_fd2_keeps_what_is_not_noise(capfd: pytest.CaptureFixture[str]) -> None:
    with _quiet.captured_fd2():
        os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\nE0000 a real error\n")
    assert capfd.readouterr().err == "E0000 a real error\n"
    with pytest.raises(ValueError), _quiet.captured_fd2():
        os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n")
        raise ValueError  # on failure everything comes back, noise included: nothing is lost
    assert "XNNPACK" in capfd.readouterr().err


def test_filtered_fd2_passes_a_crash_s_last_words() -> None:
    code = ("import os, sys\nfrom edgemp import _quiet\nwith _quiet.filtered_fd2():\n"
            "    sys.stderr.write('edgemp says\\n')\n"
            "    os.write(2, b'INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\\nF0000 check failed: x\\n')\n"
            "    os.abort()\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_clean_env(), timeout=120)
    assert p.returncode == -signal.SIGABRT
    assert "edgemp says" in p.stderr and "F0000 check failed: x" in p.stderr and "XNNPACK" not in p.stderr


# -- the report: latency 0 means not measured (null, not "nan"); tables are not cut in files -------------------------
@pytest.fixture(scope="module")
def fp16_no_latency(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    out = tmp_path_factory.mktemp("fp16")
    r = CliRunner().invoke(main, ["convert", str(model_path), "-p", "fp16", "-o", str(out), "--latency-runs", "0",
                                  "--json"])
    assert r.exit_code == 0, r.output
    return r, out


def test_latency_runs_0_is_not_measured_not_nan(fp16_no_latency: tuple[Any, Path]) -> None:
    r, _ = fp16_no_latency
    assert "nan" not in r.stdout.lower()
    lat = json.loads(r.stdout)["validation"]["latency"]
    assert lat["runs"] == 0 and lat["median_ms"] is None and lat["p90_ms"] is None and lat["mean_ms"] is None


def test_inspect_table_is_not_cut_when_not_a_terminal(fp16_no_latency: tuple[Any, Path],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)  # pytest-xdist's workers have it set; it wins over the wide default
    _, out = fp16_no_latency
    tflite = next(out.glob("*_fp16.tflite"))
    r = CliRunner().invoke(main, ["inspect", str(tflite)])
    assert r.exit_code == 0 and "…" not in r.output
    assert max(len(ln) for ln in r.output.splitlines()) > 80  # the I/O table's full width, as a terminal would show it


# -- Keras files with code: refused with the reason, loadable with --unsafe-load ------------------------------------
@pytest.fixture(scope="module")
def lambda_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from edgemp.sources.keras import import_tf

    import_tf()
    import keras

    d = tmp_path_factory.mktemp("lambda")
    inp = keras.Input((4,), name="x")
    model = keras.Model(inp, keras.layers.Lambda(lambda t: t * 2.0)(keras.layers.Dense(3)(inp)))
    paths = {s: d / f"lam.{s}" for s in ("keras", "h5")}
    for p in paths.values():
        model.save(p)
    return paths


@pytest.mark.parametrize("suffix", ["keras", "h5"])
def test_lambda_model_is_refused_with_the_reason_and_the_way_out(lambda_models: dict[str, Path], suffix: str,
                                                                tmp_path: Path) -> None:
    r = CliRunner().invoke(main, ["convert", str(lambda_models[suffix]), "-p", "fp32", "-o", str(tmp_path)])
    assert r.exit_code == 2, r.output
    assert "contains Python code" in r.stderr and "--unsafe-load" in r.stderr and "corrupt" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())


def test_unsafe_load_converts_with_a_warning(lambda_models: dict[str, Path], tmp_path: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    r = CliRunner().invoke(main, ["convert", str(lambda_models["keras"]), "-p", "fp32", "-o", str(tmp_path),
                                  "--unsafe-load", "--latency-runs", "0"])
    assert r.exit_code == 0, r.output
    assert any("executed" in rec.getMessage() and rec.levelname == "WARNING" for rec in caplog.records)
    assert (tmp_path / "lam_fp32.tflite").exists()


def test_python_api_unsafe_load(lambda_models: dict[str, Path]) -> None:
    from edgemp.errors import ModelLoadError
    from edgemp.sources import load_source
    from edgemp.sources.keras import load_keras

    with pytest.raises(ModelLoadError, match="unsafe_load=True"):
        load_keras(lambda_models["h5"])
    assert load_keras(lambda_models["h5"], unsafe_load=True).layers()[-1][1] == "Lambda"
    assert load_source(lambda_models["keras"], unsafe_load=True).layers()[-1][1] == "Lambda"


# -- the demo says what it does ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("cached", [True, False])
def test_demo_says_loading_or_training(cached: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgemp import demo as demo_data

    monkeypatch.setenv("EDGEMP_CACHE", str(tmp_path))
    if cached:
        (tmp_path / "models").mkdir()
        (tmp_path / "models" / f"fashion_cnn_{demo_data.MODEL_VERSION}_e1.keras").write_bytes(b"")
    monkeypatch.setattr(demo_data, "example_model_path", lambda: tmp_path / "m.keras")
    monkeypatch.setattr(demo_data, "fashion_mnist", lambda split: (None, None))
    fake = SimpleNamespace(report=SimpleNamespace(render=lambda console: None), artifacts={}, passed=True)
    _patch_convert(monkeypatch, lambda *a, **k: fake)
    r = CliRunner().invoke(main, ["demo", "-p", "fp16", "-o", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    assert ("loading the cached example model" in r.output) is cached
    assert ("training the example model (first run" in r.output) is not cached


# -- `source scripts/env.sh` leaves the user's shell as it was ----------------------------------------------------------
@pytest.fixture()
def fake_cache(tmp_path: Path) -> Path:
    """An EDGEMP_CACHE where env.sh finds everything set up (nothing is installed, nothing is repointed): its venv's
    python is a stub, its activate script only sets VIRTUAL_ENV and PATH."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    deps = json.dumps([project["dependencies"], project.get("optional-dependencies", {})], sort_keys=True)
    extras = re.search(r'EDGEMP_EXTRAS:-([^}]+)}', (REPO / "scripts" / "env.sh").read_text()).group(1)
    key = hashlib.sha256(f"{deps}\n{extras}\n".encode()).hexdigest()[:12]
    cache = tmp_path / "cache"
    venv = cache / f"venv-{key}"
    (venv / "bin").mkdir(parents=True)
    (venv / ".complete").touch()
    (venv / "bin" / "python").write_text("#!/bin/sh\nexit 0\n")
    (venv / "bin" / "python").chmod(0o755)
    (venv / "bin" / "activate").write_text(f'VIRTUAL_ENV="{venv}"\nexport VIRTUAL_ENV\nPATH="$VIRTUAL_ENV/bin:$PATH"\n')
    data = cache / "data" / "usr" / "share" / "datasets" / "fashion-mnist"
    data.mkdir(parents=True)
    (data / "t10k-labels-idx1-ubyte.gz").touch()
    (cache / "legacy-py38").mkdir()
    (cache / "legacy-py38" / ".complete").touch()
    stubs = tmp_path / "stubs"  # never apt-get from a test
    stubs.mkdir()
    for tool in ("apt-get", "kotlinc"):
        (stubs / tool).write_text("#!/bin/sh\nexit 1\n")
        (stubs / tool).chmod(0o755)
    return cache


def _bash(script: str, cache: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEMP_") and k != "VIRTUAL_ENV"}
    env |= {"EDGEMP_CACHE": str(cache), "PATH": f"{cache.parent / 'stubs'}{os.pathsep}{env['PATH']}"}
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env, cwd=REPO, timeout=120)


def test_sourcing_env_sh_keeps_the_shell_options(fake_cache: Path) -> None:
    p = _bash('set +e; shopt -u nullglob; before="$-|$(set +o)|$(shopt -p)"; source scripts/env.sh; echo "rc=$?"; '
              'false; echo still-here; after="$-|$(set +o)|$(shopt -p)"; '
              '[ "$before" = "$after" ] && echo same-options; echo "venv=$VIRTUAL_ENV cache=$EDGEMP_CACHE"; '
              'echo "data=$EDGEMP_DATA_DIR"; echo "repo=$repo"', fake_cache)
    out = p.stdout.splitlines()
    assert p.returncode == 0 and "rc=0" in out and "still-here" in out and "same-options" in out, p.stdout + p.stderr
    assert f"cache={fake_cache}" in p.stdout and f"venv={fake_cache}/venv-" in p.stdout
    assert f"repo={REPO}" in out and f"data={fake_cache}/data" in out


def test_sourcing_env_sh_in_a_strict_shell_keeps_it_strict(fake_cache: Path) -> None:
    p = _bash('set -euo pipefail; source scripts/env.sh; echo "opts=$-"; shopt -qo pipefail && echo pipefail', fake_cache)
    assert p.returncode == 0 and "pipefail" in p.stdout.split() and re.search(r"opts=\S*e\S*u", p.stdout), p.stderr


def test_env_sh_set_up_error_is_loud_but_does_not_close_the_shell(fake_cache: Path) -> None:
    venv = next(fake_cache.glob("venv-*"))
    (venv / "bin" / "python").write_text("#!/bin/sh\necho 'pip: resolution impossible' >&2\nexit 3\n")
    p = _bash('set +e; source scripts/env.sh; echo "rc=$?"; echo still-here; echo "venv=${VIRTUAL_ENV:-none}"', fake_cache)
    assert "rc=1" in p.stdout and "still-here" in p.stdout and "venv=none" in p.stdout
    assert "pip: resolution impossible" in p.stderr and "set-up failed" in p.stderr
    # scripts/test.sh and scripts/demo.sh (set -euo pipefail, then source): the set-up error stops them
    p = _bash('set -euo pipefail; source scripts/env.sh; echo NOT-REACHED', fake_cache)
    assert p.returncode == 1 and "NOT-REACHED" not in p.stdout and "set-up failed" in p.stderr
    p = _bash("bash scripts/env.sh; echo rc=$?", fake_cache)
    assert "rc=1" in p.stdout
