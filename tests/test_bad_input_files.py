"""Outputs: nothing lost, nothing silently wrong, no tracebacks.

One matrix of cases (CASES, below), each a function `case(env)`. Every case asserts the exception class (API) or the
exit code (CLI, through click's CliRunner: no traceback in the output and no exception other than SystemExit), a
fragment of the message, and that nothing was lost or half-written: the files that were there before are
byte-identical (`env.snapshot()` / `env.unchanged()`) and no temp file is left (`env.no_temp()`).

Real failures where the sandbox allows them: a full disk is a 64 KiB tmpfs filled with a file of the user's (mount
needs root; the cases skip with the reason otherwise), a read-only file system a read-only tmpfs, EFBIG the file size
limit (RLIMIT_FSIZE in a subprocess), EACCES a folder without write permission for a process without
CAP_DAC_OVERRIDE (setpriv). EDQUOT (tmpfs quotas are not available here), EIO and the rest of the errno matrix are
raised by a patched os.fsync.
"""

from __future__ import annotations

import errno
import importlib
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import edgemp
from edgemp import _io, errors
from edgemp.cli import main

REPO = Path(__file__).resolve().parents[1]
TEMP_MARKS = (".tmp", ".edgemp-bundle-")


def _tiny_keras():  # type: ignore[no-untyped-def]
    """The untrained tiny model of conftest.tiny_model (10 classes), built here for module-scoped fixtures."""
    import keras

    inp = keras.Input((28, 28, 1), name="image")
    x = keras.layers.Conv2D(4, 3, activation="relu")(inp)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, keras.layers.Dense(10)(x), name="tiny")


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One fp32 conversion of the tiny model, its .keras file, and bundles of it (android, jetson zips, a folder)."""
    root = tmp_path_factory.mktemp("shared")
    model = _tiny_keras()
    keras_path = root / "tiny.keras"
    model.save(keras_path)
    result = edgemp.convert(model, "fp32", output_dir=root / "conv", latency_runs=1, progress=False)
    bundles = root / "bundles"
    return {"model": model, "keras": keras_path, "result": result, "report": result.artifacts["report_json"],
            "android": edgemp.package(result, "android", bundles).path,
            "jetson": edgemp.package(result, "jetson", bundles).path,
            "dir": edgemp.package(result, "android", bundles / "dir", as_zip=False).path}


class Env:
    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shared: dict[str, Any],
                 caplog: pytest.LogCaptureFixture) -> None:
        self.tmp, self.mp, self.s, self.caplog = tmp_path, monkeypatch, shared, caplog
        self.mounts: list[Path] = []
        self._before: dict[str, bytes] = {}

    # -- what is there ----------------------------------------------------------------------------------------------
    def snapshot(self, root: Path | None = None) -> None:
        """Remember every file under root (default: the test's folder), to check later that it is byte-identical."""
        self._before = _files(root or self.tmp)
        self._root = root or self.tmp

    def unchanged(self) -> None:
        after = _files(self._root)
        missing = [p for p in self._before if p not in after]
        changed = [p for p in self._before if p in after and after[p] != self._before[p]]
        assert not missing and not changed, f"lost: {missing}, changed: {changed}"

    def no_temp(self, root: Path | None = None) -> None:
        left = [p for p in (root or self.tmp).rglob("*") if any(m in p.name for m in TEMP_MARKS)]
        assert not left, f"temp files left: {left}"

    # -- running ----------------------------------------------------------------------------------------------------
    def cli(self, *args: Any, code: int, fragment: str | None = None) -> Any:
        r = CliRunner().invoke(main, [str(a) for a in args])
        assert "Traceback" not in r.output, r.output
        assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
        assert r.exit_code == code, r.output
        if fragment:
            assert fragment in r.output, r.output
        return r

    def raises(self, exc: type[BaseException], fragment: str, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        with pytest.raises(exc) as info:
            fn(*args, **kw)
        assert fragment in str(info.value), str(info.value)
        if isinstance(info.value, errors.InputError):
            assert info.value.exit_code == 2
        return info.value

    def copy(self, key: str, dest: Path | None = None) -> Path:
        src = self.s[key]
        dest = dest or self.tmp / src.name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dest)
        return dest

    # -- file systems -----------------------------------------------------------------------------------------------
    def tmpfs(self, name: str = "fs", options: str = "size=64k") -> Path:
        d = self.tmp / name
        d.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(d)], capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip() or 'not root'}): the real disk-full case "
                        "needs root; the errno matrix covers it with a patched os.fsync")
        self.mounts.append(d)
        return d

    def full_tmpfs(self) -> Path:
        """A 64 KiB tmpfs filled up by a file of the user's (kept byte-identical by every case that uses it)."""
        d = self.tmpfs()
        _fill(d / "users_data.bin")
        return d

    def close(self) -> None:
        for d in reversed(self.mounts):
            subprocess.run(["umount", "-l", str(d)], capture_output=True)


