"""benchmarks/zoo.py --quick: three models end to end into a temporary folder; the table has its columns and totals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
COLUMNS = ["model", "kind", "input", "prec", "anchor", "edgemp status", "anchor status", "fully int8 edgemp",
           "fully int8 anchor", "bytes edgemp", "bytes anchor", "size ×anchor", "ms edgemp", "ms anchor",
           "latency ×anchor", "same placement", "fidelity edgemp SQNR dB / cos / top-1",
           "fidelity anchor SQNR dB / cos / top-1"]


@pytest.mark.slow
def test_quick_zoo_writes_table_with_columns_and_verdicts(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "zoo.py"), "--quick", "--out", str(tmp_path),
                           "--fresh"], capture_output=True, text=True, env=env, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    md = (tmp_path / "zoo.md").read_text()
    header = next(ln for ln in md.splitlines() if ln.startswith("| model |"))
    assert [c.strip() for c in header.strip("|").split("|")] == COLUMNS
    result = json.loads((tmp_path / "zoo.json").read_text())
    rows = result["rows"]
    table = [ln for ln in md.splitlines() if ln.startswith("| ") and not ln.startswith(("| model |", "| target |"))
             and ln.count("|") == len(COLUMNS) + 1]
    assert len(table) == len(rows) >= 3 * 2
    assert {r["model"] for r in rows} == {"keras_multi_input", "torch_segmenter", "squeezenet1_1"}
    assert {r["family"] for r in rows} == {"keras", "torch"}
    for r in rows:
        assert r["edgemp"]["ok"], r["edgemp"]["status"]
        assert r["anchor"]["status"]
        if r["edgemp"]["ok"] and r["anchor"]["ok"]:
            assert r["size_ratio"] > 0 and r["latency"]["ratio"] > 0
            assert -1 <= r["edgemp"]["fidelity"]["cosine"] <= 1.0 + 1e-6
        if r["precision"] == "int8":
            assert r["edgemp"]["fully_integer"] is True
    totals = result["totals"]
    assert set(totals["verdicts"]) == {"succeeds_where_anchor_succeeds", "fully_integer_at_least_anchor",
                                       "size_never_larger", "latency_within_1.05"}
    assert result["cpu_flags"] and "Where edgemp falls short" in md and "## Targets" in md
