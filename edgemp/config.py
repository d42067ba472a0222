"""Shared enums and frozen option dataclasses (one place, with to_dict/from_dict), used by every stage."""

from __future__ import annotations

import dataclasses
import enum
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from edgemp import _params as P
from edgemp.errors import InputError, UnknownPrecisionError

E = TypeVar("E", bound=enum.Enum)


def parse_enum(cls: type[E], value: Any, what: str) -> E:
    """Accept an enum member or its string value; an unknown name lists the valid ones."""
    if isinstance(value, cls):
        return value
    for member in cls:
        if isinstance(value, str) and value.lower() == str(member.value).lower():
            return member
    valid = ", ".join(repr(m.value) for m in cls)
    raise UnknownPrecisionError(f"unknown {what} {value!r}; valid values: {valid}")


class IODType(str, enum.Enum):
    """I/O of a statically quantized model: the quantized type (default) or float32 on request."""

    QUANTIZED = "quantized"
    FLOAT = "float"


class ResizePolicy(str, enum.Enum):
    STRETCH = "stretch"  # resize to the target size, ignoring aspect ratio
    CENTER_CROP = "center-crop"  # resize the short side, then crop the center
    LETTERBOX = "letterbox"  # fit inside, pad with zeros


class ColorMode(str, enum.Enum):
    AUTO = "auto"  # from the model's channel count: 1 -> grayscale, 3 -> rgb
    RGB = "rgb"
    BGR = "bgr"
    GRAYSCALE = "grayscale"


class Layout(str, enum.Enum):
    NHWC = "NHWC"
    NCHW = "NCHW"


T = TypeVar("T", bound="_Config")


class _Config:
    def to_dict(self) -> dict[str, Any]:
        def conv(v: Any) -> Any:
            if isinstance(v, enum.Enum):
                return v.value
            if isinstance(v, tuple | list):
                return [conv(x) for x in v]
            if dataclasses.is_dataclass(v) and not isinstance(v, type):
                return v.to_dict()  # type: ignore[attr-defined]
            return v

        return {f.name: conv(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls: type[T], data: Mapping[str, Any]) -> T:
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = set(data) - names
        if unknown:
            raise InputError(f"unknown {cls.__name__} field(s) {sorted(unknown)}; valid: {sorted(names)}")
        return cls(**dict(data))


@dataclasses.dataclass(frozen=True)
class Preprocessing(_Config):
    """How an image file becomes a model input; the same spec is recorded for the app to reproduce.

    value = (pixel * scale - mean) / std, per channel, after resize and color conversion.
    size=None takes (height, width) from the model input.
    """

    size: tuple[int, int] | None = None
    resize: ResizePolicy = ResizePolicy.STRETCH
    color: ColorMode = ColorMode.AUTO
    scale: float = 1.0 / 255.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    layout: Layout = Layout.NHWC

    def __post_init__(self) -> None:
        object.__setattr__(self, "resize", parse_enum(ResizePolicy, self.resize, "resize policy"))
        object.__setattr__(self, "color", parse_enum(ColorMode, self.color, "color mode"))
        object.__setattr__(self, "layout", parse_enum(Layout, self.layout, "layout"))
        if self.size is not None:
            size = tuple(int(s) for s in self.size)
            if len(size) != 2 or min(size) <= 0:
                raise InputError(f"preprocessing size must be (height, width) with positive values, got {self.size!r}")
            object.__setattr__(self, "size", size)
        mean = _floats(self.mean, "mean")
        std = _floats(self.std, "std")
        if any(s == 0 for s in std):
            raise InputError("preprocessing std must not contain 0")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)
        if not self.scale or self.scale <= 0:
            raise InputError(f"preprocessing scale must be positive, got {self.scale!r}")


def _floats(v: float | Sequence[float], what: str) -> tuple[float, ...]:
    vals = (float(v),) if isinstance(v, int | float) else tuple(float(x) for x in v)
    if not vals or len(vals) not in (1, 3):
        raise InputError(f"preprocessing {what} must have 1 or 3 values, got {v!r}")
    return vals


