"""`import edgemp` loads no framework and changes nothing in the user's process (torch.compile keeps Triton)."""

from __future__ import annotations

import subprocess
import sys


def test_import_edgemp_loads_no_framework_and_leaves_triton_alone() -> None:
    code = ("import sys, edgemp\n"
            "heavy = [m for m in ('tensorflow', 'keras', 'torch', 'triton', 'coremltools', 'ai_edge_litert', "
            "'ai_edge_quantizer', 'litert_torch', 'matplotlib', 'ray') if m in sys.modules]\n"
            "print(heavy, sys.modules.get('triton', 'absent'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[] absent", out.stdout + out.stderr
