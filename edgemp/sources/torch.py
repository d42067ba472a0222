"""PyTorch sources (nn.Module + example input, ExportedProgram, .pt2) -> float .tflite via litert-torch.

NHWC artifacts (what Android bitmaps and the LiteRT GPU delegate want) are made by wrapping the module with
litert_torch.to_channel_last_io, so the converter folds the layout change into the graph instead of leaving
TRANSPOSE ops around every conv. Data given by the user stays in PyTorch's layout (that of example_input);
`artifact_inputs` lays it out for the artifact.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from edgemp._compat import prepare_torch_import
from edgemp.config import Layout
from edgemp.errors import InputError, ModelLoadError, UnsupportedModelError
from edgemp.sources.base import TensorSpec
from edgemp.sources.torch_errors import conversion_error

prepare_torch_import()

log = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".pt", ".pth", ".ptl", ".ts", ".pkl", ".bin")


def is_torch_model(model: Any) -> bool:
    if isinstance(model, str | os.PathLike):
        return Path(model).suffix.lower() in (".pt2", *PICKLE_SUFFIXES)
    mod = type(model).__module__
    return mod.startswith("torch") or any(c.__module__.startswith("torch.nn") for c in type(model).__mro__)


def load_torch(model: Any, example_input: Any = None, input_layout: str | Layout | None = None) -> TorchSource:
    import torch

    if isinstance(model, str | os.PathLike):
        model = load_pt2(Path(model))
    if isinstance(model, torch.export.ExportedProgram):
        if example_input is None:
            example_input = _example_from_program(model)
        module = model.module()
    elif isinstance(model, torch.nn.Module):
        module = model
        _to_eval(module)
    else:
        raise UnsupportedModelError(f"unsupported PyTorch object {type(model).__name__}: pass an nn.Module, an "
                                    "ExportedProgram or a .pt2 path.")
    if example_input is None:
        raise InputError("a PyTorch module needs example_input= (a tensor, or a tuple of tensors, shaped like one "
                         "batch of real input, e.g. torch.randn(1, 3, 224, 224)) to be exported.")
    args = tuple(example_input) if isinstance(example_input, tuple | list) else (example_input,)
    args = tuple(torch.as_tensor(a) for a in args)
    return TorchSource(module, args, input_layout, name=getattr(model, "name", None) or type(module).__name__)


def _to_eval(module: Any) -> None:
    """Eval mode before export. A graph module from torch.export (`ExportedProgram.module()`, or what PT2E returns)
    refuses .eval(): its mode was fixed when it was exported, and torchao rewrites its batch norm and dropout."""
    try:
        training = module.training
        module.eval()
    except NotImplementedError:
        from torchao.quantization.pt2e import move_exported_model_to_eval

        move_exported_model_to_eval(module)
        return
    if training:
        warnings.warn("the module was in training mode: edgemp puts it in eval mode (dropout off, batch-norm "
                      "running statistics) before export", UserWarning, stacklevel=4)


def load_pt2(path: Path) -> Any:
    """Load a torch.export archive without unpickling anything: pickled entries are refused."""
    import torch

    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise UnsupportedModelError(
            f"refusing {path}: {path.suffix} files are pickles or TorchScript, and loading them runs arbitrary code. "
            "Pass the nn.Module with example_input=, or save it with "
            "torch.export.save(torch.export.export(model, (example,)), 'model.pt2'). "
            "Accepted model files: .pt2, .keras, .h5, a SavedModel directory."
        )
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise ModelLoadError(f"{path} is not a torch.export archive (not a readable zip): {exc}; "
                             "re-save it with torch.export.save.") from exc
    if any(n.endswith(("/code/", ".pkl")) or "/code/" in n for n in names) or not any(n.endswith("models/model.json")
                                                                                      or n.endswith("archive_format")
                                                                                      for n in names):
        raise UnsupportedModelError(
            f"refusing {path}: it is not an ExportedProgram archive (TorchScript or another format). "
            "Save the model with torch.export.save(torch.export.export(model, (example,)), 'model.pt2')."
        )
    import torch.export.pt2_archive._package as package

    try:  # a program holding torchvision ops (nms, roi_align) loads only once torchvision registered them
        import torchvision  # noqa: F401
    except ImportError:
        pass

    real_load = torch.load

    def weights_only_load(f: Any, *a: Any, **kw: Any) -> Any:
        kw["weights_only"] = True
        return real_load(f, *a, **kw)

    def no_pickle(*_: Any, **__: Any) -> Any:
        raise UnsupportedModelError(f"refusing {path}: it holds pickled Python objects (custom constants).")

    try:
        with _patched(torch, "load", weights_only_load), _patched(package.pickle, "loads", no_pickle):
            program = torch.export.load(str(path))
    except InputError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"cannot load {path} as an ExportedProgram: {type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''}. The file is corrupt or truncated.") from exc
    return program


@contextlib.contextmanager
def _patched(obj: Any, attr: str, value: Any):  # type: ignore[no-untyped-def]
    old = getattr(obj, attr)
    setattr(obj, attr, value)
    try:
        yield
    finally:
        setattr(obj, attr, old)


def _example_from_program(program: Any) -> tuple[Any, ...] | None:
    ex = getattr(program, "example_inputs", None)
    if ex:
        args, _ = ex
        return tuple(args)
    return None


@functools.cache
def _named_flat_outputs() -> type:
    import torch

    class NamedFlatOutputs(torch.nn.Module):
        """forward(*args) -> {name: tensor} in flatten order, the leaves at `channel_last` moved (N, C, ...) ->
        (N, ..., C): litert-torch names a top-level dict's outputs by its keys (to_channel_last_io only permutes
        members of a top-level tuple, and refuses a dict)."""

        def __init__(self, module: Any, names: list[str], channel_last: list[int] | None = None) -> None:
            super().__init__()
            self.module, self.names, self.channel_last = module, list(names), set(channel_last or ())

        def forward(self, *args: Any) -> dict[str, Any]:
            leaves, _ = flatten_outputs(self.module(*args))
            return {n: (t.permute(0, *range(2, t.dim()), 1) if i in self.channel_last else t)
                    for i, (n, t) in enumerate(zip(self.names, leaves, strict=True))}

    return NamedFlatOutputs


def litert_bytes(module: Any, args: tuple[Any, ...], **kwargs: Any) -> bytes:
    """litert_torch.convert with its progress output silenced; the .tflite's bytes."""
    import litert_torch

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        edge = litert_torch.convert(module, args, **kwargs)
        content = edge.model_content
        return bytes(content() if callable(content) else content)


