"""Typed errors. Every error names the fix; the CLI maps each family to its own exit code.

Exit codes: 2 bad input (model, data, options, output paths), 3 quality gate failed (collapse or accuracy
drop), 4 the converter cannot lower the model, 1 anything unexpected.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


class EdgempError(Exception):
    """Base class: catch this to handle every error edgemp raises on purpose."""

    exit_code = 1


# -- bad input -------------------------------------------------------------------------------------------
class InputError(EdgempError, ValueError):
    """The user gave something edgemp cannot use; the message says what to change."""

    exit_code = 2


class ModelLoadError(InputError):
    """Model path missing, unreadable, corrupt, or of a type edgemp does not read."""


class UnsupportedModelError(ModelLoadError):
    """A model object or file type no registered source handles."""


class UnknownPrecisionError(InputError):
    """Precision (or I/O dtype, layout...) name not in the list of valid ones."""


class CalibrationError(InputError):
    """Calibration data missing, unreadable, non-finite, or not shaped like the model input."""


class DataError(InputError):
    """Validation/reference data that cannot be used."""


class OutputExistsError(InputError):
    """An output would be overwritten; pass force=True / --force."""


class OutputNotWritableError(InputError):
    """The output directory cannot be created or written."""


class DelegateError(InputError):
    """An external delegate that was asked for did not load (never a silent CPU fallback)."""


class NotATFLiteModelError(InputError):
    """A file given as a .tflite model is not a TFLite flatbuffer (or is truncated)."""


class DeviceError(InputError):
    """A device or tool needed to benchmark on it (adb, a phone, the benchmark binary) is missing or failed."""


class MissingDependencyError(InputError):
    """An optional extra is not installed (the ONNX target needs `edgemp[jetson]`); the message names it."""


class BundleError(InputError):
    """A device bundle that cannot be written or trusted."""


class MissingArtifactError(BundleError):
    """The result has no artifact in the format the device needs (e.g. ios without a Core ML target)."""


class BundleIntegrityError(BundleError):
    """A bundle whose files do not match the checksums and sizes in its manifest, or whose manifest is invalid."""


class UnsafeBundleError(BundleError):
    """A bundle archive that would write outside its folder (zip-slip), holds links, or is too large to unpack."""


# -- conversion ------------------------------------------------------------------------------------------
class ConversionError(EdgempError):
    """The converter or quantizer failed on a valid model."""

    exit_code = 4


class UnsupportedOpsError(ConversionError):
    """The model uses ops the TFLite builtin op set cannot express; `ops` lists them."""

    def __init__(self, message: str, ops: list[str] | None = None) -> None:
        super().__init__(message)
        self.ops = list(ops or [])


class PostProcessingError(UnsupportedOpsError):
    """The model's forward() has post-processing, or ops whose output size depends on tensor values, that the
    converter cannot turn into a static-shape TFLite graph: non-maximum suppression (torchvision.ops.nms /
    batched_nms), boolean-mask indexing (x[mask]), torch.nonzero, top-k with k computed from data, ...

    The fix is to export the network before the post-processing: return the raw boxes (N, A, 4) and class scores
    (N, A, K) as outputs and run decoding/NMS in the app (docs/families.md#detection); a fixed number of
    detections can stay in the model as torch.topk with a constant k, low scores masked by multiplication.

    `ops` lists the framework ops; `findings` holds one dict per place found: "op" (e.g.
    "torchvision.nms.default"), "what" (the op in words), "reason", "module" (the nn.Module path: "" for the model
    itself, None if unknown), "cls" (its class), "file", "line", "code" (the user's source line; None/"" if unknown).
    """

    def __init__(self, message: str, ops: list[str] | None = None,
                 findings: list[dict[str, object]] | None = None) -> None:
        super().__init__(message, ops)
        self.findings = list(findings or [])


class PrecisionLabelError(ConversionError):
    """The artifact does not compute in the precision it is labelled with (e.g. float ops in an int8 model)."""


# -- quality gates ---------------------------------------------------------------------------------------
class QualityGateError(EdgempError):
    """Raised with strict=True (and mapped by the CLI) when validation fails: collapse or accuracy drop."""

    exit_code = 3

    def __init__(self, message: str, report: object | None = None) -> None:
        super().__init__(message)
        self.report = report


class MixedPrecisionError(QualityGateError):
    """precision="mixed" could not meet the budget under max_float_layers; the message gives the best result
    found and what meeting the budget would take. The best artifact and its report are written."""

    def __init__(self, message: str, report: object | None = None, result: object | None = None) -> None:
        super().__init__(message, report)
        self.result = result


# -- anything else ---------------------------------------------------------------------------------------
class InternalError(EdgempError):
    """An unexpected failure inside a stage: a bug in edgemp or in a framework it drives, not something the user
    did. The original exception is chained (`__cause__`); the CLI shows its traceback with --debug."""

    exit_code = 1


def public(fn: Callable[P, R]) -> Callable[P, R]:
    """Public entry points raise EdgempError only: anything else becomes an InternalError that names it."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except EdgempError:
            raise
        except Exception as exc:  # noqa: BLE001 - turned into the documented error type, cause kept
            raise unexpected(exc, f"in edgemp.{fn.__name__}()") from exc

    return wrapper


def unexpected(exc: BaseException, where: str) -> InternalError:
    first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
    return InternalError(f"unexpected {type(exc).__name__} {where}: {first or 'no message'}. This is a bug in edgemp "
                         "or a library it drives, not in your input; please report it with the traceback (CLI: "
                         "--debug).")


# -- warnings --------------------------------------------------------------------------------------------
class RangeMismatchWarning(UserWarning):
    """Calibration data, validation data and the declared image preprocessing do not share a value range (e.g.
    uint8 0..255 arrays for a model fed 0..1): the artifact would be calibrated or judged on the wrong scale.
    Also recorded in the report's calibration/validation `warnings` (edgemp.calibration.checks.range_findings)."""
