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

from edgemp.config import IODType
from edgemp.errors import UnknownPrecisionError

if TYPE_CHECKING:
    from edgemp.targets.tflite.census import Census
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
    recipe: Callable[[IODType, Any], list[dict[str, Any]] | None]  # (I/O, float census) -> the quantizer's recipe;
    # None: the float model is the artifact
    checks: Callable[[Census, IODType], list[Check]]  # what makes the label true, on the artifact's census
    io_label: Callable[[IODType], str]
    coreml: str | None  # the Core ML precision made beside it (targets include "coreml"), None: no counterpart
    fidelity_floor: tuple[float, float]  # (min SQNR dB, min cosine) without labels: benchmarks/fidelity_gate.py
    searched: bool = False  # the mixed-precision search chooses the recipe
    finish: Callable[[bytes], tuple[bytes, int]] | None = None  # a pass over the quantized model (returns it, count)


_REGISTRY: dict[Precision, PrecisionSpec] = {}


def register_precision(spec: PrecisionSpec) -> PrecisionSpec:
    _REGISTRY[spec.precision] = spec
    return spec


def registered_precisions() -> list[Precision]:
    return list(_REGISTRY)


def precision_spec(precision: Precision | str) -> PrecisionSpec:
    """The registry entry of a Precision or its name; an unknown name lists the registered ones."""
    for p, spec in _REGISTRY.items():
        if precision is p or (isinstance(precision, str) and precision.lower() == p.value):
            return spec
    valid = ", ".join(repr(p.value) for p in _REGISTRY)
    raise UnknownPrecisionError(f"unknown precision {precision!r}; valid values: {valid}")


def _io(quantized: str) -> Callable[[IODType], str]:
    return lambda io: "float32" if io is IODType.FLOAT else quantized


def _float_io(_: IODType) -> str:
    return "float32"


def _register_builtin() -> None:
    from edgemp.quantize.recipes import dynamic_int8_recipe, fp16_recipe, no_recipe, static_recipe
    from edgemp.quantize.rewrites import constants_to_fp16
    from edgemp.validation import checks

    for spec in (
        PrecisionSpec(Precision.FP32, "float32 weights, activations and I/O (reference)", False, no_recipe,
                      checks.fp32_checks, _float_io, "fp32", (70.0, 0.99999)),
        PrecisionSpec(Precision.FP16, "float16 weights and constants dequantized to float32 at load; float32 compute "
                      "and I/O", False, fp16_recipe, checks.fp16_checks, _float_io, "fp16", (40.0, 0.9999),
                      finish=constants_to_fp16),
        PrecisionSpec(Precision.DYNAMIC_INT8, "int8 per-channel weights; activations float32, quantized on the fly by "
                      "hybrid kernels", False, dynamic_int8_recipe, checks.dynamic_int8_checks, _float_io,
                      "int8-weights", (25.0, 0.999)),
        PrecisionSpec(Precision.INT8, "fully integer: int8 per-channel weights, int8 activations, int32 biases", True,
                      static_recipe(8), checks.integer_checks("int8"), _io("int8"), "int8-weights", (25.0, 0.999)),
        PrecisionSpec(Precision.INT16X8, "int16 activations, int8 per-channel weights, int64 biases", True,
                      static_recipe(16), checks.integer_checks("int16"), _io("int16"), None, (15.0, 0.99)),
        PrecisionSpec(Precision.MIXED, "int8 (int8 per-channel weights and activations) except the layers listed in "
                      "report.mixed, which compute in float32 with QUANTIZE/DEQUANTIZE at each boundary", True,
                      static_recipe(8), checks.mixed_checks, _io("int8"), "mixed", (25.0, 0.999), searched=True),
    ):
        register_precision(spec)


# The fidelity floors (last field) come from the study in benchmarks/fidelity_gate.py
# (benchmarks/results/fidelity_gate.md): every damaged artifact there fails them, every good conversion passes.
_register_builtin()