def named_flat_outputs(module: Any, names: list[str], channel_last: list[int] | None = None) -> Any:
    return _named_flat_outputs()(module, names, channel_last)


def flatten_outputs(out: Any) -> tuple[list[Any], list[str]]:
    """The tensors of a forward's output (tensor, tuple, list, dict, nested) in torch.export's flatten order, and
    a name for each: dict keys ("out", "aux"; nested "det_boxes"), "output_<i>" for positions ("output_1_0")."""
    import torch
    from torch.utils import _pytree as pytree

    leaves, _ = pytree.tree_flatten_with_path(out)
    tensors, names = [], []
    for path, leaf in leaves:
        parts = [str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path]
        if not isinstance(leaf, torch.Tensor):
            raise InputError(f"the model's output {'/'.join(parts) or 'value'} is a {type(leaf).__name__}, not a tensor; "
                             "return tensors only (in a tensor, tuple, list or dict).")
        named = bool(path) and isinstance(path[0], pytree.MappingKey)
        name = "_".join(parts) if named else "output_" + ("_".join(parts) if parts else "0")
        tensors.append(leaf)
        names.append(re.sub(r"[^A-Za-z0-9_.-]+", "_", name))
    if not tensors:
        raise InputError("the model returns no tensor; return a tensor, or a tuple/list/dict of tensors.")
    if len(set(names)) != len(names):
        names = [f"{n}_{i}" for i, n in enumerate(names)]
    return tensors, names


