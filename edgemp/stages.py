"""The stages every target draws on, each run at most once per conversion: the float model (made integer-ready
for static precisions), the calibration and validation data, and the quantized .tflite (the mixed search for
`mixed`). Targets ask the Conversion for what they need; what nobody asks for never runs.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from edgemp.calibration import CalibrationSet
from edgemp.errors import EdgempError, UnsupportedOpsError, unexpected
from edgemp.precisions import Precision
from edgemp.targets.tflite.census import census
from edgemp.validation import ValidationData, load_validation
from edgemp.validation.data import random_inputs


class Timer:
    """Wall time per stage; an unexpected exception inside one becomes an InternalError that names the stage."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str):  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        try:
            yield
        except EdgempError:
            raise
        except Exception as exc:  # noqa: BLE001 - typed, with the cause chained
            raise unexpected(exc, f"during {name.replace('_', ' ')}") from exc
        finally:
            self.times[name] = round(self.times.get(name, 0.0) + time.perf_counter() - t0, 4)


@dataclasses.dataclass(frozen=True)
class FloatModel:
    """The float .tflite (the fp32 reference), and what calibration and quantization see: the same graph made
    integer-ready by exact rewrites (edgemp.quantize.rewrites) for static precisions."""

    tflite: bytes
    census: Any
    quantization_base: bytes
    rewrites: list[str]


@dataclasses.dataclass(frozen=True)
class Quantized:
    """The quantized .tflite with the float graph's tensor names (compact() shortens them only when it is written),
    the recipe that made it, and the mixed search's outcome for `mixed`."""

    artifact: bytes
    recipe: list[dict[str, Any]] | None
    mixed: Any = None
    calibration_runs: int = 0


def without_loops(source: Any, float_tflite: bytes, float_census: Any, batch_size: int | None, prec: Precision
                  ) -> tuple[Any, bytes, Any, list[str]]:
    """Static quantization cannot calibrate a WHILE loop (Keras recurrent layers): unroll them when the source can
    (same weights, same outputs), else refuse with the alternatives."""
    if not any(o.op == "WHILE" for o in float_census.ops):
        return source, float_tflite, float_census, []
    unrolled, why = source.unroll_loops()
    if unrolled is not None:
        float_tflite = unrolled.to_float_tflite(batch_size)
        float_census = census(float_tflite)
        if not any(o.op == "WHILE" for o in float_census.ops):
            return unrolled, float_tflite, float_census, why
    raise UnsupportedOpsError(
        f"precision {prec.value!r} needs every op calibrated, but the model's recurrent layer(s) lower to a WHILE loop, "
        "which the AI Edge Quantizer cannot calibrate" + (f" ({'; '.join(why)})" if why else "") + ". Options: give the "
        "recurrent layers a fixed sequence length so edgemp can unroll them (or build them with unroll=True) for a "
        "fully integer model; or precision 'dynamic-int8' (int8 weights, float compute; works with loops) or 'fp16'.",
        ops=["WHILE"])


def validation_data(validation: Any, specs: list[Any], pre: Any, cal: CalibrationSet | None, max_samples: int | None,
                    seed: int, progress: bool | None, class_names: Sequence[str] | None,
                    opaque_labels: bool = False) -> tuple[ValidationData, str | None]:
    """The given validation data, else the calibration samples, else seeded random inputs — labelled as such."""
    if validation is not None:
        names = list(class_names) if class_names is not None else None
        return load_validation(validation, specs, pre, max_samples, progress, names, opaque_labels), None
    if cal is not None:
        inputs = {k: np.concatenate([s[k] for s in cal.samples]) for k in cal.samples[0]}
        return (ValidationData(inputs, None, None, "calibration samples", []),
                "no validation data given: fidelity measured on the calibration samples, accuracy not measured")
    return (random_inputs(specs, 32, seed),
            "no validation or calibration data given: fidelity measured on random inputs only")
