"""What the Core ML target needs from each kind of source, behind one interface (Source.coreml_frontend()): how
coremltools converts it, how its outputs are named, its layout, whether it can calibrate activations (w8a8), and
how Core ML op names map back to the source's layers for `mixed`. The target itself never asks what kind of model
it has.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import re
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from edgemp.errors import InputError
from edgemp.sources.base import TensorSpec

log = logging.getLogger(__name__)


def quiet(fn: Any) -> Any:
    """Run a coremltools/torch call without its prints, warnings and logging."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("coremltools").setLevel(logging.ERROR)
        return fn()


class KerasCoreML:
    """Keras 3 models: coremltools' TensorFlow frontend on a functional model at batch 1. Op names are TF scope
    paths (`model/model/conv1_1/BiasAdd`), so a layer's ops are found by its scope or its weights' names."""

    channels_first = False
    supports_w8a8 = False
    names_outputs = False  # coremltools names TF outputs Identity*; they are renamed after conversion
    scope_in_op_names = True

    def __init__(self, source: Any) -> None:
        self.source = source

    def output_specs(self) -> list[TensorSpec]:
        """Keras output layer names (a Sequential: the layer producing each output)."""
        model = self.source.model
        names = list(getattr(model, "output_names", None) or [])
        if len(names) != len(model.outputs):
            names = [t._keras_history[0].name if getattr(t, "_keras_history", None) else f"output_{i}"
                     for i, t in enumerate(model.outputs)]
        return [TensorSpec(re.sub(r"[^A-Za-z0-9_]", "_", n), (1, *t.shape[1:]), str(getattr(t.dtype, "name", t.dtype)))
                for n, t in zip(names, model.outputs, strict=True)]

    def convert(self, kwargs: dict[str, Any], module: Any = None) -> tuple[Any, str]:
        import coremltools as ct
        import keras

        from edgemp.sources.keras import _with_batch

        specs = self.source.input_specs()
        model = _with_batch(self.source.model, 1)
        if isinstance(model, keras.Sequential):  # coremltools needs a functional model ('output_names')
            inp = keras.Input(batch_shape=(1, *specs[0].shape[1:]), name=specs[0].name)
            model = keras.Model(inp, model(inp))
        return quiet(lambda: ct.convert(model, source="tensorflow", **kwargs)), "keras"

    def w8a8_module(self, calibration: Sequence[dict[str, np.ndarray]]) -> Any:
        raise InputError("Core ML w8a8 needs a PyTorch source: activations are calibrated in PyTorch "
                         "(coremltools.optimize.torch), which Keras models cannot go through. Use 'int8-weights' "
                         "(int8 weight storage) for Keras models.")

    def layer_ops(self, names: Sequence[str], outputs: Sequence[str]) -> dict[str, set[str]] | None:
        """A layer producing model output k becomes the op named after TF's output tensor: Identity, Identity_k."""
        found: dict[str, set[str]] = {}
        for k, t in enumerate(getattr(self.source.model, "outputs", [])):
            history = getattr(t, "_keras_history", None)
            layer = history[0] if history else None
            if layer is not None and layer.name in names:
                found.setdefault(layer.name, set()).add("Identity" if k == 0 else f"Identity_{k}")
        return found

    def weight_pattern(self, name: str) -> re.Pattern[str]:
        return re.compile(rf"(^|/){re.escape(name)}(_\d+)?/")

    def predict_fp16(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.source.predict_fp16(inputs)


class SavedModelCoreML:
    """A SavedModel export: coremltools does not convert Keras 3 exports."""

    def __init__(self, source: Any) -> None:
        raise InputError("Core ML conversion needs the Keras model (a .keras/.h5 file or a keras.Model), not a "
                         "SavedModel export: coremltools does not convert Keras 3 SavedModel exports.")


_WEIGHTED = ("conv", "linear", "addmm", "mm", "matmul")  # ATen ops coremltools fuses a following op into
_FUSED = ("batch_norm", "add", "sub", "mul", "div")  # ... and those ops (conv+batch norm -> one conv, named after it)


class TorchCoreML:
    """PyTorch modules: torch.export (what coremltools recommends), tracing when export fails. Core ML keeps
    PyTorch's NCHW layout. Op names are ATen node names (`relu_1`): layers are found through the exported graph's
    nn_module_stack (after tracing, only through the weights)."""

    channels_first = True
    supports_w8a8 = True
    names_outputs = True  # outputs are named at conversion (ct.TensorType(name=...))
    scope_in_op_names = False

    def __init__(self, source: Any) -> None:
        self.source = source
        self.args = tuple(a[:1] for a in source.example_args)

    def output_specs(self) -> list[TensorSpec]:
        """The source's output names (dict keys, output_<i>) at batch 1: the same names as the .tflite's."""
        import torch

        from edgemp.sources.torch import flatten_outputs

        with torch.no_grad():
            outs, _ = flatten_outputs(self.source.module(*self.args))
        return [TensorSpec(n, tuple(o.shape), str(o.dtype).removeprefix("torch."))
                for n, o in zip(self.source.output_names(), outs, strict=True)]

    def convert(self, kwargs: dict[str, Any], module: Any = None) -> tuple[Any, str]:
        """torch.export first; tracing when export or its conversion fails (export rejects data-dependent Python
        control flow, for one; a trace records the branch the example input takes)."""
        import coremltools as ct
        import torch

        from edgemp.sources.torch import named_flat_outputs

        module = module if module is not None else self.source.module
        if self.source._structured:  # dicts and nested outputs: Core ML takes a flat tuple
            module = _as_tuple(named_flat_outputs(module, self.source.output_names()))
        try:
            program = quiet(lambda: torch.export.export(module, self.args).run_decompositions({}))
            return quiet(lambda: ct.convert(program, **kwargs)), "torch.export"
        except Exception as first:  # noqa: BLE001 - the trace is the documented second way
            log.info("Core ML from torch.export failed (%s); trying torch.jit.trace", first)
            try:
                traced = quiet(lambda: torch.jit.trace(module, self.args))
                return quiet(lambda: ct.convert(traced, **kwargs)), "torch.jit.trace"
            except Exception as exc:
                raise exc from first

    def w8a8_module(self, calibration: Sequence[dict[str, np.ndarray]]) -> Any:
        """Observers inserted with coremltools.optimize.torch, calibrated on the same samples, finalized."""
        import torch
        from coremltools.optimize.torch.quantization import (LinearQuantizer, LinearQuantizerConfig,
                                                             ModuleLinearQuantizerConfig)

        if not calibration:
            raise InputError("Core ML w8a8 calibrates activations: pass calibration data")
        cfg = LinearQuantizerConfig(global_config=ModuleLinearQuantizerConfig(
            quantization_scheme="symmetric", milestones=[0, 1000, 1000, 0]))
        model = copy.deepcopy(self.source.module).eval()
        quantizer = LinearQuantizer(model, cfg)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            prepared = quantizer.prepare(example_inputs=self.args, inplace=False)
            quantizer.step()
            with torch.no_grad():
                for sample in calibration:
                    prepared(*[torch.from_numpy(np.ascontiguousarray(sample[f"args_{i}"]))
                               for i in range(len(self.args))])
            return quantizer.finalize(inplace=False).eval()

    def layer_ops(self, names: Sequence[str], outputs: Sequence[str]) -> dict[str, set[str]] | None:
        """Module path -> the names Core ML gives the ops of its torch.export nodes; None when the module cannot be
        exported. A node output k is also called `outputs[k]`; an op fused into a weighted op's single user (conv +
        batch norm becomes one conv named after the batch norm) belongs to the weighted op's module too."""
        import torch

        try:
            with contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                program = torch.export.export(self.source.module, self.args).run_decompositions({})
        except Exception:  # noqa: BLE001 - then Core ML came from tracing: weights only
            return None

        def module(node: Any) -> str:
            stack = list((node.meta.get("nn_module_stack") or {}).values())
            return stack[-1][0] if stack else ""

        found: dict[str, set[str]] = {}
        graph = list(program.graph.nodes)
        out_node = next((nd for nd in graph if nd.op == "output"), None)
        results = list(out_node.args[0]) if out_node is not None and isinstance(out_node.args[0], tuple | list) else []
        for node in graph:
            called = {node.name} | {o for o, r in zip(outputs, results, strict=False) if r is node}
            paths = {module(node)}
            if any(f in str(node.target) for f in _FUSED):
                paths |= {module(p) for p in node.all_input_nodes
                          if len(p.users) == 1 and any(w in str(p.target) for w in _WEIGHTED)}
            for n in names:
                if any(path == n or path.startswith(n + ".") for path in paths):
                    found.setdefault(n, set()).update(called)
        return found

    def weight_pattern(self, name: str) -> re.Pattern[str]:
        """torch weights are `p_<path with _>_weight` (export) or `<path>.weight` (trace)."""
        return re.compile(rf"^(p_)?{re.escape(name.replace('.', '_'))}[._](weight|bias)$")

    def predict_fp16(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.source.predict_fp16(inputs)


def _as_tuple(module: Any) -> Any:
    import torch

    class AsTuple(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, *args: Any) -> tuple[Any, ...]:
            return tuple(self.inner(*args).values())

    return AsTuple(module)
