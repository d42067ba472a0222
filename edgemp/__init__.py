"""edgemp: Keras and PyTorch models -> calibrated, host-validated FP16/INT8/mixed TFLite in one call.

    import edgemp
    result = edgemp.convert("model.keras", precision="int8", calibration="calibration_data/", output_dir="dist/")
"""

__version__ = "0.1.0"

# Framework noise (absl, oneDNN, LiteRT, coremltools) off before any framework loads; EDGEMP_LOG=debug keeps it.
from edgemp._quiet import install as _install_quiet  # noqa: E402

_install_quiet()

from edgemp import errors  # noqa: E402
from edgemp.api import inspect_model, validate  # noqa: E402
from edgemp.config import (CoreMLOptions, DataOptions, DelegateSpec, GateOptions, IODType, MixedOptions,  # noqa: E402
                           OnnxOptions, Preprocessing, RuntimeOptions)
from edgemp.precisions import Precision  # noqa: E402
from edgemp.pipeline import ConvertResult, convert  # noqa: E402
from edgemp.analysis import AnalysisResult, analyze  # noqa: E402
from edgemp.bench import BenchResult, benchmark  # noqa: E402
from edgemp.bundle import Bundle, package, read_bundle, unpack_bundle  # noqa: E402
from edgemp.qat import finetune_qat, prepare_qat  # noqa: E402
from edgemp.grid import SweepResult, sweep  # noqa: E402

__all__ = [
    "AnalysisResult", "BenchResult", "Bundle", "ConvertResult", "CoreMLOptions", "DataOptions", "DelegateSpec",
    "GateOptions", "IODType", "MixedOptions", "OnnxOptions", "Precision", "Preprocessing", "RuntimeOptions",
    "SweepResult", "analyze", "benchmark", "convert", "errors", "finetune_qat", "inspect_model", "package",
    "prepare_qat", "read_bundle", "sweep", "unpack_bundle", "validate",
    "__version__",
]
