"""The Keras -> TFLite float conversion without Keras' export archive: the same .tflite, in about half the time.

`TFLiteConverter.from_keras_model` (TF 2.21, Keras 3) writes the model to a temporary SavedModel through
`keras.export.ExportArchive` and converts that. The archive tracks every layer, traces a function per layer
and the gradient of every op; on EfficientNetB0 that is 24-29 s of a 27-30 s conversion, while the MLIR
conversion itself takes 3 s (cProfile of one conversion). Here the SavedModel holds only what the
converter reads: the same inference function (`model.__call__` with training=False, the same input signature),
the variables it captures, and the two signatures the archive writes ("serve" and "serving_default", so tensor
names come out the same). The converter then reads it as it reads the archive's, and the conversion metadata
records a Keras model, as from_keras_model does: the bytes are those of from_keras_model
(tests/test_keras_export.py). Anything this cannot export (a subclassed model, a resource outside the
model's variables, such as a lookup table) goes the official way.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import shutil
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

log = logging.getLogger(__name__)


@contextlib.contextmanager
def keras_converter(tf: Any, model: Any) -> Iterator[Callable[[], Any]]:
    """A factory for the converter of `model`, valid inside the block (the SavedModel it reads lives there)."""
    folder = tempfile.mkdtemp(prefix="edgemp-keras-export-")
    try:
        with _no_gradient_warning():  # saving and converting a SavedModel that keeps no gradients
            try:
                _save(tf, model, folder)
            except Exception as exc:  # noqa: BLE001 - the official route below is the reference; this a speed-up
                log.debug("direct SavedModel export failed (%s: %s); using TFLiteConverter.from_keras_model",
                          type(exc).__name__, exc)
                yield lambda: tf.lite.TFLiteConverter.from_keras_model(model)
                return
            yield functools.partial(_from_saved_model, tf, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _save(tf: Any, model: Any, folder: str) -> None:
    import keras

    if not isinstance(model, keras.src.models.Functional | keras.src.models.Sequential):
        raise TypeError("not a functional or sequential model")  # no fixed input signature to trace
    # what lite.py's _convert_keras_to_saved_model gives the archive
    signature: Any = tf.nest.map_structure(lambda x: tf.TensorSpec(x.shape, dtype=x.dtype, name=x.name), model.inputs)
    if isinstance(signature, list) and len(signature) > 1:
        signature = [signature]
    serve = tf.function(functools.partial(model.__call__, training=False), input_signature=signature)
    fn = serve.get_concrete_function()
    holder = tf.Module()
    holder.variables_ = [getattr(v, "value", v) for v in model.variables]  # Keras variables wrap tf.Variables
    tf.saved_model.save(holder, folder, signatures={"serve": fn, "serving_default": fn},
                        options=tf.saved_model.SaveOptions(experimental_custom_gradients=False))


def _from_saved_model(tf: Any, folder: str) -> Any:
    from tensorflow.lite.python import conversion_metadata_schema_py_generated as metadata

    converter = tf.lite.TFLiteConverter.from_saved_model(folder, signature_keys=["serving_default"])
    env = getattr(getattr(converter, "_metadata", None), "environment", None)
    if env is not None:  # it is a Keras model: the metadata says so, as from_keras_model's does
        env.modelType = metadata.ModelType.KERAS_MODEL
    return converter


class _DropGradientWarning(logging.Filter):
    """The SavedModel keeps no gradients, and loading it says so; nothing asks it for one (it is converted, not
    trained)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "unsaved custom gradients" not in record.getMessage()


@contextlib.contextmanager
def _no_gradient_warning() -> Iterator[None]:
    absl = logging.getLogger("absl")
    f = _DropGradientWarning()
    absl.addFilter(f)
    try:
        yield
    finally:
        absl.removeFilter(f)