class TorchSource:
    kind: ClassVar[str] = "pytorch"
    onnx_exporter: ClassVar[str | None] = "torch.onnx.export (dynamo)"
    data_layout: ClassVar[Layout] = Layout.NCHW  # what users hand us: shaped like example_input
    predicts_during_conversion: ClassVar[bool] = False  # torch.export is not made to run beside the module's forward

    def __init__(self, module: Any, example_args: tuple[Any, ...], input_layout: str | Layout | None,
                 name: str = "model") -> None:
        import torch

        self.module = module
        self.example_args = example_args
        self.path = None
        self.name = re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "model"
        four_d = [i for i, a in enumerate(example_args) if a.dim() == 4]
        self.layout = Layout(input_layout) if input_layout is not None else (Layout.NHWC if four_d else Layout.NCHW)
        if isinstance(input_layout, str):
            from edgemp.config import parse_enum

            self.layout = parse_enum(Layout, input_layout, "input_layout")
        self._channel_last = four_d if self.layout is Layout.NHWC else []
        try:
            with torch.no_grad():
                out = module(*example_args)
        except Exception as exc:
            shapes = [tuple(a.shape) for a in example_args]
            raise InputError(f"the model rejects example_input of shape(s) {shapes} / dtype(s) "
                             f"{[str(a.dtype) for a in example_args]}: {type(exc).__name__}: {str(exc).splitlines()[0]}. "
                             "Give an example shaped like one real batch.") from exc
        outs, self.output_names_ = flatten_outputs(out)
        # a tensor or a flat tuple/list keeps litert-torch's own naming (output_<i>); any other structure is
        # exported through a wrapper that returns {name: tensor}, which litert-torch names by its keys
        self._structured = not (isinstance(out, torch.Tensor)
                                or (isinstance(out, tuple | list) and all(isinstance(o, torch.Tensor) for o in out)))
        self._out_channel_last = [i for i, o in enumerate(outs) if self._channel_last and o.dim() == 4]
        self._out_dims = [o.dim() for o in outs]
        self.rewrites = []
        self._per_sample = False

    def input_specs(self) -> list[TensorSpec]:
        """In the user's (PyTorch) layout: the data edgemp is given looks like example_input."""
        return [TensorSpec(f"args_{i}", (None, *a.shape[1:]), str(a.dtype).removeprefix("torch."))
                for i, a in enumerate(self.example_args)]

    def artifact_inputs(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = dict(batch)
        for i in self._channel_last:
            out[f"args_{i}"] = np.ascontiguousarray(np.moveaxis(batch[f"args_{i}"], 1, -1))
        return out

    @property
    def artifact_layout(self) -> Layout:
        return Layout.NHWC if self._channel_last else Layout.NCHW

    def to_float_tflite(self, batch_size: int | None = 1) -> bytes:
        module = self.module
        args = self.example_args
        if batch_size is not None:
            args = tuple(a[:1].expand(batch_size, *a.shape[1:]).contiguous() for a in args)
        self.rewrites: list[str] = []
        if self._channel_last:
            from edgemp.sources.torch_rewrites import rewrite_spatial_means

            try:
                module, self.rewrites = rewrite_spatial_means(module, args)
            except Exception as exc:
                raise conversion_error(exc, self.name, module, args) from exc
        module, args = self.artifact_io(module, args)
        try:
            return litert_bytes(module, args)
        except Exception as exc:
            raise conversion_error(exc, self.name, self.module, self.example_args) from exc

    def artifact_io(self, module: Any, args: tuple[Any, ...]) -> tuple[Any, tuple[Any, ...]]:
        """The module and example as the artifact takes them: NHWC I/O (litert-torch's channel-last wrapper) and
        structured outputs flattened under their names."""
        import litert_torch

        if self._channel_last:
            if self._structured:
                module = named_flat_outputs(module, self.output_names_, self._out_channel_last)
            module = litert_torch.to_channel_last_io(module, args=self._channel_last,
                                                     outputs=None if self._structured else self._out_channel_last or None)
            module.training = False  # not .eval(): exported graph modules refuse train()/eval() calls
            args = tuple(a.permute(0, 2, 3, 1).contiguous() if i in self._channel_last else a for i, a in enumerate(args))
        elif self._structured:
            module = named_flat_outputs(module, self.output_names_)
        return module, args

    def predict(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        import torch

        args = [torch.from_numpy(np.ascontiguousarray(inputs[f"args_{i}"])) for i in range(len(self.example_args))]
        n = len(args[0])
        if self._per_sample and n > 1:  # exported programs may be specialised to their example's batch size
            parts = [self.predict({k: v[i : i + 1] for k, v in inputs.items()}) for i in range(n)]
            return [np.concatenate([p[j] for p in parts]) for j in range(len(parts[0]))]
        try:
            with torch.no_grad():
                out = self.module(*args)
        except (AssertionError, RuntimeError):
            if n == 1 or self._per_sample:
                raise
            self._per_sample = True
            return self.predict(inputs)
        outs, _ = flatten_outputs(out)
        res = [o.detach().cpu().numpy() for o in outs]
        return [np.moveaxis(r, 1, -1) if i in self._out_channel_last else r for i, r in enumerate(res)]

    def num_parameters(self) -> int | None:
        return int(sum(p.numel() for p in self.module.parameters()))

    def output_names(self) -> list[str]:
        return list(self.output_names_)

    def output_channels_first(self) -> list[bool]:
        """4-D outputs the artifact keeps in PyTorch's NCHW (an NCHW artifact, or outputs not moved channel-last)."""
        return [d == 4 and i not in self._out_channel_last for i, d in enumerate(self._out_dims)]

    def predict_fp16(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The module in float16 (weights and compute; NCHW outputs as the module gives them): what an fp16 Core
        ML model computes, emulated where Core ML cannot run."""
        import copy

        import torch

        if getattr(self, "_fp16", None) is None:
            self._fp16 = copy.deepcopy(self.module).half()
        args = [torch.from_numpy(np.ascontiguousarray(inputs[f"args_{i}"])).half() for i in range(len(self.example_args))]
        with torch.no_grad():
            out = self._fp16(*args)
        outs, _ = flatten_outputs(out)
        return [o.float().cpu().numpy() for o in outs]

    def layers(self) -> list[tuple[str, str]]:
        """(module path, class) in definition order (`features.0.conv`): what per-layer reports call layers."""
        return [(n, type(m).__name__) for n, m in self.module.named_modules() if n]

    def scope_aliases(self) -> dict[str, list[tuple[str | None, str]]]:
        return {}  # litert-torch writes module paths (`pkg.Class_attr`), read directly

    def unroll_loops(self) -> tuple[None, list[str]]:
        return None, []  # litert-torch already unrolls nn.LSTM/GRU into plain ops

    def coreml_frontend(self) -> Any:
        from edgemp.sources.coreml_frontends import TorchCoreML

        return TorchCoreML(self)

    def to_float_onnx(self, batch_size: int | None, opset: int) -> tuple[Any, str, dict[str, str]]:
        """NCHW as the module takes it (TensorRT's native layout), whatever the .tflite's layout."""
        from edgemp.sources.onnx_export import torch_to_onnx

        return torch_to_onnx(self, batch_size, opset)

    def framework_versions(self) -> dict[str, str]:
        import litert_torch
        import torch

        return {"torch": torch.__version__, "litert-torch": litert_torch.__version__}
