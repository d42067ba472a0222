"""An honest census of a Core ML ML Program: I/O, ops by compute precision, weight storage dtypes, size.

Read from the model spec (no prediction: that is macOS-only), so it runs on Linux. Compute precision of an op is
the dtype of what it produces; a weight's storage dtype is what the const (or constexpr decompression op)
feeding a conv/linear/matmul holds: float16/float32, int8/uint8 (linear quantization) or a palette (lut).
"""

from __future__ import annotations

import collections
import dataclasses
import os
from pathlib import Path
from typing import Any

from edgemp.errors import NotATFLiteModelError

WEIGHTED = ("conv", "conv_transpose", "linear", "matmul", "einsum")
_CONSTEXPR = ("constexpr_affine_dequantize", "constexpr_blockwise_shift_scale", "constexpr_lut_to_dense",
              "constexpr_sparse_to_dense", "constexpr_cast")


@dataclasses.dataclass(frozen=True)
class CoreMLIO:
    name: str
    kind: str  # multiArray | image
    shape: tuple[int, ...]
    dtype: str  # float32 | float16 | int32 | image color space

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "shape": list(self.shape), "dtype": self.dtype}


@dataclasses.dataclass(frozen=True)
class CoreMLOp:
    name: str
    type: str
    compute: str  # float16 | float32 | int | bool | none


@dataclasses.dataclass(frozen=True)
class CoreMLCensus:
    size_bytes: int
    spec_version: int
    inputs: tuple[CoreMLIO, ...]
    outputs: tuple[CoreMLIO, ...]
    ops: tuple[CoreMLOp, ...]
    weights: tuple[tuple[str, str], ...]  # (weighted op name, storage dtype)
    classifier_labels: int
    image_preprocessing: tuple[tuple[str, float, tuple[float, ...]], ...] = ()  # (image input, scale, bias per channel)

    @property
    def op_counts(self) -> dict[str, int]:
        return dict(sorted(collections.Counter(o.type for o in self.ops).items()))

    @property
    def compute_counts(self) -> dict[str, int]:
        return dict(sorted(collections.Counter(o.compute for o in self.ops).items()))

    @property
    def weight_dtypes(self) -> dict[str, int]:
        return dict(sorted(collections.Counter(d for _, d in self.weights).items()))

    def to_dict(self) -> dict[str, Any]:
        return {"size_bytes": self.size_bytes, "spec_version": self.spec_version, "op_counts": self.op_counts,
                "compute_counts": self.compute_counts, "weight_dtypes": self.weight_dtypes,
                "inputs": [i.to_dict() for i in self.inputs], "outputs": [o.to_dict() for o in self.outputs],
                "classifier_labels": self.classifier_labels,
                "image_preprocessing": {n: {"scale": sc, "bias": list(b)} for n, sc, b in self.image_preprocessing},
                "ops": [{"name": o.name, "type": o.type, "compute": o.compute} for o in self.ops]}


def package_size(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) if Path(path).is_dir() \
        else Path(path).stat().st_size


def package_sha256(path: Path) -> str:
    """One digest for a package directory: relative paths and contents, in sorted order."""
    import hashlib

    h = hashlib.sha256()
    for f in sorted(p for p in Path(path).rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode() + b"\0")
        h.update(f.read_bytes())
    return h.hexdigest()


def coreml_census(model: Any) -> CoreMLCensus:
    """`model`: an .mlpackage path or a coremltools MLModel."""
    from edgemp.targets.coreml.convert import import_coremltools

    ct = import_coremltools()
    from coremltools.proto import MIL_pb2

    if isinstance(model, str | os.PathLike):
        path = Path(model)
        if not (path / "Manifest.json").exists():
            raise NotATFLiteModelError(f"{path} is not an .mlpackage (no Manifest.json): pass a Core ML package.")
        spec = ct.utils.load_spec(str(path))
        size = package_size(path)
    else:
        spec = model.get_spec()
        pkg = getattr(model, "package_path", None)
        size = package_size(Path(pkg)) if pkg else spec.ByteSize()
    names = {v: k.lower() for k, v in MIL_pb2.DataType.items()}
    if spec.WhichOneof("Type") != "mlProgram":
        raise NotATFLiteModelError("only ML Program models (mlprogram) are supported; convert with convert_to='mlprogram'.")
    fn = spec.mlProgram.functions["main"]
    block = fn.block_specializations[fn.opset]
    producers = {o.name: op for op in block.operations for o in op.outputs}
    ops, weights = [], []
    for op in block.operations:
        if op.type == "const" or op.type in _CONSTEXPR:
            continue
        dt = op.outputs[0].type.tensorType.dataType if op.outputs else 0
        ops.append(CoreMLOp(op.outputs[0].name if op.outputs else op.type, op.type, _compute(names.get(dt, "none"))))
        if op.type in WEIGHTED and "weight" in op.inputs:
            args = op.inputs["weight"].arguments
            src = producers.get(args[0].name) if args and args[0].name else None
            if src is not None:
                weights.append((ops[-1].name, _storage(src, names, producers)))
    inputs = tuple(_io(d) for d in spec.description.input)
    outputs = tuple(_io(d) for d in spec.description.output)
    labels = 0
    for op in block.operations:  # a classifier ends in a `classify` op holding the class labels
        if op.type == "classify":
            arg = op.inputs["classes"].arguments[0]
            vt = arg.value.type if arg.HasField("value") else None
            if vt is not None and vt.WhichOneof("type") == "listType":
                labels = int(vt.listType.length.constant.size)
            else:
                t = _tensor_type(op, "classes", producers)
                labels = int(t.dimensions[0].constant.size) if t is not None and t.dimensions else 0
    return CoreMLCensus(size, int(spec.specificationVersion), inputs, outputs, tuple(ops), tuple(weights), labels,
                        _image_preprocessing(block, producers, [i.name for i in inputs if i.kind == "image"]))


