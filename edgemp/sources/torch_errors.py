"""Turn torch.export / litert-torch failures into errors that name the op, the module path and the fix.

litert-torch's own messages can be opaque (e.g. "Number of input tokens (1) does not match output tokens (0)"
for an op it has no lowering for). After a failure the module is re-exported the way litert-torch exports it, and:

1. the raw graph is searched for post-processing and ops whose output size depends on tensor values (NMS, x[mask],
   torch.nonzero, top-k with k from data: torch_postprocess), raised as PostProcessingError with the user's line;
2. a data-dependent Python `if`/loop (export cannot trace it) gets the torch.where / torch.cond hint;
3. otherwise every op left after litert-torch's decompositions is looked up in its lowering registry, so the error
   lists exactly which ops in which submodules cannot lower (export's runtime asserts are never blamed).
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import traceback
import warnings
from typing import Any

from edgemp.errors import ConversionError, UnsupportedOpsError
from edgemp.sources.torch_postprocess import (export_finding, is_noise, is_user_file, litert_finding,
                                              post_processing_error, scan_graph, user_frames)

DATA_DEPENDENT_HINT = (" The model has data-dependent control flow (a Python `if` or loop on tensor values, or a "
                       "Python number taken from a tensor with int() / .item()): replace it with torch.where / "
                       "torch.cond, or move it out of forward().")
UNLOWERABLE_HINT = (" Replace these ops with supported equivalents, compute them outside the model (pre/post-"
                    "processing in the app), or register a litert-torch lowering for them.")
_TORCH_LOGGERS = ("torch.fx.experimental.symbolic_shapes", "torch._dynamo", "torch.export", "torch._export")


@contextlib.contextmanager
def _quiet():  # type: ignore[no-untyped-def]
    """Silence litert-torch's progress prints and torch.export's warnings and graph dumps."""
    loggers = [logging.getLogger(n) for n in _TORCH_LOGGERS]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.CRITICAL)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def export_program(module: Any, args: tuple[Any, ...]) -> Any:
    """torch.export.export as litert-torch calls it (non-strict), quietly."""
    import torch

    with _quiet():
        return torch.export.export(module, args)


def unlowerable_ops(module: Any, args: tuple[Any, ...], program: Any = None) -> list[tuple[str, str, str]]:
    """(op, module path, module class) for every exported op litert-torch has no lowering for (after its
    decompositions: on the raw graph conv2d or flatten would look unlowerable)."""
    import torch
    from litert_torch import fx_infra
    from litert_torch.backend import lowerings

    program = program if program is not None else export_program(module, args)
    with _quiet():
        for table in (fx_infra.decomp.pre_convert_decomp(), fx_infra.decomp.pre_lower_decomp()):
            program = fx_infra.safe_run_decompositions(program, table, can_skip=False)
    found: dict[tuple[str, str], str] = {}
    for node in program.graph.nodes:
        if node.op != "call_function" or not isinstance(node.target, torch._ops.OpOverload):
            continue
        if is_noise(str(node.target)) or lowerings.lookup(node.target) is not None:
            continue
        stack = list((node.meta.get("nn_module_stack") or {}).values())
        path, cls = stack[-1] if stack else ("", "")
        found.setdefault((str(node.target), path or "<top>"), str(cls).rsplit(".", 1)[-1])
    return [(op, path, cls) for (op, path), cls in found.items()]


def _frames(exc: BaseException) -> list[tuple[str, int, str, str]]:
    """The user's frames, innermost last: the traceback's frames outside torch and edgemp (non-strict export runs
    forward() in Python), else the frames torch.export quotes in its message ("File "path", line 12, in forward"
    or, in graph dumps, "File: path:12 in forward, code: ...")."""
    tb = [(f.filename, f.lineno or 0, f.name, (f.line or "").strip())
          for f in traceback.extract_tb(exc.__traceback__) if is_user_file(f.filename)]
    if tb:
        return tb
    text = str(exc)
    return user_frames(text) or [(f, int(n), fn, code.strip()) for f, n, fn, code
                                 in re.findall(r"File: ([^\n:]+):(\d+) in (\w+), code: ([^\n]+)", text)
                                 if is_user_file(f)]


def _user_frame(exc: BaseException) -> str:
    frames = _frames(exc)
    if not frames:
        return ""
    path, line, fn, code = frames[-1]
    return f" in {fn}() at {path}:{line}: `{code}`"


def _data_dependent(exc: BaseException | None) -> bool:
    if exc is None:
        return False
    text = f"{type(exc).__name__}: {exc}"
    return "data-dependent" in text.lower() or "GuardOnDataDependent" in text


def conversion_error(exc: Exception, name: str, module: Any = None, args: tuple[Any, ...] = ()) -> ConversionError:
    """The error to raise for a failed export/lowering of `module` (called from an `except` block)."""
    text = f"{type(exc).__name__}: {exc}"
    first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
    program: Any = None
    again: BaseException | None = None
    failed: BaseException | None = exc if _data_dependent(exc) else None
    if failed is None and module is not None:
        try:
            program = export_program(module, args)
        except Exception as err:  # noqa: BLE001 - diagnosed below; the original error still goes out
            again = err
            failed = err if _data_dependent(err) else None
    # 1. post-processing and data-dependent output sizes
    try:
        findings = scan_graph(program) if program is not None else []
        if not findings and failed is not None:
            findings = [f] if (f := export_finding(failed, _frames(failed))) else []
        if not findings:
            findings = [f] if (f := litert_finding(exc)) else []
    except Exception:  # noqa: BLE001 - the diagnosis is best effort
        findings = []
    if findings:
        return post_processing_error(name, findings)
    # 2. a Python `if` / loop on tensor values
    if failed is not None:
        said = str(failed).strip().splitlines()[0][:300]
        return ConversionError(f"cannot export PyTorch model {name!r}{_user_frame(failed)}: {said}."
                               f"{DATA_DEPENDENT_HINT}")
    # 3. ops litert-torch cannot lower
    missing = sorted({op for op in re.findall(r"Lowering not found: ([\w.]+)", text) if not is_noise(op)})
    located: list[tuple[str, str, str]] = []
    if module is not None and again is None:
        try:
            located = unlowerable_ops(module, args, program)
        except Exception:  # noqa: BLE001 - the diagnosis is best effort; the original error still goes out
            located = []
    if located:
        where = "; ".join(f"{op} in {path} ({cls})" for op, path, cls in located[:8])
        return UnsupportedOpsError(f"cannot convert PyTorch model {name!r}: litert-torch has no lowering for "
                                   f"{where}.{UNLOWERABLE_HINT} (converter said: {first})",
                                   ops=[op for op, _, _ in located])
    if missing:
        return UnsupportedOpsError(f"cannot convert PyTorch model {name!r}: litert-torch has no lowering for "
                                   f"{', '.join(missing)}.{UNLOWERABLE_HINT}", ops=missing)
    return ConversionError(f"cannot export/convert PyTorch model {name!r}{_user_frame(exc)}: {first}. "
                           "Check that torch.export.export(model, (example_input,)) works on its own.")