def _fill(path: Path) -> None:
    """Write `path` until the file system is full."""
    with open(path, "wb", buffering=0) as fh:
        try:
            while True:
                fh.write(b"u" * 1024)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file() and not p.is_symlink()}


@pytest.fixture()
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shared: dict[str, Any], caplog: pytest.LogCaptureFixture):  # type: ignore[no-untyped-def]
    e = Env(tmp_path, monkeypatch, shared, caplog)
    yield e
    e.close()


def _race(n: int, fn: Callable[[int], Any]) -> list[tuple[str, Any]]:
    """Run fn(i) in n threads released together; returns ("won", value) or ("lost", exception) per thread."""
    barrier = threading.Barrier(n)
    out: list[tuple[str, Any]] = [("?", None)] * n

    def run(i: int) -> None:
        barrier.wait()
        try:
            out[i] = ("won", fn(i))
        except errors.OutputExistsError as exc:
            out[i] = ("lost", exc)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            out[i] = ("error", exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(k in ("won", "lost") for k, _ in out), out
    return out


def _nested_manifest(depth: int = 100_000) -> bytes:
    return b'{"files": ' + b"[" * depth + b"]" * depth + b"}"


def _with_manifest(src: Path, dest: Path, manifest: bytes) -> Path:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dest, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info, manifest if info.filename == "manifest.json" else zin.read(info))
    return dest


# == DATA LOSS: unpack --force ======================================================================================
def unpack_force_into_a_users_project_folder(env: Env) -> None:
    proj = env.tmp / "project"
    (proj / "src").mkdir(parents=True)
    (proj / "src" / "main.py").write_text("print('mine')\n")
    (proj / "README.md").write_text("my project\n")
    env.snapshot()
    env.cli("unpack", env.s["android"], "-o", proj, "--force", code=2, fragment="not a bundle edgemp wrote")
    env.unchanged()
    env.no_temp()


def unpack_force_over_a_regular_file(env: Env) -> None:
    f = env.tmp / "assets"
    f.write_text("a file of mine\n")
    env.snapshot()
    env.cli("unpack", env.s["android"], "-o", f, "--force", code=2, fragment="is a file, not a folder")
    assert f.is_file()
    env.unchanged()
    env.no_temp()


def unpack_force_over_a_symlink(env: Env) -> None:
    real = env.tmp / "real"
    real.mkdir()
    (real / "keep.txt").write_text("mine")
    (env.tmp / "link").symlink_to(real)
    env.snapshot()
    env.raises(errors.OutputNotWritableError, "symbolic link", edgemp.unpack_bundle, env.s["android"], env.tmp / "link",
               force=True)
    env.unchanged()
    env.no_temp()


def unpack_force_keeps_files_beside_an_earlier_bundle(env: Env) -> None:
    out = env.tmp / "device"
    env.cli("unpack", env.s["jetson"], "-o", out, code=0)
    (out / "bench.json").write_text('{"results": []}')
    (out / ".venv" / "bin").mkdir(parents=True)
    (out / ".venv" / "bin" / "python").write_text("#!/bin/sh\n")
    (out / "notes.txt").write_text("my notes\n")
    mine = {k: v for k, v in _files(out).items() if k in ("bench.json", ".venv/bin/python", "notes.txt")}
    r = env.cli("unpack", env.s["jetson"], "-o", out, "--force", code=0, fragment="kept 3 entries")
    assert ".venv" in r.output and {k: v for k, v in _files(out).items() if k in mine} == mine
    m = json.loads((out / "manifest.json").read_text())
    for f in m["files"]:
        assert (out / f["path"]).stat().st_size == f["bytes"]
    env.no_temp()


def unpack_force_replaces_only_the_old_bundles_files(env: Env) -> None:
    out = env.tmp / "device"
    edgemp.unpack_bundle(env.s["jetson"], out)
    (out / "notes.txt").write_text("mine")
    b = edgemp.unpack_bundle(env.s["android"], out, force=True)  # jetson -> android: harness/run.sh were edgemp's
    assert not (out / "run.sh").exists() and not (out / "harness.py").exists()
    assert b.kept == ("notes.txt",) and (out / "notes.txt").read_text() == "mine"
    assert sorted(_files(out)) == sorted(["manifest.json", "notes.txt"] + [f["path"] for f in b.manifest["files"]])
    env.no_temp()


