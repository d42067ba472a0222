"""What every model source gives the pipeline: a float .tflite, a float reference to compare with, and specs."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Protocol

import numpy as np

from edgemp.config import Layout


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int | None, ...]  # None = dynamic (usually the batch)
    dtype: str = "float32"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": [-1 if d is None else d for d in self.shape], "dtype": self.dtype}


class Source(Protocol):
    """A loaded model. Heavy frameworks are imported by the concrete class, never at `import edgemp`."""

    kind: ClassVar[str]
    onnx_exporter: ClassVar[str | None]  # what exports it to ONNX (the ONNX target); None: no ONNX export
    name: str
    path: str | None
    data_layout: Layout  # layout of the data users give (image folders are read into it)
    artifact_layout: Layout  # layout of the artifact's 4-D inputs
    # predict() may run on another thread while to_float_tflite() converts (edgemp.mixed.session.reference_ahead)
    predicts_during_conversion: ClassVar[bool]

    def input_specs(self) -> list[TensorSpec]: ...

    def to_float_tflite(self, batch_size: int | None = 1) -> bytes: ...

    def artifact_inputs(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """User-layout batch -> the artifact's layout (identity unless the source changes the layout)."""
        ...

    def predict(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Float reference outputs for a batch, in the artifact's output order."""
        ...

    def num_parameters(self) -> int | None: ...

    def output_names(self) -> list[str]:
        """The artifact's output names in the source's order (predict() gives outputs in this order)."""
        ...

    def output_channels_first(self) -> list[bool]:
        """Per output, in order: True when its channels (classes) are on axis 1 (NCHW), not the last axis."""
        ...

    def layers(self) -> list[tuple[str, str]]:
        """(name, class name) of the source's layers in model order (may be empty): reports map ops to these."""
        ...

    def scope_aliases(self) -> dict[str, list[tuple[str | None, str]]]:
        """Scope components the converter writes into tensor names -> [(enclosing scope or None, layer name)]:
        how per-layer reports find the user's layer names when scopes are not names (may be empty)."""
        ...

    def unroll_loops(self) -> tuple[Source | None, list[str]]:
        """The same model with its loops unrolled (static quantization cannot calibrate WHILE), and what was done;
        (None, reasons) when it cannot."""
        ...

    def coreml_frontend(self) -> Any:
        """What the Core ML target needs from this kind of model (edgemp.sources.coreml_frontends); InputError when
        coremltools cannot take it."""
        ...

    # A source registered with limits (register_source(..., precisions=, targets=)) also has
    # limits_message(precision, refused_targets) -> str: the InputError text for what it does not convert to.

    def to_float_onnx(self, batch_size: int | None, opset: int) -> tuple[Any, str, dict[str, str]]:
        """(onnx.ModelProto in the source's own layout, exporter description, ONNX node -> source layer), through
        the framework's exporter (edgemp.sources.onnx_export)."""
        ...

    def framework_versions(self) -> dict[str, str]: ...