@dataclasses.dataclass(frozen=True)
class DelegateSpec(_Config):
    """An external TFLite delegate: a shared library path and its string options."""

    path: str
    options: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "options": dict(self.options)}


@dataclasses.dataclass(frozen=True)
class RuntimeOptions(_Config):
    """How the host LiteRT interpreter runs an artifact for validation and latency."""

    num_threads: int = 1
    xnnpack: bool = True
    delegates: tuple[DelegateSpec, ...] = ()
    latency_runs: int = 50
    warmup_runs: int = 5

    def __post_init__(self) -> None:
        object.__setattr__(self, "num_threads", P.integer("num_threads", self.num_threads, 1, 1024))
        object.__setattr__(self, "xnnpack", P.flag("xnnpack", self.xnnpack))
        object.__setattr__(self, "latency_runs", P.integer("latency_runs", self.latency_runs, 0))
        object.__setattr__(self, "warmup_runs", P.integer("warmup_runs", self.warmup_runs, 0))
        if isinstance(self.delegates, str | bytes) or not isinstance(self.delegates, Sequence):
            raise InputError(f"delegates must be a list of delegate paths or DelegateSpec, got {self.delegates!r}")
        specs = tuple(d if isinstance(d, DelegateSpec) else _delegate_from(d) for d in self.delegates)
        object.__setattr__(self, "delegates", specs)


def _delegate_from(d: Any) -> DelegateSpec:
    if isinstance(d, str):
        return DelegateSpec(d)
    if isinstance(d, Mapping):
        return DelegateSpec(str(d["path"]), {str(k): str(v) for k, v in dict(d.get("options", {})).items()})
    raise InputError(f"a delegate is a path or {{'path': ..., 'options': {{...}}}}, got {d!r}")


@dataclasses.dataclass(frozen=True)
class GateOptions(_Config):
    """How an artifact is judged against the float model.

    With a `metric` (a callable `metric(outputs: dict[str, ndarray], labels) -> float`, higher is better), the gate
    is its drop; with labels, the top-1 (classifiers) or mIoU (label maps) drop of the labelled output; the other
    outputs, and every output without labels, must keep the fidelity floor (`min_sqnr_db` / `min_cosine`, by
    default the precision's floor in edgemp.precisions). `max_accuracy_drop` is absolute (0.01 = one point; metric units
    with a metric); None turns the accuracy gate off. Collapse checks always run.
    """

    max_accuracy_drop: float | None = 0.01
    min_sqnr_db: float | None = None
    min_cosine: float | None = None
    metric: Callable[..., float] | None = None
    output_tasks: Mapping[str, str] = dataclasses.field(default_factory=dict)
    label_output: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "max_accuracy_drop", P.real("max_accuracy_drop (0.01 = one point)",
                                                             self.max_accuracy_drop, 0.0, none_ok=True))
        object.__setattr__(self, "min_sqnr_db", P.real("min_sqnr_db (dB, e.g. 20)", self.min_sqnr_db, none_ok=True,
                                                       finite=False))
        object.__setattr__(self, "min_cosine", P.real("min_cosine (e.g. 0.99)", self.min_cosine, -1.0, 1.0,
                                                      none_ok=True))
        object.__setattr__(self, "label_output", P.text("label_output", self.label_output, none_ok=True))
        if self.metric is not None and not callable(self.metric):
            raise InputError(f"metric must be a callable metric(outputs: dict, labels) -> float, got {self.metric!r}")
        if not isinstance(self.output_tasks, Mapping):
            raise InputError(f"output_tasks must map output names to 'classification'/'regression', got {self.output_tasks!r}")
        object.__setattr__(self, "output_tasks", {str(k): str(v) for k, v in self.output_tasks.items()})

    def floor(self, precision: Any) -> tuple[float, float, str]:
        """(min SQNR dB, min cosine, where they come from) for the fidelity gate: the precision's registered floor
        (edgemp.precisions; int8's when the precision is unknown) unless given."""
        from edgemp.precisions import Precision, precision_spec

        sq, cos = precision_spec(precision or Precision.INT8).fidelity_floor
        given = self.min_sqnr_db is not None or self.min_cosine is not None
        origin = "given" if given else f"default for {precision.value if precision else 'int8'}"
        return (self.min_sqnr_db if self.min_sqnr_db is not None else (-math.inf if given else sq),
                self.min_cosine if self.min_cosine is not None else (-1.0 if given else cos), origin)

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d["metric"] = getattr(self.metric, "__name__", repr(self.metric)) if self.metric is not None else None
        d["output_tasks"] = dict(self.output_tasks)
        return d


