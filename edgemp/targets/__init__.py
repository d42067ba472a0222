"""Targets, registered by name: each builds its artifact from a conversion, checks that it is what its label says,
validates it, and describes it for the report and for device bundles. A target imports its framework only when it
builds (coremltools is not imported by `import edgemp`).

Adding a target: a class with the members of `Target` (see edgemp/targets/tflite/ and edgemp/targets/coreml/) and
one `register_target(name, "module:Class")` line below; the pipeline, the CLI's --target choices and the tests take
it from here (docs/architecture.md, "Adding a target").
"""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from edgemp.errors import InputError

if TYPE_CHECKING:
    from edgemp.pipeline import Conversion
    from edgemp.validation.checks import Check


@dataclasses.dataclass
class TargetResult:
    """What a target built: the files to write (bytes/str, or a finished directory to move into place), the report's
    artifacts[] entry, its checks and the report keys it fills."""

    target: str
    files: dict[Path, bytes | str | Path]
    artifact: dict[str, Any]
    checks: list[Check]
    report: dict[str, Any]
    primary: Path  # the artifact's own path (the .tflite, the .mlpackage)


class Target(Protocol):
    name: ClassVar[str]
    format: ClassVar[str]  # what the manifest calls the file ("tflite", "mlpackage")
    engine: ClassVar[str]  # what runs it on the device

    def plan(self, conv: Conversion) -> list[Path]:
        """Check the target's own options (cheap, before any model is converted) and name what it will write."""
        ...

    def build(self, conv: Conversion) -> TargetResult: ...

    def bundle_entry(self, report: dict[str, Any], data: bytes | None, path: Path) -> dict[str, Any]:
        """precision, precision_meaning, io_dtype, layout, inputs, outputs of the artifact for a device manifest."""
        ...


_REGISTRY: dict[str, str] = {}  # name -> "module:Class", imported on first use


def register_target(name: str, where: str) -> None:
    _REGISTRY[name] = where


def registered_targets() -> list[str]:
    return list(_REGISTRY)


def get_target(name: str) -> Target:
    if name not in _REGISTRY:
        raise InputError(f"unknown target {name!r}; registered targets: {', '.join(_REGISTRY)}")
    module, cls = _REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls)()


register_target("tflite", "edgemp.targets.tflite:TFLiteTarget")
register_target("coreml", "edgemp.targets.coreml:CoreMLTarget")
register_target("onnx", "edgemp.targets.onnx:OnnxTarget")