def unpack_force_over_a_bundle_file_you_edited(env: Env) -> None:
    out = env.tmp / "device"
    edgemp.unpack_bundle(env.s["jetson"], out)
    (out / "run.sh").write_text("#!/bin/sh\necho my tuned script\n")
    env.snapshot()
    env.raises(errors.OutputExistsError, "run.sh changed since edgemp wrote it", edgemp.unpack_bundle, env.s["jetson"],
               out, force=True)
    env.unchanged()
    env.no_temp()


def unpack_force_where_your_file_is_where_a_bundle_file_goes(env: Env) -> None:
    out = env.tmp / "device"
    edgemp.unpack_bundle(env.s["android"], out)
    (out / "harness.py").write_text("# my own harness\n")  # the jetson bundle ships a harness.py
    env.snapshot()
    env.raises(errors.OutputExistsError, "harness.py would overwrite", edgemp.unpack_bundle, env.s["jetson"], out,
               force=True)
    env.unchanged()
    env.no_temp()


def unpack_force_over_a_folder_whose_manifest_is_not_a_bundles(env: Env) -> None:
    web = env.tmp / "webapp"
    web.mkdir()
    (web / "manifest.json").write_text('{"name": "my pwa", "icons": []}')
    (web / "index.html").write_text("<html></html>")
    env.snapshot()
    env.cli("unpack", env.s["android"], "-o", web, "--force", code=2, fragment="not a valid bundle manifest")
    env.unchanged()
    env.no_temp()


def unpack_without_force_over_a_bundle(env: Env) -> None:
    out = env.tmp / "device"
    edgemp.unpack_bundle(env.s["android"], out)
    env.snapshot()
    env.cli("unpack", env.s["jetson"], "-o", out, code=2, fragment="--force")
    env.unchanged()


def unpack_into_an_empty_folder(env: Env) -> None:
    out = env.tmp / "assets"
    out.mkdir()
    b = edgemp.unpack_bundle(env.s["android"], out)
    assert edgemp.read_bundle(out).manifest == b.manifest
    env.no_temp()


def unpack_a_bundle_folder_into_itself(env: Env) -> None:
    d = env.copy("dir")
    env.snapshot()
    env.raises(errors.InputError, "inside itself", edgemp.unpack_bundle, d, d / "sub", force=True)
    env.unchanged()


# == DATA LOSS: package --force =====================================================================================
def package_force_over_a_zip_that_is_not_a_bundle(env: Env) -> None:
    out = env.tmp / "bundles"
    out.mkdir()
    with zipfile.ZipFile(out / "tiny_fp32_android.zip", "w") as zf:
        zf.writestr("thesis.tex", "years of work")
    env.snapshot()
    env.cli("package", env.s["report"], "-d", "android", "-o", out, "--force", code=2, fragment="no manifest.json")
    env.unchanged()
    env.no_temp()


def package_force_where_a_directory_is_at_the_zip_path(env: Env) -> None:
    (env.tmp / "tiny_fp32_android.zip").mkdir()
    (env.tmp / "tiny_fp32_android.zip" / "mine.txt").write_text("mine")
    env.snapshot()
    env.raises(errors.OutputNotWritableError, "a directory is where an output file should go", edgemp.package,
               env.s["result"], "android", env.tmp, force=True)
    env.unchanged()
    env.no_temp()


def package_dir_force_over_a_users_folder(env: Env) -> None:
    d = env.tmp / "tiny_fp32_android"
    d.mkdir()
    (d / "photos.txt").write_text("mine")
    env.snapshot()
    env.cli("package", env.s["report"], "-d", "android", "-o", env.tmp, "--dir", "--force", code=2,
            fragment="not a bundle edgemp wrote")
    env.unchanged()
    env.no_temp()


def package_dir_force_over_its_own_bundle_keeps_your_files(env: Env) -> None:
    b = edgemp.package(env.s["result"], "jetson", env.tmp, as_zip=False)
    (b.path / "bench.json").write_text("{}")
    again = edgemp.package(env.s["result"], "jetson", env.tmp, as_zip=False, force=True)
    assert again.kept == ("bench.json",) and (b.path / "bench.json").read_text() == "{}"
    env.no_temp()


def package_force_over_its_own_zip(env: Env) -> None:
    first = edgemp.package(env.s["result"], "android", env.tmp).path.read_bytes()
    assert edgemp.package(env.s["result"], "android", env.tmp, force=True).path.read_bytes() == first
    env.no_temp()


# == DATA LOSS: races (exactly one writer wins, the other gets OutputExistsError, nothing half-written) ===========
def race_two_writers_into_one_file(env: Env) -> None:
    target = env.tmp / "m.tflite"
    payloads = [bytes([i]) * 8_000_000 for i in (1, 2)]
    out = _race(2, lambda i: _io.write_atomic(target, payloads[i], overwrite=False))
    assert sorted(k for k, _ in out) == ["lost", "won"], out
    winner = next(i for i, (k, _) in enumerate(out) if k == "won")
    assert target.read_bytes() == payloads[winner]
    assert "refusing to overwrite" in str(next(v for k, v in out if k == "lost"))
    env.no_temp()