@dataclasses.dataclass(frozen=True)
class DataOptions(_Config):
    """How much calibration and validation data is read, and how the artifact's batch is fixed."""

    num_calibration_samples: int = 200
    seed: int = 0
    max_validation_samples: int | None = None
    batch_size: int | None = 1
    class_names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "num_calibration_samples",
                           P.integer("num_calibration_samples", self.num_calibration_samples, 1, 10**7))
        object.__setattr__(self, "seed", P.integer("seed", self.seed, 0, 2**32 - 1))
        object.__setattr__(self, "max_validation_samples",
                           P.integer("max_validation_samples", self.max_validation_samples, 1, none_ok=True))
        object.__setattr__(self, "batch_size", P.integer("batch_size", self.batch_size, 1, 4096, none_ok=True))
        names = P.strings("class_names", self.class_names, none_ok=True)
        if names is not None and len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise InputError(f"class_names has duplicates {dup[:5]}; give each class one name, in output order.")
        object.__setattr__(self, "class_names", names)


@dataclasses.dataclass(frozen=True)
class MixedOptions(_Config):
    """precision="mixed": the cap on float layers and the layers forced either way; where the per-layer
    candidates run (`executor` "local": `num_workers` threads in this process, default the CPUs up to 4; or "ray":
    a local Ray started on demand, or the cluster at `ray_address`, with at most `num_workers` tasks in flight)."""

    max_float_layers: int | float = 0.1
    keep_float: tuple[str, ...] = ()
    never_float: tuple[str, ...] = ()
    executor: str = "local"
    ray_address: str | None = None
    num_workers: int | None = None

    def __post_init__(self) -> None:
        if self.executor not in ("local", "ray"):
            raise InputError(f"executor must be 'local' or 'ray', got {self.executor!r}.")
        if self.executor == "local" and self.ray_address is not None:
            raise InputError("ray_address is for executor='ray': pass executor='ray' as well, or leave it out.")
        P.text("ray_address", self.ray_address, none_ok=True)
        P.integer("num_workers", self.num_workers, 1, none_ok=True)
        v = self.max_float_layers
        if isinstance(v, bool) or not isinstance(v, int | float) or v < 0 or (isinstance(v, float) and v >= 1
                                                                                and not float(v).is_integer()):
            raise InputError(f"max_float_layers must be a count >= 0 (3) or a fraction of the model's ops in (0, 1) "
                             f"(0.1), got {v!r}.")
        object.__setattr__(self, "keep_float", P.strings("keep_float", self.keep_float))
        object.__setattr__(self, "never_float", P.strings("never_float", self.never_float))


@dataclasses.dataclass(frozen=True)
class CoreMLOptions(_Config):
    """The Core ML target: its precision (default: the counterpart of the conversion's precision), the layers
    `mixed` keeps in fp32 (names, or 'type:<op>'), an image input with the preprocessing folded in, the minimum
    deployment target."""

    precision: str | None = None
    fp32_ops: tuple[str, ...] = ()
    image_input: bool = False
    minimum_deployment_target: str = "iOS16"

    def __post_init__(self) -> None:
        object.__setattr__(self, "precision", P.text("coreml precision", self.precision, none_ok=True))
        object.__setattr__(self, "fp32_ops", P.strings("coreml_fp32_ops", self.fp32_ops))
        object.__setattr__(self, "image_input", P.flag("coreml_image_input", self.image_input))
        object.__setattr__(self, "minimum_deployment_target",
                           P.text("minimum_deployment_target", self.minimum_deployment_target))


