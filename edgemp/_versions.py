"""Versions of every library a report depends on (read from package metadata: nothing is imported)."""

from __future__ import annotations

import platform
from importlib import metadata

_DISTRIBUTIONS = ("edgemp", "numpy", "tensorflow-cpu", "tensorflow", "keras", "ai-edge-litert", "ai-edge-quantizer",
                  "pillow", "torch", "litert-torch", "coremltools")


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "platform": f"{platform.system()}-{platform.machine()}"}
    for dist in _DISTRIBUTIONS:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out
