"""Keras 3 models (object, .keras, .h5) and TF SavedModel directories -> float .tflite + float reference."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from edgemp.config import Layout
from edgemp.errors import ConversionError, ModelLoadError, UnsupportedModelError, UnsupportedOpsError
from edgemp.sources.base import TensorSpec
from edgemp.sources.keras_export import keras_converter

log = logging.getLogger(__name__)


def import_tf() -> Any:
    """Import TensorFlow quietly (its C++ logging floods the terminal otherwise), after settling the Triton/TensorFlow
    import order for a torch import later in the process (edgemp._compat)."""
    from edgemp._compat import prepare_torch_import

    prepare_torch_import()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    tf.get_logger().setLevel(logging.ERROR)
    return tf


def load_keras(model: Any, unsafe_load: bool = False) -> KerasSource | SavedModelSource:
    """A Source for a keras.Model, a .keras/.h5 file or a SavedModel directory.

    Keras' safe mode stays on: a file holding Python code (a Lambda layer's bytecode) is refused with ModelLoadError,
    because loading it would run that code. `unsafe_load=True` loads it anyway (safe_mode=False), with a warning.
    """
    if isinstance(model, str | os.PathLike):
        path = Path(model)
        if path.is_dir():
            return SavedModelSource(path)
        import_tf()
        import keras

        if unsafe_load:
            log.warning("unsafe load of %s: Keras safe mode is off, so Python code stored in the file (Lambda layers) "
                        "is executed now, with your permissions; only do this with files you trust as a script", path)
        try:
            loaded = keras.saving.load_model(path, compile=False, safe_mode=not unsafe_load)
        except Exception as exc:  # keras raises zipfile/OSError/ValueError/TypeError for bad files
            causes, e = [], exc  # Keras' refusal says "pass `safe_mode=False`", maybe inside another exception
            while e is not None and len(causes) < 8:
                causes.append(str(e))
                e = e.__cause__ or e.__context__
            if not unsafe_load and any("safe_mode=False" in t or "enable_unsafe_deserialization" in t for t in causes):
                raise ModelLoadError(
                    f"{path} contains Python code (a Lambda layer's bytecode), which loading would execute; edgemp "
                    "does not run code from model files. If you trust the file as you would a script, load it with "
                    "--unsafe-load (Python: unsafe_load=True); better, replace the Lambda with a custom layer "
                    "registered with @keras.saving.register_keras_serializable (importable wherever the model is "
                    "loaded) and save the model again."
                ) from exc
            raise ModelLoadError(
                f"cannot load Keras model {path}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}. "
                "The file is corrupt, truncated or not a Keras model; re-save it with model.save('model.keras')."
            ) from exc
        src = KerasSource(loaded, path=str(path))
        src.from_file = True
        return src
    return KerasSource(model)


_DETAIL_OP = re.compile(r"^\s*(tf\.[A-Za-z0-9_]+)\(", re.MULTILINE)
_SELECT_OPS = re.compile(r"(?:TF Select ops|Flex ops|Custom ops):\s*(.+)")
_OP_LOCATION = re.compile(r'fused\["([A-Za-z0-9_]+):", "([^"@]+)@')


def unsupported_ops(text: str) -> tuple[list[str], dict[str, str]]:
    """Op names and, where the converter says, the layer path of each (from its MLIR locations)."""
    ops = set(_DETAIL_OP.findall(text))
    for line in _SELECT_OPS.findall(text):
        ops.update(f"tf.{o.strip().removeprefix('Flex')}" for o in line.split(",") if o.strip())
    where: dict[str, str] = {}
    for op, loc in _OP_LOCATION.findall(text):
        where.setdefault(f"tf.{op}", loc.rsplit("/", 1)[0])
    return sorted(ops), where


def convert_with_tf(make_converter: Any, what: str) -> bytes:
    """Run a TFLiteConverter, turning its errors into typed ones that name the unsupported ops."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # Keras' export prints "Saved artifact at ..."
            return bytes(make_converter().convert())
    except Exception as exc:
        text = str(exc)
        ops, where = unsupported_ops(text)
        if ops or "not supported" in text:
            named = [f"{op} (in {where[op]})" if op in where else op for op in ops]
            raise UnsupportedOpsError(
                f"{what} uses ops the TFLite builtin op set cannot express: {', '.join(named) or 'see details'}. "
                "Replace them with supported layers (or implement them with basic ops) and convert again.",
                ops=ops,
            ) from exc
        raise ConversionError(f"TFLite conversion of {what} failed: {text.strip().splitlines()[-1] if text else exc!r}") from exc


