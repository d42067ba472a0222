"""Turn torch.export / litert-torch failures into errors that name the op, the module path and the fix.

litert-torch's own messages can be opaque (e.g. "Number of input tokens (1) does not match output tokens (0)"
for an op it has no lowering for). After a failure the module is re-exported and every ATen op is looked up
in litert-torch's lowering registry, so the error lists exactly which ops in which submodules cannot lower.
"""

from __future__ import annotations

import contextlib
import io
import re
import traceback
from typing import Any

from edgemp.errors import ConversionError, UnsupportedOpsError

DATA_DEPENDENT_HINT = (" The model has data-dependent control flow (a Python `if` or loop on tensor values): "
                       "replace it with torch.where / torch.cond, or move it out of forward().")
UNLOWERABLE_HINT = (" Replace these ops with supported equivalents, compute them outside the model (pre/post-"
                    "processing in the app), or register a litert-torch lowering for them.")


def unlowerable_ops(module: Any, args: tuple[Any, ...]) -> list[tuple[str, str, str]]:
    """(op, module path, module class) for every exported op litert-torch has no lowering for."""
    import torch
    from litert_torch import fx_infra
    from litert_torch.backend import lowerings

    with contextlib.redirect_stdout(io.StringIO()):  # litert-torch prints progress lines
        program = torch.export.export(module, args)
        for table in (fx_infra.decomp.pre_convert_decomp(), fx_infra.decomp.pre_lower_decomp()):
            program = fx_infra.safe_run_decompositions(program, table, can_skip=False)
    found: dict[tuple[str, str], str] = {}
    for node in program.graph.nodes:
        if node.op != "call_function" or not isinstance(node.target, torch._ops.OpOverload):
            continue
        if lowerings.lookup(node.target) is not None:
            continue
        stack = list((node.meta.get("nn_module_stack") or {}).values())
        path, cls = stack[-1] if stack else ("", "")
        found.setdefault((str(node.target), path or "<top>"), str(cls).rsplit(".", 1)[-1])
    return [(op, path, cls) for (op, path), cls in found.items()]


def _user_frame(exc: BaseException) -> str:
    """The user's line: torch.export names it ("File: path:12 in forward, code: ..."), else the innermost frame
    of the traceback outside torch and edgemp."""
    told = [m for m in re.findall(r"File: ([^\n:]+):(\d+) in (\w+), code: ([^\n]+)", str(exc))
            if "site-packages" not in m[0] and "/torch/" not in m[0]]
    if told:
        path, line, fn, code = told[-1]
        return f" in {fn}() at {path}:{line}: `{code.strip()}`"
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "site-packages" not in f.filename
              and "/torch/" not in f.filename and "/edgemp/" not in f.filename]
    if frames:
        f = frames[-1]
        return f" in {f.name}() at {f.filename}:{f.lineno}: `{(f.line or '').strip()}`"
    m = re.findall(r'File "([^"]+)", line (\d+), in (\w+)\n\s+(.+)', str(exc))
    return f" in {m[-1][2]}() at {m[-1][0]}:{m[-1][1]}: `{m[-1][3].strip()}`" if m else ""


def conversion_error(exc: Exception, name: str, module: Any = None, args: tuple[Any, ...] = ()) -> ConversionError:
    """The error to raise for a failed export/lowering of `module` (called from an `except` block)."""
    text = f"{type(exc).__name__}: {exc}"
    first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
    if "data-dependent" in text.lower() or "GuardOnDataDependent" in text:
        return ConversionError(f"cannot export PyTorch model {name!r}{_user_frame(exc)}: {first}.{DATA_DEPENDENT_HINT}")
    missing = re.findall(r"Lowering not found: ([\w.]+)", text)
    located: list[tuple[str, str, str]] = []
    if module is not None:
        try:
            located = unlowerable_ops(module, args)
        except Exception:  # noqa: BLE001 - the diagnosis is best effort; the original error still goes out
            located = []
    if located:
        where = "; ".join(f"{op} in {path} ({cls})" for op, path, cls in located[:8])
        return UnsupportedOpsError(f"cannot convert PyTorch model {name!r}: litert-torch has no lowering for "
                                   f"{where}.{UNLOWERABLE_HINT} (converter said: {first})",
                                   ops=[op for op, _, _ in located])
    if missing:
        return UnsupportedOpsError(f"cannot convert PyTorch model {name!r}: litert-torch has no lowering for "
                                   f"{', '.join(sorted(set(missing)))}.{UNLOWERABLE_HINT}", ops=sorted(set(missing)))
    return ConversionError(f"cannot export/convert PyTorch model {name!r}{_user_frame(exc)}: {first}. "
                           "Check that torch.export.export(model, (example_input,)) works on its own.")
