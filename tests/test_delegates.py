"""External delegates: loaded from a path with options, coverage reported, refusals are errors (no silent fallback)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

import edgemp
from edgemp import errors

NATIVE = Path(__file__).parent / "native"


@pytest.fixture(scope="module")
def noop_delegate(tmp_path_factory: pytest.TempPathFactory) -> str:
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler to build the test delegate")
    out = tmp_path_factory.mktemp("delegate") / "libnoop_delegate.so"
    subprocess.run([cc, "-shared", "-fPIC", "-O1", "-o", str(out), str(NATIVE / "noop_delegate.c")], check=True)
    return str(out)


def test_external_delegate_loads_and_reports_coverage(tiny_model, tmp_path: Path, noop_delegate: str) -> None:  # type: ignore[no-untyped-def]
    r = edgemp.convert(tiny_model, "fp32", output_dir=tmp_path, latency_runs=2,
                       delegates=[{"path": noop_delegate, "options": {"mode": "test"}}])
    assert r.passed
    rows = {d["name"]: d for d in r.report["validation"]["runtime"]["delegates"]}
    assert rows["XNNPACK"]["nodes"] == rows["XNNPACK"]["total_nodes"] > 0
    noop = rows["libnoop_delegate.so"]
    assert noop["loaded"] is True and noop["nodes"] == 0 and noop["total_nodes"] > 0
    assert noop["options"] == {"mode": "test"}


def test_delegate_refusing_its_options_is_an_error(tiny_model, tmp_path: Path, noop_delegate: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(errors.DelegateError, match="failed to load"):
        edgemp.convert(tiny_model, "fp32", output_dir=tmp_path,
                       delegates=[{"path": noop_delegate, "options": {"reject": "1"}}])
    assert not any(tmp_path.iterdir())


def test_xnnpack_can_be_switched_off(tiny_model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    r = edgemp.convert(tiny_model, "fp32", output_dir=tmp_path, latency_runs=2, xnnpack=False)
    assert r.report["validation"]["runtime"]["delegates"] == []
    assert r.report["validation"]["latency"]["xnnpack"] is False
