"""Find detection post-processing and data-dependent output sizes in a torch model whose conversion failed.

litert-torch lowers to TFLite, whose tensors have static shapes. torch.export itself accepts ops whose output
size depends on tensor values: it gives them unbacked sizes (u0, u1...) and adds runtime checks
(aten._assert_scalar, sym_constrain_range) for them. Non-maximum suppression, x[mask], torch.nonzero, .item()
then fail in litert-torch with errors that name neither the op nor the user's line ("Lowering not found:
torchvision.nms.default", JAX's "Array boolean indices must be concrete"). Three signals, tried in order:

* the raw export graph (ops as the user wrote them, before litert-torch's decompositions): torchvision's nms,
  any node binding an unbacked symbol, nonzero / masked_select, indexing with a bool mask. The user's line comes
  from node.meta["stack_trace"];
* a torch.export failure on a data-dependent value (GuardOnDataDependentSymNode) where the value is top-k's k;
* litert-torch / JAX errors that end with "While executing %node : ... target=...".
"""

from __future__ import annotations

import dataclasses
import linecache
import re
from pathlib import Path
from typing import Any

from edgemp.errors import PostProcessingError

POSTPROCESS_FIX = (
    "TFLite needs static shapes: export the network before the post-processing — return the raw boxes (N, A, 4) "
    "and class scores (N, A, K) as outputs and run decoding/NMS in the app (see docs/families.md#detection); for a "
    "fixed number of detections use torch.topk with a constant k and mask low scores by multiplication."
)
NMS = "non-maximum suppression (torchvision.ops.nms / batched_nms)"
TOPK = "top-k with k computed from data (torch.topk(x, k) with k read from a tensor)"
WORDS = {  # op -> what the user wrote
    "torchvision.nms.default": NMS,
    "aten.nonzero.default": "torch.nonzero",
    "aten.argwhere.default": "torch.argwhere",
    "aten.where.default": "torch.where(cond) with one argument",
    "aten.masked_select.default": "masked_select (x[mask] flattened)",
    "aten.index.Tensor": "boolean-mask indexing (x[mask])",
    "aten.index_put.default": "boolean-mask assignment (x[mask] = v)",
    "aten.index_put_.default": "boolean-mask assignment (x[mask] = v)",
    "aten._unique2.default": "torch.unique",
    "aten.unique_dim.default": "torch.unique",
    "aten.unique_consecutive.default": "torch.unique_consecutive",
    "aten.repeat_interleave.Tensor": "repeat_interleave with repeats from a tensor",
    "aten._local_scalar_dense.default": "a Python number read from a tensor (int(t), t.item())",
    "aten.item.default": "a Python number read from a tensor (int(t), t.item())",
    "aten.topk.default": TOPK,
}
# runtime checks torch.export adds for unbacked sizes, size queries, torchvision's own version probe: never the op
# at fault
IGNORED = ("aten._assert_scalar", "aten.sym_constrain_range", "aten._assert_async", "aten.sym_size", "aten.sym_numel",
           "aten.sym_stride", "aten.sym_storage_offset", "aten._functional_assert", "torchvision._cuda_version")
DATA_DEPENDENT = "output size depends on tensor values"
MASKED_ASSIGN = "the elements written depend on tensor values: write torch.where(mask, v, x)"
_INDEX = ("aten.index.Tensor", "aten.index_put.default", "aten.index_put_.default")
_TOPK_CALL = re.compile(r"\b(topk|kthvalue)\s*\(")
_FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\S+)\n\s*([^\n]*)')


@dataclasses.dataclass(frozen=True)
class Finding:
    op: str  # framework op, e.g. "torchvision.nms.default"
    what: str  # the op in words
    reason: str
    module: str | None = None  # nn.Module path ("" = the model itself, None = not known)
    cls: str = ""  # that module's class
    file: str | None = None
    line: int | None = None
    code: str = ""

    def describe(self) -> str:
        where = f" at {self.file}:{self.line}" + (f": `{self.code}`" if self.code else "") if self.file else ""
        cls = f" ({self.cls})" if self.cls else ""
        module = "" if self.module is None else f" in {self.module or '<top>'}{cls}"
        return f"{self.what} [{self.op}]{module}{where} ({self.reason})"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def is_noise(op: str) -> bool:
    """Ops that are never the one at fault: export's runtime asserts on unbacked sizes, size queries."""
    return op.startswith(IGNORED)


def is_user_file(path: str) -> bool:
    """A frame of the user's code: not torch, torchvision, litert-torch, other installed packages, edgemp itself."""
    if path.startswith("<") or "site-packages" in path or "dist-packages" in path:
        return False
    import torch

    import edgemp

    roots = (Path(torch.__file__).parent, Path(edgemp.__file__).parent)
    return not any(Path(path).is_relative_to(r) for r in roots)


def user_frames(text: str | None) -> list[tuple[str, int, str, str]]:
    """(file, line, function, code) of the user's frames in a Python stack trace text, outermost first."""
    return [(f, int(n), fn, code.strip()) for f, n, fn, code in _FRAME.findall(text or "") if is_user_file(f)]


