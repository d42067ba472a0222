"""The ONNX target: a TensorRT-ready .onnx for Jetson (fp32, fp16, explicit-Q/DQ int8, mixed int8/fp16), checked
against its label from the graph itself, validated with onnxruntime against the source model with the same metrics
and gate as the other targets, and described for the report and the jetson bundle. onnx/onnxruntime (the `jetson`
extra) are imported only when this target is asked for. See docs/jetson.md.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from edgemp.errors import InputError, MissingDependencyError, PrecisionLabelError
from edgemp.targets import TargetResult

if TYPE_CHECKING:
    from edgemp.pipeline import Conversion

ONNX_PRECISIONS = ("fp32", "fp16", "int8", "mixed")
_MEANING = {
    "fp32": "float32 weights, compute and I/O (reference)",
    "fp16": "float16 weights and compute; float32 I/O unless OnnxOptions(fp16_io=True)",
    "int8": "explicit quantization: int8 per-channel weights (int8 initializers), int8 per-tensor activations, "
            "symmetric (zero point 0), Q/DQ on the inputs of every Conv/ConvTranspose/Gemm/MatMul; float32 I/O",
    "mixed": "int8 as for 'int8' except the layers listed in report.onnx.fp16_nodes, which compute in float16 "
             "(float16 weights, Cast at each boundary); float32 I/O",
}


class OnnxTarget:
    name: ClassVar[str] = "onnx"
    format: ClassVar[str] = "onnx"
    engine: ClassVar[str] = "TensorRT (trtexec / tensorrt Python API); onnxruntime elsewhere"

    def plan(self, conv: Conversion) -> list[Path]:
        if conv.precision.value not in ONNX_PRECISIONS:
            raise InputError(f"the ONNX target has no {conv.precision.value!r} form (TensorRT builds fp32, fp16, int8 "
                             f"and mixed int8/fp16 engines); use one of {', '.join(ONNX_PRECISIONS)}, or drop 'onnx' "
                             "from targets.")
        try:
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401
        except ImportError as exc:
            raise MissingDependencyError(f"the ONNX target needs onnx and onnxruntime ({exc.name} is missing): "
                                         "pip install 'edgemp[jetson]'") from exc
        if getattr(conv.source, "onnx_exporter", None) is None:
            raise InputError(f"the ONNX target takes Keras and PyTorch models, not a {conv.source.kind} source: load "
                             "the Keras model (.keras/.h5) or the nn.Module instead.")
        return [self._path(conv)]

    def build(self, conv: Conversion) -> TargetResult:
        from edgemp.targets.onnx.census import census, label_checks
        from edgemp.targets.onnx.export import export_float
        from edgemp.targets.onnx.runtime import OrtRunner
        from edgemp.validation import Check, evaluate

        prec = conv.precision.value
        unrolled: list[str] = []
        with conv.timer.stage("onnx_export"):
            fo = export_float(conv.source, conv.data.batch_size, conv.onnx.opset)
            if prec in ("int8", "mixed") and _loops(fo.model):  # a Keras RNN: unrolled into MatMuls that take Q/DQ
                source, why = conv.source.unroll_loops()
                if source is not None:
                    fo = export_float(source, conv.data.batch_size, conv.onnx.opset)
                    unrolled = ["recurrent layers unrolled (same weights) so their MatMuls can be int8"] + why
        with conv.timer.stage("onnx_quantize"):
            model, fp16_nodes, forced, unmatched = _in_precision(conv, fo)
            for m in (model, fo.model):
                m.producer_name, m.producer_version = "edgemp", _version()
            data = model.SerializeToString()
            fp32_data = fo.model.SerializeToString()  # what edgemp writes at fp32: the size and latency reference
        with conv.timer.stage("onnx_census"):
            c = census(model, fo.layers)
            checks = label_checks(c, prec, set(fp16_nodes))
            broken = [x for x in checks if not x.passed]
            if broken:
                raise PrecisionLabelError(f"the ONNX artifact is not {prec}: " + "; ".join(x.detail for x in broken))
        vdata, note = conv.validation
        last = _moved_channels(conv.source)
        names = conv.source.output_names()
        with conv.timer.stage("onnx_validate"):
            section, quality = evaluate(
                data, conv.source.predict, vdata, conv.runtime, conv.gate, precision=conv.precision,
                fp32_artifact=fp32_data if prec != "fp32" else None, progress=conv.progress, data_note=note,
                channels_first=conv.source.output_channels_first(), class_names=conv.data.class_names,
                output_names=names, make_runner=lambda m, o: OrtRunner(m, o, names, last))
            checks += quality
            parity = _parity(conv, data, names, last)
        if prec == "mixed" and conv.quantized.mixed is not None:
            checks.append(Check("onnx_mixed_budget", next((q.passed for q in quality if q.name == "accuracy_drop"),
                                                          True),
                                "the TFLite search's float layers, kept in FP16 in the ONNX graph, "
                                + ("meet the budget here too" if all(q.passed for q in quality) else
                                   "do not meet the budget with onnxruntime's calibration")))
        path = self._path(conv)
        layout = conv.source.data_layout.value
        entry = {"target": self.name, "path": str(path), "bytes": len(data), "ratio_to_fp32": len(data) / len(fp32_data),
                 "sha256": hashlib.sha256(data).hexdigest()}
        section_onnx = {
            "precision": prec, "precision_meaning": _MEANING[prec], "opset": conv.onnx.opset, "exporter": fo.producer,
            "quantizer": None if prec in ("fp32", "fp16") else
            f"onnxruntime.quantization.quantize_static {_ort_version()} (QDQ, symmetric int8, per-channel weights, "
            "MinMax calibration, Q/DQ on Conv/ConvTranspose/Gemm/MatMul inputs)",
            "layout": layout, "batch": fo.batch,
            "preprocessing": _preprocessing(conv, layout),
            "app_input": f"{layout} float32 (the same preprocessing as the report's); "
                         + ("float16 I/O" if prec == "fp16" and conv.onnx.fp16_io else "float32 I/O"),
            "fp32_bytes": len(fp32_data), "census": c.to_dict(), "fp16_nodes": fp16_nodes, "forced_fp16": forced,
            "rewrites": unrolled,
            "unmatched_float_layers": unmatched, "validation": section, "parity": parity,
            "host_runtime": "onnxruntime CPUExecutionProvider",
            "not_run": "TensorRT was not run here (no NVIDIA GPU): build_engine.sh in the jetson bundle builds the engine",
        }
        return TargetResult(self.name, {path: data}, entry, checks, {"onnx": section_onnx}, path)

    def bundle_entry(self, report: dict[str, Any], data: bytes | None, path: Path) -> dict[str, Any]:
        o = report["onnx"]
        c = o["census"]

        def tensor(t: dict[str, Any], is_input: bool) -> dict[str, Any]:
            shape = [d if isinstance(d, int) and d > 0 else -1 for d in t["shape"]]
            return {"name": t["name"], "shape": shape, "dtype": t["dtype"], "kind": "tensor",
                    "layout": o["layout"] if is_input and len(shape) == 4 else None, "quantization": None}

        ins = [tensor(t, True) for t in c["inputs"]]
        return {"precision": o["precision"], "precision_meaning": o["precision_meaning"],
                "io_dtype": ins[0]["dtype"] if ins else None, "layout": o["layout"], "inputs": ins,
                "outputs": [tensor(t, False) for t in c["outputs"]]}

    def _path(self, conv: Conversion) -> Path:
        return conv.out_dir / f"{conv.stem}.onnx"


def _in_precision(conv: Conversion, fo: Any) -> tuple[Any, list[str], list[dict[str, Any]], list[str]]:
    """(graph, nodes kept in FP16, recurrent ops forced to FP16, searched float layers with no Q/DQ node)."""
    from edgemp.targets.onnx.qdq import RECURRENT_OPS, keep_fp16, quantize_int8, to_fp16

    prec = conv.precision.value
    if prec == "fp32":
        return fo.model, [], [], []
    if prec == "fp16":
        return to_fp16(fo.model, conv.onnx.fp16_io), [], [], []
    cal = conv.calibration_set
    assert cal is not None  # precisions that quantize need calibration (checked in Conversion)
    fp16_nodes: list[str] = []
    forced: list[dict[str, Any]] = []
    unmatched: list[str] = []
    if prec == "mixed":
        fp16_nodes, unmatched = _chosen_nodes(conv, fo)
        forced = [{"name": n.name, "op": n.op_type, "layer": fo.layers.get(n.name),
                   "reason": f"an ONNX {n.op_type} has no Q/DQ (int8) form; FP16 is the closest"}
                  for n in fo.model.graph.node if n.op_type in RECURRENT_OPS]
        fp16_nodes += [f["name"] for f in forced if f["name"] not in fp16_nodes]
    model = quantize_int8(fo.model, cal.samples, fo.batch, exclude=fp16_nodes)
    return (keep_fp16(model, fp16_nodes) if fp16_nodes else model), fp16_nodes, forced, unmatched


def _chosen_nodes(conv: Conversion, fo: Any) -> tuple[list[str], list[str]]:
    """The compute nodes of the layers the mixed search keeps out of int8 (TFLite's float layers, by source layer)."""
    from edgemp.targets.onnx.qdq import QUANTIZED_OPS

    section = conv.quantized.mixed.section
    layers = [n for op in section["float_ops"] for n in (op["name"], *op["fused"])]
    compute = {n.name for n in fo.model.graph.node if n.op_type in QUANTIZED_OPS}
    nodes = sorted(n for n, layer in fo.layers.items() if layer in layers and n in compute)
    hit = {fo.layers[n] for n in nodes}
    return nodes, [x for x in layers if x not in hit]


def _preprocessing(conv: Conversion, layout: str) -> dict[str, Any] | None:
    """What the app does to an image for this graph: the calibration's preprocessing in the ONNX input's layout."""
    cal = conv.calibration_set
    pre = cal.preprocessing if cal is not None else None
    return None if pre is None else pre.to_dict() | {"layout": layout}


def _loops(model: Any) -> bool:
    return any(n.op_type in ("Loop", "Scan") for n in model.graph.node)


def _moved_channels(source: Any) -> list[int]:
    """Outputs the source's reference gives channel-last while the ONNX graph gives them NCHW (PyTorch sources
    whose TFLite artifact is NHWC)."""
    return sorted(getattr(source, "_out_channel_last", []))


def _parity(conv: Conversion, data: bytes, names: list[str], last: list[int], max_samples: int = 256) -> dict[str, Any]:
    """Source vs ONNX, and vs the quantized .tflite when it is a target too, on the same samples."""
    from edgemp.targets.onnx.runtime import OrtRunner
    from edgemp.validation.evaluate import batched
    from edgemp.validation.parity import pair
    from edgemp.validation.runtime import Runner

    vdata, _ = conv.validation
    sub = {k: v[:max_samples] for k, v in vdata.inputs.items()}
    ref = batched(conv.source.predict, sub)
    onx = OrtRunner(data, conv.runtime, names, last).run(sub)
    lite = None
    if any(t.name == "tflite" for t in conv.targets):
        lite = Runner(conv.quantized.artifact, output_order=names).run(conv.source.artifact_inputs(sub))
    rows = []
    for i, name in enumerate(names):
        r = np.asarray(ref[i], np.float32).reshape(onx[i].shape)
        row = {"output": name, "onnx_vs_source": pair(r, onx[i])}
        if lite is not None:
            t = lite[i].reshape(r.shape) if lite[i].size == r.size else lite[i]
            row |= {"tflite_vs_source": pair(r, t), "onnx_vs_tflite": pair(t, onx[i])}
        rows.append(row)
    return {"samples": int(len(ref[0])), "outputs": rows}


def _version() -> str:
    from edgemp import __version__

    return __version__


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__