@dataclasses.dataclass(frozen=True)
class OnnxOptions(_Config):
    """The ONNX target (TensorRT-ready, for Jetson): the opset, and float16 I/O for fp16 (float32 I/O otherwise)."""

    opset: int = 18
    fp16_io: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "opset", P.integer("onnx opset", self.opset, 13, 21))
        object.__setattr__(self, "fp16_io", P.flag("onnx_fp16_io", self.fp16_io))


def __getattr__(name: str) -> Any:
    """`Precision` lives with its registry (edgemp.precisions); kept importable from here. FIDELITY_FLOOR is the
    registry's floors as a dict."""
    if name == "Precision":
        from edgemp.precisions import Precision

        return Precision
    if name == "FIDELITY_FLOOR":
        from edgemp.precisions import _REGISTRY

        return {p: s.fidelity_floor for p, s in _REGISTRY.items()}
    raise AttributeError(f"module 'edgemp.config' has no attribute {name!r}")


# flat keywords of earlier releases -> the option group that holds them now
_GROUPS = {
    "data": (DataOptions, {"num_calibration_samples": "num_calibration_samples", "seed": "seed",
                           "max_validation_samples": "max_validation_samples", "batch_size": "batch_size",
                           "class_names": "class_names"}),
    "gate": (GateOptions, {"max_accuracy_drop": "max_accuracy_drop", "min_sqnr_db": "min_sqnr_db",
                           "min_cosine": "min_cosine", "metric": "metric", "output_tasks": "output_tasks",
                           "label_output": "label_output"}),
    "mixed": (MixedOptions, {"max_float_layers": "max_float_layers", "keep_float": "keep_float",
                             "never_float": "never_float", "executor": "executor", "ray_address": "ray_address"}),
    "runtime": (RuntimeOptions, {"num_threads": "num_threads", "xnnpack": "xnnpack", "delegates": "delegates",
                                 "latency_runs": "latency_runs"}),
    "coreml": (CoreMLOptions, {"coreml_precision": "precision", "coreml_fp32_ops": "fp32_ops",
                               "coreml_image_input": "image_input",
                               "minimum_deployment_target": "minimum_deployment_target"}),
    "onnx": (OnnxOptions, {}),
}


def group_options(data: Any, gate: Any, mixed: Any, runtime: Any, coreml: Any, onnx: Any,
                  flat: dict[str, Any]) -> dict[str, Any]:
    """The option groups, from the group objects given and the flat keywords of earlier releases."""
    given = {"data": data, "gate": gate, "mixed": mixed, "runtime": runtime, "coreml": coreml, "onnx": onnx}
    known = {k: g for g, (_, fields) in _GROUPS.items() for k in fields}
    unknown = sorted(set(flat) - set(known))
    if unknown:
        raise InputError(f"convert() got unknown keyword(s) {unknown}; options are grouped as data=, gate=, mixed=, "
                         "runtime=, coreml=, onnx= (see help(edgemp.convert)).")
    out = {}
    for group, (cls, fields) in _GROUPS.items():
        mine = {fields[k]: v for k, v in flat.items() if k in fields}
        obj = given[group]
        if obj is not None and not isinstance(obj, cls):
            obj = cls.from_dict(obj) if isinstance(obj, Mapping) else \
                _refuse(f"{group}= must be an edgemp.{cls.__name__} (or a dict of its fields), got {obj!r}")
        if mine:
            if obj is not None:
                raise InputError(f"give the {group} options once: {group}= or the keywords {sorted(mine)}, not both.")
            warnings.warn(f"flat keywords {sorted(k for k in flat if k in fields)} are deprecated: pass {group}="
                          f"edgemp.{cls.__name__}(...)", DeprecationWarning, stacklevel=4)
            obj = cls(**mine)
        out[group] = obj if obj is not None else cls()
    return out


def _refuse(message: str) -> Any:
    raise InputError(message)


def as_preprocessing(value: Any) -> Preprocessing | None:
    if value is None or isinstance(value, Preprocessing):
        return value
    if isinstance(value, Mapping):
        return Preprocessing.from_dict(value)
    raise InputError(f"preprocessing must be an edgemp.Preprocessing or a dict of its fields, got {value!r}.")