def race_two_writers_into_one_folder(env: Env) -> None:
    target = env.tmp / "m.mlpackage"

    def save(i: int) -> Callable[[Path], None]:
        def write(p: Path) -> None:
            p.mkdir()
            for j in range(50):
                (p / f"w{j}.bin").write_bytes(bytes([i]) * 20_000)
        return write

    out = _race(2, lambda i: _io.save_dir_atomic(target, save(i), overwrite=False))
    assert sorted(k for k, _ in out) == ["lost", "won"], out
    winner = next(i for i, (k, _) in enumerate(out) if k == "won")
    assert sorted(p.name for p in target.iterdir()) == sorted(f"w{j}.bin" for j in range(50))
    assert all(p.read_bytes() == bytes([winner]) * 20_000 for p in target.iterdir())
    env.no_temp()


def race_two_packages_past_the_early_check(env: Env) -> None:
    from edgemp.bundle import writer

    env.mp.setattr(writer, "check_overwrite", lambda paths, force: None)  # both got past it: the write must hold
    out = _race(2, lambda i: edgemp.package(env.s["result"], "android", env.tmp,
                                            class_names=[f"c{i}_{k}" for k in range(10)]))
    assert sorted(k for k, _ in out) == ["lost", "won"], out
    won = next(v for k, v in out if k == "won")
    assert edgemp.read_bundle(won.path).manifest == won.manifest
    env.no_temp()


def race_two_unpacks_into_one_new_folder(env: Env) -> None:
    out_dir = env.tmp / "device"
    out = _race(2, lambda i: edgemp.unpack_bundle(env.s["jetson" if i else "android"], out_dir))
    assert sorted(k for k, _ in out) == ["lost", "won"], out
    won = next(v for k, v in out if k == "won")
    assert edgemp.read_bundle(out_dir).manifest == won.manifest
    env.no_temp()


def convert_that_loses_the_race_after_its_check(env: Env) -> None:
    conv = importlib.import_module("edgemp.pipeline")  # the module (edgemp.convert is also the function)

    first = edgemp.convert(env.s["model"], "fp32", output_dir=env.tmp / "o", latency_runs=1, progress=False)
    env.snapshot()
    env.mp.setattr(conv, "check_overwrite", lambda paths, force: None)  # as if it had checked before `first` wrote
    env.raises(errors.OutputExistsError, "appeared while edgemp was writing", edgemp.convert, env.s["model"], "fp32",
               output_dir=env.tmp / "o", latency_runs=1, progress=False)
    env.unchanged()
    assert first.artifacts["tflite"].exists()
    env.no_temp()