class KerasSource:
    kind: ClassVar[str] = "keras"
    onnx_exporter: ClassVar[str | None] = "tf2onnx"
    data_layout: ClassVar[Layout] = Layout.NHWC
    artifact_layout: ClassVar[Layout] = Layout.NHWC
    predicts_during_conversion: ClassVar[bool] = True
    from_file = False  # loaded from `path` as it is (not a clone edgemp made of it)

    def __init__(self, model: Any, path: str | None = None) -> None:
        self.model = model
        self.path = path
        self.name = _safe_name(Path(path).stem if path else getattr(model, "name", "model"))
        out = _output_structure(model)
        values = list(out.values()) if isinstance(out, dict) else list(out) if isinstance(out, list | tuple) else [out]
        nested = [i for i, v in enumerate(values) if isinstance(v, dict | list | tuple)]
        if nested:
            raise UnsupportedModelError(
                f"Keras model {self.name!r} returns a nested structure (output {nested[0]} is a "
                f"{type(values[nested[0]]).__name__}); Keras' export, and so TFLite, takes a tensor, a list or a flat dict "
                "of tensors. Return a flat dict, e.g. {'det_boxes': boxes, 'det_scores': scores, 'seg': seg}.")

    def input_specs(self) -> list[TensorSpec]:
        return [
            TensorSpec(_input_name(t), tuple(t.shape), str(getattr(t.dtype, "name", t.dtype)))
            for t in self.model.inputs
        ]

    def fingerprint(self) -> str | None:
        """What the float conversion depends on, for a model loaded from a file: its bytes (None in memory: custom
        layers' Python code is not in the weights or the config, so nothing safe to key on)."""
        from edgemp._diskcache import file_digest

        return file_digest(self.path) if self.path and self.from_file else None

    def to_float_tflite(self, batch_size: int | None = 1) -> bytes:
        """A fixed batch (1, as on devices) lets shape arithmetic fold away: with a dynamic batch, Flatten leaves
        SHAPE/PACK ops that the quantizer must feed through a float DEQUANTIZE (the artifact is then not fully int8)."""
        tf = import_tf()
        model = self.model if batch_size is None else _with_batch(self.model, batch_size)
        with keras_converter(tf, model) as make:  # from_keras_model's bytes, without its export archive
            return convert_with_tf(make, f"Keras model {self.name!r}")

    def artifact_inputs(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return batch

    def predict(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Through one traced graph (any batch): Keras' eager call dispatches op by op, 3-4x slower on a CNN
        (EfficientNetB0, 132 images: 20 s eager, 5 s traced), and the float reference runs in every conversion.
        A model that cannot be traced (Python side effects in a custom layer) runs eagerly."""
        specs = self.input_specs()
        arrays = [inputs[s.name] for s in specs]
        fn = self._graph_fn()
        if fn is not None:
            try:  # float64 data into a float32 input (int64 ids into int32) as Keras' own call casts them
                return [np.asarray(o) for o in _flat(fn(*(_cast(a, s.dtype) for a, s in zip(arrays, specs))))]
            except Exception as exc:  # noqa: BLE001 - eager below is the reference; the traced graph only a speed-up
                log.debug("traced predict failed (%s); running the Keras model eagerly", exc)
                self._traced = False
        args: Any = arrays[0] if len(arrays) == 1 else arrays
        return [np.asarray(o) for o in _flat(self.model(args, training=False))]

    def _graph_fn(self) -> Any:
        if getattr(self, "_traced", None) is None:
            tf = import_tf()
            model = self.model
            specs = [tf.TensorSpec((None, *t.shape[1:]), t.dtype) for t in model.inputs]
            self._traced = tf.function(lambda *xs: model(xs[0] if len(xs) == 1 else list(xs), training=False),
                                       input_signature=specs)
        return self._traced or None

    def num_parameters(self) -> int | None:
        return int(self.model.count_params())

    def output_names(self) -> list[str]:
        """What the TFLite converter names the outputs: a dict output's keys (in the model's order; the signature
        lists them sorted), else output_<i> by list position (layer names are not used)."""
        out = _output_structure(self.model)
        if isinstance(out, dict):
            return [str(k) for k in out]
        return [f"output_{i}" for i in range(len(self.model.outputs))]

    def output_channels_first(self) -> list[bool]:
        return [False] * len(self.model.outputs)

    def predict_fp16(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The model with float16 weights and compute (a clone under the float16 dtype policy): what an fp16 Core
        ML model computes, emulated where Core ML cannot run."""
        import keras

        if getattr(self, "_fp16", None) is None:
            def clone(layer: Any) -> Any:
                cfg = layer.get_config()
                cfg["dtype"] = "float16"
                return layer.__class__.from_config(cfg)

            m = keras.models.clone_model(self.model, clone_function=clone)
            m.set_weights([w.astype(np.float16) if w.dtype.kind == "f" else w for w in self.model.get_weights()])
            self._fp16 = m
        names = [s.name for s in self.input_specs()]
        args = [inputs[n].astype(np.float16) for n in names]
        out = self._fp16(args[0] if len(args) == 1 else args, training=False)
        return [np.asarray(o).astype(np.float32) for o in _flat(out)]

    def layers(self) -> list[tuple[str, str]]:
        """(name, class) of every layer in model order, nested models flattened: what reports call layers."""
        def walk(m: Any) -> list[tuple[str, str]]:
            return [x for lay in getattr(m, "layers", []) for x in [(lay.name, type(lay).__name__), *walk(lay)]]

        return walk(self.model)

    def scope_aliases(self) -> dict[str, list[tuple[str | None, str]]]:
        return scope_aliases(self.model)

    def coreml_frontend(self) -> Any:
        from edgemp.sources.coreml_frontends import KerasCoreML

        return KerasCoreML(self)

    def to_float_onnx(self, batch_size: int | None, opset: int) -> tuple[Any, str, dict[str, str]]:
        """NHWC as the model takes it (tf2onnx places the transposes TensorRT folds)."""
        from edgemp.sources.onnx_export import keras_to_onnx

        return keras_to_onnx(self, batch_size, opset)

    def unroll_loops(self) -> tuple[KerasSource | None, list[str]]:
        """The model with its recurrent layers unrolled (same weights, same outputs): static quantization cannot
        calibrate the WHILE loop Keras lowers them to. None (with the reason) when a sequence length is dynamic."""
        import keras

        rnns = [lay for lay in _all_layers(self.model) if isinstance(lay, keras.layers.RNN | keras.layers.Bidirectional)]
        if not rnns:
            return None, []
        steps = {}
        for lay in rnns:
            t = _timesteps(lay)
            if t is None:
                return None, [f"{lay.name}: the sequence length is dynamic, so it cannot be unrolled"]
            steps[lay.name] = t

        def clone(layer: Any) -> Any:
            cfg = layer.get_config()
            if isinstance(layer, keras.layers.RNN):
                cfg["unroll"] = True
            elif isinstance(layer, keras.layers.Bidirectional):
                for key in ("layer", "backward_layer"):
                    if isinstance(cfg.get(key), dict):
                        cfg[key]["config"]["unroll"] = True
            return layer.__class__.from_config(cfg)

        try:
            unrolled = keras.models.clone_model(self.model, clone_function=clone, recursive=True)
            unrolled.set_weights(self.model.get_weights())
        except Exception as exc:  # noqa: BLE001 - a model we cannot clone keeps its loop; the caller explains
            return None, [f"cloning with unrolled recurrent layers failed ({type(exc).__name__}: {exc})"]
        src = KerasSource(unrolled, self.path)
        src.name = self.name
        return src, [f"{name}: unrolled over {t} steps for static quantization (same weights)" for name, t in steps.items()]

    def framework_versions(self) -> dict[str, str]:
        import keras

        return {"tensorflow": import_tf().__version__, "keras": keras.__version__}


def scope_aliases(model: Any) -> dict[str, list[tuple[str | None, str]]]:
    """TF name scope of each layer call, as the converter writes it into tensor names -> [(scope of the enclosing
    model or None at the top, layer name)].

    Each layer takes its name in TF's uniquifying scope twice (build, then call) in model order, so the scopes are
    `conv2d` -> `conv2d_1`, and a layer *named* `conv2d_1` -> `conv2d_1_2`: scope names collide with other layers'
    names (keras.Sequential and cloned models), so they are never read as layer names directly.
    """
    aliases: dict[str, list[tuple[str | None, str]]] = {}

    def walk(m: Any, parent: str | None) -> None:
        used: dict[str, int] = {}

        def claim(name: str) -> str:
            key = name.lower()
            i = used.get(key, 0)
            used[key] = i + 1
            if i == 0:
                return name
            while f"{key}_{i}" in used:
                i += 1
            used[f"{key}_{i}"] = 1
            return f"{name}_{i}"

        for layer in getattr(m, "layers", []):
            if type(layer).__name__ == "InputLayer":
                continue
            claim(layer.name)
            scope = claim(layer.name)
            if getattr(layer, "layers", None):
                walk(layer, scope)  # a nested model is a scope, not a layer of any op
            else:
                aliases.setdefault(scope, []).append((parent, layer.name))

    walk(model, None)
    return aliases


class SavedModelSource:
    kind: ClassVar[str] = "saved_model"
    onnx_exporter: ClassVar[str | None] = None  # no ONNX target: load the Keras model instead
    data_layout: ClassVar[Layout] = Layout.NHWC
    artifact_layout: ClassVar[Layout] = Layout.NHWC
    predicts_during_conversion: ClassVar[bool] = True

    def __init__(self, path: Path) -> None:
        tf = import_tf()
        self.path = str(path)
        self.name = _safe_name(path.name)
        try:
            self._loaded = tf.saved_model.load(str(path))
            self._fn = self._loaded.signatures["serving_default"]
        except Exception as exc:
            raise ModelLoadError(
                f"cannot load SavedModel {path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}. "
                "It must have a 'serving_default' signature (keras: model.export(path))."
            ) from exc

    def input_specs(self) -> list[TensorSpec]:
        _, kwargs = self._fn.structured_input_signature
        return [TensorSpec(k, tuple(v.shape), v.dtype.name) for k, v in sorted(kwargs.items())]

    def fingerprint(self) -> str | None:
        from edgemp._diskcache import file_digest

        return file_digest(self.path)

    def to_float_tflite(self, batch_size: int | None = 1) -> bytes:
        """With batch_size, the serving signature is re-traced with that batch (see KerasSource)."""
        tf = import_tf()
        what = f"SavedModel {self.path}"
        if batch_size is None:
            return convert_with_tf(lambda: tf.lite.TFLiteConverter.from_saved_model(self.path), what)
        _, kwargs = self._fn.structured_input_signature
        specs = {k: tf.TensorSpec((batch_size, *v.shape[1:]), v.dtype, name=k) for k, v in kwargs.items()}
        fixed = tf.function(lambda **kw: self._fn(**kw)).get_concrete_function(**specs)
        return convert_with_tf(lambda: tf.lite.TFLiteConverter.from_concrete_functions([fixed], self._loaded), what)

    def artifact_inputs(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return batch

    def predict(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        out = self._fn(**{k: import_tf().constant(v) for k, v in inputs.items()})
        return [np.asarray(out[k]) for k in sorted(out, key=_output_sort_key)]

    def num_parameters(self) -> int | None:
        return int(sum(np.prod(v.shape) for v in getattr(self._loaded, "variables", [])))

    def output_names(self) -> list[str]:
        return sorted(self._fn.structured_outputs, key=_output_sort_key)

    def output_channels_first(self) -> list[bool]:
        return [False] * len(self._fn.structured_outputs)

    def layers(self) -> list[tuple[str, str]]:
        return []  # a SavedModel keeps no layer list: per-layer reports show op names

    def scope_aliases(self) -> dict[str, list[tuple[str | None, str]]]:
        return {}

    def unroll_loops(self) -> tuple[None, list[str]]:
        return None, ["a SavedModel keeps no layers to rebuild: export it from a Keras model with unroll=True"]

    def coreml_frontend(self) -> Any:
        from edgemp.sources.coreml_frontends import SavedModelCoreML

        return SavedModelCoreML(self)

    def framework_versions(self) -> dict[str, str]:
        return {"tensorflow": import_tf().__version__}


def _output_structure(model: Any) -> Any:
    """The model's output as built (a dict keeps its keys); a Sequential never called has only `outputs`."""
    try:
        return model.output
    except (AttributeError, ValueError):
        return list(model.outputs)


def _all_layers(model: Any) -> list[Any]:
    return [x for lay in getattr(model, "layers", []) for x in [lay, *_all_layers(lay)]]


def _timesteps(layer: Any) -> int | None:
    try:
        shape = layer.input.shape if not isinstance(layer.input, list) else layer.input[0].shape
    except (AttributeError, ValueError):
        return None
    return int(shape[1]) if len(shape) > 2 and shape[1] is not None else None


def _cast(a: np.ndarray, dtype: str) -> np.ndarray:
    a = np.asarray(a)
    want = np.dtype(dtype)
    return a.astype(want) if a.dtype != want and a.dtype.kind == want.kind else a


def _flat(out: Any) -> list[Any]:
    if isinstance(out, dict):
        return list(out.values())
    return list(out) if isinstance(out, list | tuple) else [out]


def _with_batch(model: Any, batch_size: int) -> Any:
    import keras

    if all(t.shape[0] == batch_size for t in model.inputs):
        return model
    inputs = [keras.Input(batch_shape=(batch_size, *t.shape[1:]), name=_input_name(t), dtype=t.dtype) for t in model.inputs]
    return keras.Model(inputs, model(inputs[0] if len(inputs) == 1 else inputs), name=model.name)


def _input_name(t: Any) -> str:
    name = getattr(t, "name", "input")
    return name.split(":")[0]


def _output_sort_key(name: str) -> tuple[int, str]:
    m = re.search(r"(\d+)$", name)
    return (int(m.group(1)) if m else 0, name)


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "model"