def _bool_index(node: Any) -> bool:
    import torch

    idx = (node.args[1] if len(node.args) > 1 else None) or []
    return any(getattr(getattr(i, "meta", {}).get("val"), "dtype", None) == torch.bool for i in idx if i is not None)


def scan_graph(program: Any) -> list[Finding]:
    """Post-processing and data-dependent output sizes in a raw (not decomposed) ExportedProgram, in graph order."""
    import torch

    found: dict[tuple[Any, ...], Finding] = {}
    for node in program.graph.nodes:
        if node.op != "call_function" or not isinstance(node.target, torch._ops.OpOverload):
            continue
        op = str(node.target)
        if is_noise(op):
            continue
        if op.startswith("torchvision.") and ".nms." in op:
            reason = "no TFLite op; the number of boxes kept depends on the scores"
        elif node.meta.get("unbacked_bindings") or op in ("aten.nonzero.default", "aten.masked_select.default") \
                or (op in _INDEX and _bool_index(node)):
            reason = MASKED_ASSIGN if op.startswith("aten.index_put") else DATA_DEPENDENT
        else:
            continue
        what = WORDS.get(op, op)
        if op in _INDEX and not _bool_index(node):
            what = "indexing with indices computed from data"
        stack = list((node.meta.get("nn_module_stack") or {}).values())
        module, cls = stack[-1] if stack else ("", "")
        frames = user_frames(node.meta.get("stack_trace"))
        file, line, _, code = frames[-1] if frames else (None, None, "", "")
        if op in ("aten.item.default", "aten._local_scalar_dense.default") and (
                _TOPK_CALL.search(code) or any(re.search(r"\.(topk|kthvalue)\.", str(u.target)) for u in node.users)):
            what, reason = TOPK, "k is read from tensor values"
        f = Finding(op, what, reason, module, str(cls).rsplit(".", 1)[-1], file, line, code)
        found.setdefault((op, file, line) if file else (op, module), f)
    return list(found.values())


def _topk_use(file: str, line: int, code: str) -> int | None:
    """The line that passes the name assigned at file:line (`k = int(...)`) to topk/kthvalue, within its block."""
    m = re.match(r"\s*(\w+)\s*(?::[^=]+)?=[^=]", code)
    if not m:
        return None
    indent = len(linecache.getline(file, line)) - len(linecache.getline(file, line).lstrip())
    for n in range(line + 1, line + 60):
        text = linecache.getline(file, n)
        if not text:
            return None
        if text.strip() and len(text) - len(text.lstrip()) < indent:
            return None
        if _TOPK_CALL.search(text) and re.search(rf"\b{m.group(1)}\b", text):
            return n
    return None


def export_finding(exc: BaseException, frames: list[tuple[str, int, str, str]]) -> Finding | None:
    """For a torch.export failure on a data-dependent value: a Finding when the value is top-k's k, else None
    (the value feeds a Python `if`/loop: control flow, not post-processing). `frames`: the user's frames."""
    if not frames:
        return None
    file, line, _, code = frames[-1]
    if _TOPK_CALL.search(code):
        return Finding("aten.topk.default", TOPK, "k is not known until the data is", None, "", file, line, code)
    used = _topk_use(file, line, code)
    if used is not None:
        return Finding("aten.topk.default", TOPK, f"k is read from tensor values here and used by topk at line {used}",
                       None, "", file, line, code)
    return None


_JAX_SHAPE_ERRORS = ("NonConcreteBooleanIndexError", "ConcretizationTypeError", "TracerIntegerConversionError")


def litert_finding(exc: BaseException) -> Finding | None:
    """litert-torch's lowering errors end with "While executing %nms : ... target=torch.ops.torchvision.nms.default"
    and an "Original traceback" holding the user's line: a Finding when that op is post-processing."""
    text = f"{type(exc).__name__}: {exc}"
    m = re.search(r"While executing %\w+ : .*?target=(?:torch\.ops\.)?([\w.]+)", text)
    if not m:
        return None
    op = m.group(1)
    if not (".nms." in op or any(e in text for e in _JAX_SHAPE_ERRORS)):
        return None
    frames = user_frames(text.split("Original traceback", 1)[-1])
    file, line, _, code = frames[-1] if frames else (None, None, "", "")
    reason = MASKED_ASSIGN if op.startswith("aten.index_put") else DATA_DEPENDENT
    return Finding(op, NMS if ".nms." in op else WORDS.get(op, op), reason, None, "", file, line, code)


def post_processing_error(name: str, findings: list[Finding]) -> PostProcessingError:
    listed = "; ".join(f.describe() for f in findings[:6]) + (f"; and {len(findings) - 6} more" if len(findings) > 6
                                                              else "")
    return PostProcessingError(
        f"cannot convert PyTorch model {name!r}: its forward() has post-processing or shapes that depend on the data, "
        f"which litert-torch cannot convert: {listed}. {POSTPROCESS_FIX}",
        ops=list(dict.fromkeys(f.op for f in findings)), findings=[f.to_dict() for f in findings])