def _image_preprocessing(block: Any, producers: dict[str, Any], images: list[str]) -> tuple[Any, ...]:
    """The scale and per-channel bias Core ML applies to each image input: the consts of the `<input>__scaled__`
    (mul) and `<input>__biased__` (add) ops coremltools puts first in the program."""
    import numpy as np

    found = []
    for name in images:
        values: dict[str, list[float]] = {"scaled": [1.0], "biased": [0.0]}
        for op in block.operations:
            for kind in values:
                if op.outputs and op.outputs[0].name == f"{name}__{kind}__" and "y" in op.inputs:
                    src = producers.get(op.inputs["y"].arguments[0].name)
                    t = src.attributes["val"].immediateValue.tensor if src is not None and "val" in src.attributes else None
                    if t is not None:
                        vals = list(t.floats.values) or list(t.doubles.values) or \
                            np.frombuffer(t.bytes.values, np.float16).astype(float).tolist()
                        values[kind] = [float(v) for v in vals]
        found.append((name, values["scaled"][0], tuple(values["biased"])))
    return tuple(found)


def _compute(dtype: str) -> str:
    if dtype in ("float16", "float32"):
        return dtype
    if dtype.startswith(("int", "uint")):
        return "int"
    return dtype


def _tensor_type(op: Any, name: str, producers: dict[str, Any]) -> Any:
    """The tensor type of an op's attribute or input `name` (an input may be a reference to a const op)."""
    if name in op.attributes:
        return op.attributes[name].type.tensorType
    if name in op.inputs:
        arg = op.inputs[name].arguments[0]
        if arg.name and arg.name in producers:
            src = producers[arg.name]
            return src.attributes["val"].type.tensorType if "val" in src.attributes else src.outputs[0].type.tensorType
        if arg.HasField("value"):
            return arg.value.type.tensorType
    return None


def _storage(op: Any, names: dict[int, str], producers: dict[str, Any]) -> str:
    """Storage dtype of a weight from the op that produces it."""
    if op.type == "const":
        t = _tensor_type(op, "val", producers)
        return names.get(t.dataType, "unknown") if t is not None else "unknown"
    if op.type in ("constexpr_affine_dequantize", "constexpr_blockwise_shift_scale"):
        t = _tensor_type(op, "quantized_data", producers) or _tensor_type(op, "data", producers)
        return names.get(t.dataType, "unknown") if t is not None else "unknown"
    if op.type == "constexpr_lut_to_dense":
        t = _tensor_type(op, "lut", producers)
        dims = [int(d.constant.size) for d in t.dimensions] if t is not None else []
        size = dims[-2] if len(dims) >= 2 else (dims[0] if dims else 0)
        return f"palettized-{max(size - 1, 1).bit_length()}bit" if size else "palettized"
    return op.type


def _io(d: Any) -> CoreMLIO:
    t = d.type
    kind = t.WhichOneof("Type")
    if kind == "multiArrayType":
        from coremltools.proto import FeatureTypes_pb2

        dtype = {v: k.lower() for k, v in FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.items()}.get(
            t.multiArrayType.dataType, "unknown")
        return CoreMLIO(d.name, "multiArray", tuple(int(s) for s in t.multiArrayType.shape), dtype)
    if kind == "imageType":
        from coremltools.proto import FeatureTypes_pb2

        cs = {v: k for k, v in FeatureTypes_pb2.ImageFeatureType.ColorSpace.items()}.get(t.imageType.colorSpace, "?")
        return CoreMLIO(d.name, "image", (int(t.imageType.height), int(t.imageType.width)), cs.lower())
    return CoreMLIO(d.name, kind or "unknown", (), kind or "unknown")
