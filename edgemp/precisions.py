"""Precisions, registered in one place: what each means, whether it needs calibration, its AI Edge Quantizer
recipe, the census checks that make its label true, its I/O label, its Core ML counterpart and the fidelity floor
it must keep without labels. Adding a precision is one `register_precision(...)` call here (and a member of the
`Precision` enum beside it); the pipeline, the CLI choices and the tests take it from the registry.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgemp.targets.tflite.census import Census
    from edgemp.config import IODType
    from edgemp.validation.checks import Check


class Precision(str, enum.Enum):
    """What the artifact computes in. The label is checked against the artifact's op census."""

    FP32 = "fp32"
    FP16 = "fp16"
    DYNAMIC_INT8 = "dynamic-int8"
    INT8 = "int8"
    INT16X8 = "int16x8"
    MIXED = "mixed"

    @property
    def spec(self) -> PrecisionSpec:
        return _REGISTRY[self]

    @property
    def needs_calibration(self) -> bool:
        return self.spec.needs_calibration

    @property
    def meaning(self) -> str:
        return self.spec.meaning


@dataclasses.dataclass(frozen=True)
class PrecisionSpec:
    precision: Precision
    meaning: str
    needs_calibration: bool
    recipe: Callable[[IODType], list[dict[str, Any]] | None]  # None: the float model is the artifact
    checks: Callable[[Census, IODType], list[Check]]  # what makes the label true, on the artifact's census
    io_label: Callable[[IODType], str]
    coreml: str | None  # the Core ML precision made beside it (targets include "coreml"), None: no counterpart
    fidelity_floor: tuple[float, float]  # (min SQNR dB, min cosine) without labels: benchmarks/fidelity_gate.py
    searched: bool = False  # the mixed-precision search chooses the recipe


_REGISTRY: dict[Precision, PrecisionSpec] = {}


def register_precision(spec: PrecisionSpec) -> PrecisionSpec:
    _REGISTRY[spec.precision] = spec
    return spec


def registered_precisions() -> list[Precision]:
    return list(_REGISTRY)