def race_two_convert_processes(env: Env) -> None:
    code = ("import importlib, sys\nc = importlib.import_module('edgemp.pipeline')\nc.check_overwrite = lambda paths, force: None\n"
            "from edgemp.cli import main\nmain(['convert', sys.argv[1], '-p', 'fp32', '-o', sys.argv[2], "
            "'--latency-runs', '1'])")
    envv = os.environ | {"TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(env.s["keras"]), str(env.tmp / "o")], env=envv,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=600), p.stdout.read() + p.stderr.read()) for p in procs]  # type: ignore[union-attr]
    assert sorted(c for c, _ in results) == [0, 2], results
    assert "refusing to overwrite" in next(o for c, o in results if c == 2)
    assert all("Traceback" not in o for _, o in results)
    report = json.loads((env.tmp / "o" / "tiny_fp32.report.json").read_text())
    assert report["artifacts"][0]["sha256"] == __import__("hashlib").sha256(
        (env.tmp / "o" / "tiny_fp32.tflite").read_bytes()).hexdigest()
    env.no_temp()


def analyze_writes_all_or_nothing(env: Env) -> None:
    import numpy as np

    an = importlib.import_module("edgemp.analysis")
    out = env.tmp / "a"
    out.mkdir()
    (out / "tiny_sensitivity.png").write_bytes(b"my own plot")  # appeared after the check: nothing may be written
    env.snapshot()
    env.mp.setattr(an, "check_overwrite", lambda paths, force: None)
    cal = np.random.default_rng(0).random((8, 28, 28, 1), dtype=np.float32)
    env.raises(errors.OutputExistsError, "tiny_sensitivity.png", edgemp.analyze, env.s["model"], cal, output_dir=out,
               num_calibration_samples=8, tensor_samples=4, progress=False)
    env.unchanged()
    assert sorted(p.name for p in out.iterdir()) == ["tiny_sensitivity.png"]


# == DATA LOSS: --force and a failing gate ===========================================================================
def convert_force_with_a_failing_gate_keeps_the_good_artifact(env: Env) -> None:
    good = edgemp.convert(env.s["model"], "fp16", output_dir=env.tmp, latency_runs=1, progress=False)
    assert good.passed
    env.snapshot()
    with env.caplog.at_level(logging.WARNING, logger="edgemp.pipeline"):
        bad = edgemp.convert(env.s["model"], "fp16", output_dir=env.tmp, latency_runs=1, progress=False, force=True,
                             min_sqnr_db=1000)
    assert not bad.passed
    env.unchanged()
    assert bad.artifacts["tflite"] == env.tmp / "tiny_fp16.failed.tflite"
    assert bad.artifacts["report_json"] == env.tmp / "tiny_fp16.failed.report.json"
    assert json.loads(bad.artifacts["report_json"].read_text())["artifacts"][0]["path"] == str(bad.artifacts["tflite"])
    assert "tiny_fp16.failed.tflite" in env.caplog.text and "FAILED" in env.caplog.text
    env.no_temp()


def cli_convert_force_with_a_failing_gate(env: Env) -> None:
    env.cli("convert", env.s["keras"], "-p", "fp16", "-o", env.tmp / "o", "--latency-runs", "1", code=0)
    env.snapshot(env.tmp / "o")
    env.cli("convert", env.s["keras"], "-p", "fp16", "-o", env.tmp / "o", "--latency-runs", "1", "--force",
            "--min-sqnr-db", "1000", code=3, fragment="tiny_fp16.failed.tflite")
    env.unchanged()
    env.no_temp()


def convert_failing_without_earlier_outputs_uses_the_plain_names(env: Env) -> None:
    bad = edgemp.convert(env.s["model"], "fp16", output_dir=env.tmp, latency_runs=1, progress=False, min_sqnr_db=1000)
    assert not bad.passed and bad.artifacts["tflite"] == env.tmp / "tiny_fp16.tflite"
    env.no_temp()


# == TRACEBACKS: write errors =======================================================================================
def _errno_case(code: int, fragment: str) -> Callable[[Env], None]:
    def case(env: Env) -> None:
        target = env.tmp / "m.tflite"
        target.write_bytes(b"previous good model")
        (env.tmp / "other.txt").write_text("mine")
        env.snapshot()

        def fail(fd: int) -> None:
            raise OSError(code, os.strerror(code))

        env.mp.setattr(_io.os, "fsync", fail)
        for overwrite in (True, False):
            err = env.raises(errors.OutputNotWritableError, fragment, _io.write_all_atomic,
                             {target: b"new" * 1000, env.tmp / "new.report.json": "{}"}, overwrite=overwrite)
            assert str(target) in str(err) and errno.errorcode[code] in str(err)
        env.unchanged()
        assert sorted(p.name for p in env.tmp.iterdir()) == ["m.tflite", "other.txt"]
    case.__name__ = f"write_error_{errno.errorcode[code]}"
    return case


ERRNO_CASES = [_errno_case(c, f) for c, f in [
    (errno.ENOSPC, "the disk is full"), (errno.EDQUOT, "quota"), (errno.EROFS, "read-only"),
    (errno.EACCES, "permission denied"), (errno.ENAMETOOLONG, "too long"), (errno.EISDIR, "a directory is where"),
    (errno.EFBIG, "file size limit"), (errno.EIO, "choose another output directory")]]


def disk_full_during_convert(env: Env) -> None:
    fs = env.full_tmpfs()
    env.snapshot(fs)
    env.cli("convert", env.s["keras"], "-p", "fp32", "-o", fs / "dist", "--latency-runs", "1", code=2,
            fragment="the disk is full")
    env.unchanged()
    assert sorted(p.name for p in fs.iterdir()) == ["users_data.bin"]  # no temp file, no half-set, no empty folder


def disk_full_during_package(env: Env) -> None:
    fs = env.full_tmpfs()
    env.snapshot(fs)
    env.cli("package", env.s["report"], "-d", "jetson", "-o", fs, code=2, fragment="the disk is full")
    env.cli("package", env.s["report"], "-d", "jetson", "-o", fs, "--dir", code=2, fragment="the disk is full")
    env.unchanged()
    assert sorted(p.name for p in fs.iterdir()) == ["users_data.bin"]


def disk_full_during_unpack(env: Env) -> None:
    fs = env.full_tmpfs()
    env.snapshot(fs)
    env.cli("unpack", env.s["jetson"], "-o", fs / "device", code=2, fragment="the disk is full")
    env.unchanged()
    assert sorted(p.name for p in fs.iterdir()) == ["users_data.bin"]


def disk_full_during_unpack_force_over_a_bundle(env: Env) -> None:
    fs = env.tmpfs(options="size=96k")
    edgemp.unpack_bundle(env.s["android"], fs / "device")
    (fs / "device" / "notes.txt").write_text("mine")
    _fill(fs / "filler.bin")
    env.snapshot(fs)
    env.raises(errors.OutputNotWritableError, "the disk is full", edgemp.unpack_bundle, env.s["jetson"], fs / "device",
               force=True)
    env.unchanged()  # the old bundle is still there, complete
    env.no_temp(fs)


def read_only_file_system(env: Env) -> None:
    ro = env.tmpfs("ro", "ro,size=64k")
    env.raises(errors.OutputNotWritableError, "read-only file system", edgemp.convert, env.s["model"], "fp32",
               output_dir=ro / "dist")
    env.raises(errors.OutputNotWritableError, "read-only", edgemp.unpack_bundle, env.s["android"], ro / "device")
    assert not any(ro.iterdir())


def file_size_limit_efbig(env: Env) -> None:
    code = ("import resource, signal, sys\nsignal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))\nfrom edgemp.cli import main\n"
            "main(['package', sys.argv[1], '-d', 'jetson', '-o', sys.argv[2]])")
    (env.tmp / "out").mkdir()
    env.snapshot()
    p = subprocess.run([sys.executable, "-c", code, str(env.s["report"]), str(env.tmp / "out")], capture_output=True,
                       text=True, env=os.environ | {"PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": str(REPO)})
    assert p.returncode == 2 and "EFBIG" in p.stderr and "Traceback" not in p.stderr, p.stderr
    env.unchanged()
    env.no_temp()


def permission_denied(env: Env) -> None:
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("needs root with util-linux setpriv to drop CAP_DAC_OVERRIDE (as a user, chmod alone is enough)")
    out = env.tmp / "locked"
    out.mkdir()
    (out / "mine.txt").write_text("mine")
    out.chmod(0o555)
    env.snapshot()
    p = subprocess.run([setpriv, "--bounding-set=-dac_override,-dac_read_search", sys.executable, "-m", "edgemp",
                        "package", str(env.s["report"]), "-d", "android", "-o", str(out)], capture_output=True,
                       text=True, env=os.environ | {"PYTHONPATH": str(REPO)})
    out.chmod(0o755)
    assert p.returncode == 2 and "not writable (permission denied)" in p.stderr and "Traceback" not in p.stderr, p.stderr
    env.unchanged()


def name_too_long(env: Env) -> None:
    env.snapshot()
    env.cli("convert", env.s["keras"], "-p", "fp32", "-o", env.tmp / "o", "--name", "n" * 300, code=2,
            fragment="too long")
    env.cli("package", env.s["report"], "-d", "android", "-o", env.tmp / "b", "--name", "n" * 300, code=2,
            fragment="too long")
    env.cli("unpack", env.s["android"], "-o", env.tmp / ("n" * 300), code=2, fragment="too long")
    env.unchanged()
    assert not (env.tmp / "o").exists() and not (env.tmp / "b").exists()


def directory_where_the_model_file_goes(env: Env) -> None:
    (env.tmp / "tiny_fp32.tflite").mkdir()
    (env.tmp / "tiny_fp32.tflite" / "mine.txt").write_text("mine")
    env.snapshot()
    for force in ((), ("--force",)):  # --force would not help: said before any work
        env.cli("convert", env.s["keras"], "-p", "fp32", "-o", env.tmp, *force, code=2,
                fragment="a directory is where an output file should go")
    env.unchanged()
    env.no_temp()


def directory_appearing_at_the_path_while_writing(env: Env) -> None:
    target = env.tmp / "m.report.json"
    target.mkdir()
    env.raises(errors.OutputNotWritableError, "a directory is where an output file should go", _io.write_atomic,
               target, "{}", overwrite=True)
    assert target.is_dir() and not any(target.iterdir())
    env.no_temp()


def file_where_the_mlpackage_folder_goes(env: Env) -> None:
    target = env.tmp / "m.mlpackage"
    target.write_text("mine")
    env.raises(errors.OutputNotWritableError, "a file is where an output folder should go", _io.save_dir_atomic,
               target, lambda p: p.mkdir(), overwrite=True)
    env.raises(errors.OutputNotWritableError, "a file is where an output folder should go", _io.check_overwrite,
               [target], True)
    assert target.read_text() == "mine"
    env.no_temp()


# == TRACEBACKS: deeply nested manifests and reports ================================================================
def verify_a_deeply_nested_manifest_zip(env: Env) -> None:
    bad = _with_manifest(env.s["android"], env.tmp / "deep.zip", _nested_manifest())
    env.cli("verify", bad, code=2, fragment="nested too deeply")


def read_a_deeply_nested_manifest_folder(env: Env) -> None:
    d = env.copy("dir")
    (d / "manifest.json").write_bytes(_nested_manifest())
    env.raises(errors.BundleIntegrityError, "nested too deeply", edgemp.read_bundle, d)
    env.cli("verify", d, code=2, fragment="nested too deeply")


def unpack_a_deeply_nested_manifest(env: Env) -> None:
    bad = _with_manifest(env.s["android"], env.tmp / "deep.zip", _nested_manifest())
    env.cli("unpack", bad, "-o", env.tmp / "out", code=2, fragment="nested too deeply")
    assert not (env.tmp / "out").exists()
    env.no_temp()


def unpack_force_over_a_folder_with_a_deeply_nested_manifest(env: Env) -> None:
    d = env.tmp / "device"
    d.mkdir()
    (d / "manifest.json").write_bytes(_nested_manifest())
    env.snapshot()
    env.raises(errors.OutputExistsError, "nested too deeply", edgemp.unpack_bundle, env.s["android"], d, force=True)
    env.unchanged()


def package_a_deeply_nested_report(env: Env) -> None:
    (env.tmp / "r.report.json").write_bytes(b"[" * 100_000 + b"]" * 100_000)
    env.cli("package", env.tmp / "r.report.json", "-d", "android", "-o", env.tmp / "b", code=2,
            fragment="nested too deeply")
    assert not (env.tmp / "b").exists()


# == TRACEBACKS: report paths =======================================================================================
def report_stores_absolute_paths(env: Env) -> None:
    env.mp.chdir(env.tmp)
    r = edgemp.convert(env.s["model"], "fp32", output_dir="dist", latency_runs=1, progress=False)
    stored = json.loads((env.tmp / "dist" / "tiny_fp32.report.json").read_text())["artifacts"][0]["path"]
    assert stored == str(env.tmp / "dist" / "tiny_fp32.tflite") and r.artifacts["tflite"].is_absolute()


def package_an_old_report_with_a_relative_path_from_elsewhere(env: Env) -> None:
    old = env.tmp / "project" / "dist"
    old.mkdir(parents=True)
    shutil.copy(env.s["result"].artifacts["tflite"], old / "tiny_fp32.tflite")
    report = json.loads(env.s["report"].read_text())
    report["artifacts"][0]["path"] = "dist/tiny_fp32.tflite"  # as reports before absolute paths stored it
    (old / "tiny_fp32.report.json").write_text(json.dumps(report))
    elsewhere = env.tmp / "elsewhere"
    elsewhere.mkdir()
    env.mp.chdir(elsewhere)
    env.snapshot(old)
    env.cli("package", old / "tiny_fp32.report.json", "-d", "android", "-o", "bundles", code=0, fragment="android:")
    assert edgemp.read_bundle(elsewhere / "bundles" / "tiny_fp32_android.zip").default_model["file"] == "tiny_fp32.tflite"
    env.unchanged()


def package_a_moved_output_folder(env: Env) -> None:
    moved = env.tmp / "moved"
    shutil.copytree(env.s["report"].parent, moved)  # absolute paths in the report point at the old place
    report = json.loads((moved / "tiny_fp32.report.json").read_text())
    report["artifacts"][0]["path"] = str(env.tmp / "gone" / "tiny_fp32.tflite")
    (moved / "tiny_fp32.report.json").write_text(json.dumps(report))
    b = edgemp.package(moved / "tiny_fp32.report.json", "android", env.tmp / "b")
    assert edgemp.read_bundle(b.path).default_model["sha256"] == report["artifacts"][0]["sha256"]


def package_when_the_artifact_is_gone(env: Env) -> None:
    d = env.tmp / "d"
    d.mkdir()
    shutil.copy(env.s["report"], d / "tiny_fp32.report.json")
    report = json.loads((d / "tiny_fp32.report.json").read_text())
    report["artifacts"][0]["path"] = str(env.tmp / "gone" / "tiny_fp32.tflite")
    (d / "tiny_fp32.report.json").write_text(json.dumps(report))
    env.cli("package", d / "tiny_fp32.report.json", "-d", "android", "-o", env.tmp / "b", code=2,
            fragment="does not exist any more (looked at")
    assert not (env.tmp / "b").exists()


def package_when_the_artifact_beside_the_report_changed(env: Env) -> None:
    moved = env.tmp / "moved"
    shutil.copytree(env.s["report"].parent, moved)
    report = json.loads((moved / "tiny_fp32.report.json").read_text())
    report["artifacts"][0]["path"] = str(env.tmp / "gone" / "tiny_fp32.tflite")
    (moved / "tiny_fp32.report.json").write_text(json.dumps(report))
    data = bytearray((moved / "tiny_fp32.tflite").read_bytes())
    data[-1] ^= 0xFF
    (moved / "tiny_fp32.tflite").write_bytes(bytes(data))
    env.raises(errors.BundleIntegrityError, "changed after conversion", edgemp.package, moved / "tiny_fp32.report.json",
               "android", env.tmp / "b")


# == SILENTLY WRONG: labels =========================================================================================
def package_with_two_labels_for_ten_classes(env: Env) -> None:
    (env.tmp / "labels.txt").write_text("cat\ndog\n")
    env.cli("package", env.s["report"], "-d", "android", "-o", env.tmp / "b", "--labels", env.tmp / "labels.txt",
            code=2, fragment="2 label(s) given, but tiny_fp32.tflite has 10 classes")
    assert not (env.tmp / "b").exists()


def package_with_an_empty_labels_file(env: Env) -> None:
    (env.tmp / "labels.txt").write_text("\n\n")
    env.cli("package", env.s["report"], "-d", "android", "-o", env.tmp / "b", "--labels", env.tmp / "labels.txt",
            code=2, fragment="0 label(s) given")


def package_with_a_label_holding_a_newline(env: Env) -> None:
    names = [f"c{i}" for i in range(9)] + ["two\nlines"]
    env.raises(errors.InputError, "single-line", edgemp.package, env.s["result"], "android", env.tmp, class_names=names)
    assert not list(env.tmp.iterdir())


def package_with_one_label_per_class(env: Env) -> None:
    (env.tmp / "labels.txt").write_text("".join(f"class {i}\n" for i in range(10)))
    env.cli("package", env.s["report"], "-d", "android", "-o", env.tmp / "b", "--labels", env.tmp / "labels.txt",
            code=0)
    m = edgemp.read_bundle(env.tmp / "b" / "tiny_fp32_android.zip").manifest
    assert m["labels"]["classes"] == [f"class {i}" for i in range(10)]


SLOW = {race_two_convert_processes}  # ~30 s: two processes import TensorFlow on 2 cores
CASES = [
    unpack_force_into_a_users_project_folder, unpack_force_over_a_regular_file, unpack_force_over_a_symlink,
    unpack_force_keeps_files_beside_an_earlier_bundle, unpack_force_replaces_only_the_old_bundles_files,
    unpack_force_over_a_bundle_file_you_edited, unpack_force_where_your_file_is_where_a_bundle_file_goes,
    unpack_force_over_a_folder_whose_manifest_is_not_a_bundles, unpack_without_force_over_a_bundle,
    unpack_into_an_empty_folder, unpack_a_bundle_folder_into_itself,
    package_force_over_a_zip_that_is_not_a_bundle, package_force_where_a_directory_is_at_the_zip_path,
    package_dir_force_over_a_users_folder, package_dir_force_over_its_own_bundle_keeps_your_files,
    package_force_over_its_own_zip,
    race_two_writers_into_one_file, race_two_writers_into_one_folder, race_two_packages_past_the_early_check,
    race_two_unpacks_into_one_new_folder, convert_that_loses_the_race_after_its_check, race_two_convert_processes,
    analyze_writes_all_or_nothing,
    convert_force_with_a_failing_gate_keeps_the_good_artifact, cli_convert_force_with_a_failing_gate,
    convert_failing_without_earlier_outputs_uses_the_plain_names,
    *ERRNO_CASES, disk_full_during_convert, disk_full_during_package, disk_full_during_unpack,
    disk_full_during_unpack_force_over_a_bundle, read_only_file_system, file_size_limit_efbig, permission_denied,
    name_too_long, directory_where_the_model_file_goes, directory_appearing_at_the_path_while_writing,
    file_where_the_mlpackage_folder_goes,
    verify_a_deeply_nested_manifest_zip, read_a_deeply_nested_manifest_folder, unpack_a_deeply_nested_manifest,
    unpack_force_over_a_folder_with_a_deeply_nested_manifest, package_a_deeply_nested_report,
    report_stores_absolute_paths, package_an_old_report_with_a_relative_path_from_elsewhere,
    package_a_moved_output_folder, package_when_the_artifact_is_gone, package_when_the_artifact_beside_the_report_changed,
    package_with_two_labels_for_ten_classes, package_with_an_empty_labels_file, package_with_a_label_holding_a_newline,
    package_with_one_label_per_class,
]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.__name__, marks=[pytest.mark.slow] if c in SLOW else [])
                                  for c in CASES])
def test_outputs(case: Callable[[Env], None], env: Env) -> None:
    case(env)
