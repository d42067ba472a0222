"""Model sources, registered by kind. `load_source` picks one from a model object or a path."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgemp.errors import InputError, ModelLoadError, UnsupportedModelError
from edgemp.sources.base import Source, TensorSpec

# kind -> (accepts(model) -> bool, load(model) -> Source). Loaders import their framework lazily.
_REGISTRY: dict[str, tuple[Callable[[Any], bool], Callable[..., Source]]] = {}
# kind -> (precisions, targets) the source converts to, when it is limited (a QAT module: int8, tflite); others refuse
_LIMITS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}

KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")


def register_source(kind: str, accepts: Callable[[Any], bool], load: Callable[..., Source], *,
                    precisions: tuple[str, ...] | None = None, targets: tuple[str, ...] | None = None) -> None:
    """`precisions`/`targets`: what the source converts to when not everything (the rest gets an InputError)."""
    _REGISTRY[kind] = (accepts, load)
    if precisions is not None or targets is not None:
        _LIMITS[kind] = (precisions or (), targets or ())


def source_limits(kind: str) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    """(precisions, targets) a source kind is limited to; None: every registered precision and target."""
    return _LIMITS.get(kind)


def registered_sources() -> list[str]:
    return sorted(_REGISTRY)


def load_source(model: Any, **options: Any) -> Source:
    """Return a Source for a model object or a model path; bad paths raise ModelLoadError naming the fix.

    `options` go to the loader (PyTorch: example_input, input_layout; Keras: unsafe_load); loaders ignore those they
    do not use.
    """
    if isinstance(model, str | os.PathLike):
        _check_path(Path(model))
    for kind, (accepts, load) in _REGISTRY.items():
        if accepts(model):
            return load(model, **options)
    if isinstance(model, str | os.PathLike):
        raise UnsupportedModelError(
            f"unsupported model file {model}: edgemp reads Keras models ({', '.join(KERAS_SUFFIXES)}), "
            "SavedModel directories and torch.export archives (.pt2). A .tflite is already converted: use `edgemp validate` or `edgemp inspect`."
        )
    raise UnsupportedModelError(
        f"unsupported model object of type {type(model).__module__}.{type(model).__qualname__}; pass a keras.Model, "
        "a torch nn.Module or ExportedProgram, or a path to a .keras/.h5/.pt2 file or a SavedModel directory."
    )


def _check_path(path: Path) -> None:
    if not path.exists():
        raise ModelLoadError(f"model path {path} does not exist; check the path.")
    if path.is_file() and not os.access(path, os.R_OK):
        raise ModelLoadError(f"model file {path} is not readable (permissions); fix its permissions.")
    if path.is_dir() and not (path / "saved_model.pb").exists():
        raise UnsupportedModelError(
            f"directory {path} is not a SavedModel (no saved_model.pb); pass a .keras/.h5 file or a SavedModel dir."
        )


def _is_keras(model: Any) -> bool:
    if isinstance(model, str | os.PathLike):
        p = Path(model)
        return p.suffix.lower() in KERAS_SUFFIXES or (p.is_dir() and (p / "saved_model.pb").exists())
    mod = type(model).__module__
    return mod.startswith("keras") and hasattr(model, "inputs") and hasattr(model, "outputs")


def _load_keras(model: Any, unsafe_load: bool = False, input_layout: Any = None, **_: Any) -> Source:
    from edgemp.sources.keras import load_keras

    if input_layout is not None:
        raise InputError(f"input_layout={input_layout!r} applies to PyTorch sources; a Keras model keeps its own "
                         "layout (NHWC).")
    return load_keras(model, unsafe_load=unsafe_load)


def _is_torch(model: Any) -> bool:
    from edgemp.sources.torch import is_torch_model

    return is_torch_model(model)


def _load_torch(model: Any, unsafe_load: bool = False, **options: Any) -> Source:  # unsafe_load: Keras files only
    from edgemp.sources.torch import load_torch

    return load_torch(model, **options)


def is_qat_module(model: Any) -> bool:
    """A module from edgemp.prepare_qat (checked without importing torch)."""
    return type(model).__name__ == "QATModel" and type(model).__module__ == "edgemp.qat.model"


def _is_qat(model: Any) -> bool:
    return is_qat_module(model)


def _load_qat(model: Any, **options: Any) -> Source:
    from edgemp.sources.torch_qat import load_qat

    return load_qat(model, **options)


register_source("keras", _is_keras, _load_keras)
# before pytorch (a QAT module is an nn.Module too); its learned int8 scales make an int8 .tflite only
register_source("pytorch-qat", _is_qat, _load_qat, precisions=("int8", "mixed"), targets=("tflite", "coreml"))
register_source("pytorch", _is_torch, _load_torch)

__all__ = ["Source", "TensorSpec", "is_qat_module", "load_source", "register_source", "registered_sources",
           "source_limits"]
