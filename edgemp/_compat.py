"""Process-level workarounds for clashes between the frameworks edgemp loads side by side."""

from __future__ import annotations

import importlib.util
import logging
import sys

log = logging.getLogger(__name__)


def prepare_torch_import() -> None:
    """Make importing torch's compiler stack safe in a process that also runs TensorFlow.

    Triton (a GPU kernel compiler that CUDA builds of torch pull in through torch._dynamo, hence
    torch.export and litert-torch) and TensorFlow both bundle LLVM; importing Triton *after* TensorFlow
    segfaults the interpreter (seen with torch 2.14.1 + tensorflow-cpu 2.21). In the other order both work.
    edgemp exports on the CPU and never needs Triton, so: if TensorFlow is already loaded, Triton is
    marked unavailable (torch then treats it as not installed); if not, Triton is imported now, first.
    Called only where edgemp is about to import torch or TensorFlow — never by `import edgemp`, which must
    leave the user's process (and torch.compile) alone.
    """
    if "triton" in sys.modules:
        return
    if "tensorflow" in sys.modules:
        log.debug("TensorFlow is loaded: hiding Triton from torch (importing it now would segfault)")
        sys.modules["triton"] = None  # type: ignore[assignment]
        return
    if importlib.util.find_spec("triton") is not None:
        try:
            importlib.import_module("triton")
        except Exception as exc:  # noqa: BLE001 - a broken optional GPU compiler must not stop a CPU export
            log.debug("Triton failed to import (%s): hiding it from torch", exc)
            sys.modules["triton"] = None  # type: ignore[assignment]
