"""Model-zoo benchmark: edgemp against the official converters, model by model and precision by precision.

For every model x precision, in one run: edgemp's status (edgemp.convert; a typed EdgempError is recorded as its class
and first line), the anchor's status (Keras -> tf.lite.TFLiteConverter on the same fixed-batch-1 model edgemp
converts; PyTorch -> litert-torch: float for fp32, its AI Edge Quantizer recipes `full_fp16_recipe` /
`full_dynamic_recipe` for fp16 / dynamic-int8, its PT2E path for int8, retried on the known intermittent
AssertionError of prepare_pt2e), whether each int8 artifact is fully integer
(census(...).float_compute_ops(allow_io_boundaries=True): float I/O boundaries are allowed for both), the size ratio
edgemp/anchor, the latency ratio edgemp/anchor (interleaved per-invoke medians, 1 thread, XNNPACK on, the two
artifacts side by side), and fidelity of both against the float source on the same held-out real inputs (SQNR,
cosine, top-1 agreement).

Models: random-init Keras applications and torchvision models (weights=None; batch-norm statistics from crops of real
photos first, classifier_activation=None) and small hand-built transformer, sequence, segmentation, detection-head
and multi-input models (trained on sklearn digits, cached). Photos: scikit-image's bundled photos (an installed
skimage, or its wheel unpacked with `_common.SKIMAGE_HINT`) plus those of matplotlib and scikit-learn; batch-norm
statistics and calibration come from one set of photos, fidelity is measured on crops of other photos.

    source scripts/env.sh && python benchmarks/zoo.py [--quick] [--models a,b] [--out DIR] [--fresh]
Writes DIR/zoo.{json,md} (default benchmarks/results). Finished rows are cached in
$EDGEMP_CACHE/bench/zoo_rows-<key>.json (key: output folder and settings), so an interrupted run continues where it
stopped; --fresh ignores the cache. The work runs in a worker process: when a converter's native code kills it
(TFLiteConverter's int8 calibration of a Keras LSTM/GRU segfaults), the step is recorded as crashed and a new worker
resumes after it. benchmarks/zoo_findings.py holds the experiments behind the "why" of each shortfall.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import gc
import hashlib
import json
import os
import shutil
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import (SKIMAGE_HINT, cpu_description, cpu_flags, imagenet, interleaved_latency,  # noqa: E402
                     litert_torch_convert, named_photos, photo_crops, pt2e_int8, round_ratio, skimage_data_dir,
                     tf_converter, work_dir)

import edgemp  # noqa: E402
from edgemp.targets.tflite.census import WEIGHTED_OPS, Census, census  # noqa: E402
from edgemp.demo import cache_dir  # noqa: E402
from edgemp.errors import EdgempError  # noqa: E402
from edgemp.validation.metrics import compare  # noqa: E402
from edgemp.validation.runtime import Runner  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "results"
VERSION = 1  # bump when a change invalidates cached rows
N_CALIB, N_EVAL, N_BN = 32, 64, 64
# Batch-norm statistics and calibration from these photos; fidelity on crops of the others.
FIT_PHOTOS = ["astronaut", "coffee", "rocket", "motorcycle_left", "hubble_deep_field", "camera", "coins", "brick",
              "grass", "china"]
EVAL_PHOTOS = ["chelsea", "ihc", "retina", "gravel", "moon", "grace_hopper", "flower"]
FALLBACK_FIT, FALLBACK_EVAL = ["china", "grace_hopper"], ["flower"]
LATENCY_LIMIT = 1.05
QUICK = ["keras_multi_input", "torch_segmenter", "squeezenet1_1"]


@dataclasses.dataclass
class Case:
    """A built model with its data: calib/evalx are {input name: array} in the layout the user gives (NCHW for
    PyTorch images); ref are the float model's outputs on evalx, (name, array) in the model's order."""

    model: Any
    calib: dict[str, np.ndarray]
    evalx: dict[str, np.ndarray]
    example: Any = None  # PyTorch example input
    top1: tuple[int, int] = (0, -1)  # (output index, class axis in the reference layout) for top-1 agreement
    note: str = ""
    ref: list[tuple[str, np.ndarray]] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class Spec:
    name: str
    family: str  # keras | torch
    kind: str  # classifier, transformer, sequence, segmentation, detection, multi-input
    build: Callable[[], Case]
    precisions: tuple[str, ...]
    input: str  # human-readable input description


# -- photos -----------------------------------------------------------------------------------------------
def photo_sets() -> tuple[list[Path], list[Path], str]:
    fit, ev = named_photos(FIT_PHOTOS), named_photos(EVAL_PHOTOS)
    if skimage_data_dir() is None or len(fit) < 4 or len(ev) < 3:
        print(f"[zoo] scikit-image photos not found; using matplotlib/scikit-learn photos only. For more: {SKIMAGE_HINT}",
              flush=True)
        fit, ev = named_photos(FALLBACK_FIT), named_photos(FALLBACK_EVAL)
    return fit, ev, f"fit: {', '.join(p.stem for p in fit)}; eval: {', '.join(p.stem for p in ev)}"


FIT: list[Path] = []
EVAL: list[Path] = []


def crops(n: int, size: int, seed: int, fit: bool) -> np.ndarray:
    return photo_crops(n, size, seed, FIT if fit else EVAL)


# -- Keras models ---------------------------------------------------------------------------------------
PREPROCESS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "raw": lambda x: x.astype(np.float32),  # the model rescales itself (include_preprocessing)
    "tf": lambda x: (x / 127.5 - 1.0).astype(np.float32),
    "torch": imagenet,
    "caffe": lambda x: (x[..., ::-1] - np.array([103.939, 116.779, 123.68], np.float32)).astype(np.float32),
}


def keras_app(ctor: str, size: int, pre: str, **kw: Any) -> Callable[[], Case]:
    def build() -> Case:
        import keras

        keras.utils.set_random_seed(0)
        model = getattr(keras.applications, ctor)(input_shape=(size, size, 3), weights=None,
                                                  classifier_activation=None, **kw)
        prep = PREPROCESS[pre]
        bns = [lay for lay in model._flatten_layers() if isinstance(lay, keras.layers.BatchNormalization)]
        for layer in bns:
            layer.momentum = 0.0  # moving statistics := those of the batch below (real photos)
        if bns:
            model(prep(crops(N_BN, size, 100, True)), training=True)
        name = model.inputs[0].name.split(":")[0]
        return Case(model, {name: prep(crops(N_CALIB, size, 7, True))}, {name: prep(crops(N_EVAL, size, 3, False))},
                    note=f"{len(bns)} BatchNorm layers set from {N_BN} photo crops" if bns else "no BatchNorm")
    return build


def _digits_split() -> tuple[np.ndarray, np.ndarray]:
    from tests.models import N_TRAIN, digits

    x, _ = digits()
    return x[:N_TRAIN], x[N_TRAIN:]


def keras_tokens(which: str) -> Callable[[], Case]:
    def build() -> Case:
        from tests import models

        model = models.keras_vit() if which == "vit" else models.keras_rnn(which)
        tr, te = _digits_split()
        name = model.inputs[0].name.split(":")[0]
        return Case(model, {name: tr[:N_CALIB, ..., 0]}, {name: te[:N_EVAL, ..., 0]},
                    note="trained on sklearn digits (row tokens), tests/models.py")
    return build


def _meta(x: np.ndarray) -> np.ndarray:
    """Metadata vector beside the image: its 8 row and 8 column ink sums (scaled)."""
    return np.concatenate([x[..., 0].sum(2), x[..., 0].sum(1)], axis=1).astype(np.float32) / 8.0


def keras_multi_input() -> Case:
    """Image (8x8x1 digit) + metadata vector (16 ink sums): conv branch and dense branch, concatenated, two Dense."""
    import keras
    from keras import layers

    from edgemp.sources.keras import import_tf
    from tests.models import N_TRAIN, digits

    import_tf()
    x, y = digits()
    path = cache_dir() / "models" / "bench" / "keras_multi_input_v1.keras"
    if path.exists():
        model = keras.saving.load_model(path, compile=False)
    else:
        keras.utils.set_random_seed(0)
        img, meta = keras.Input((8, 8, 1), name="image"), keras.Input((16,), name="meta")
        h = layers.Conv2D(16, 3, padding="same", activation="relu", name="conv1")(img)
        h = layers.MaxPooling2D(2, name="pool1")(h)
        h = layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2")(h)
        h = layers.GlobalAveragePooling2D(name="gap")(h)
        m = layers.Dense(16, activation="relu", name="meta_dense")(meta)
        h = layers.Concatenate(name="join")([h, m])
        h = layers.Dense(32, activation="relu", name="fc")(h)
        model = keras.Model([img, meta], layers.Dense(10, name="logits")(h), name="multi_input")
        model.compile(optimizer=keras.optimizers.Adam(3e-3),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.fit([x[:N_TRAIN], _meta(x[:N_TRAIN])], y[:N_TRAIN], batch_size=64, epochs=25, verbose=0)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.keras")
        model.save(tmp)
        os.replace(tmp, path)
    tr, te = x[:N_TRAIN], x[N_TRAIN:]
    return Case(model, {"image": tr[:N_CALIB], "meta": _meta(tr[:N_CALIB])},
                {"image": te[:N_EVAL], "meta": _meta(te[:N_EVAL])}, note="trained on sklearn digits (image + 16 ink sums)")


# -- PyTorch models -------------------------------------------------------------------------------------
def _torch_bn(model: Any, size: int) -> int:
    """Batch-norm statistics from real photo crops (cumulative average over 4 batches in train mode)."""
    import torch

    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.momentum = None
    if bns:
        model.train()
        with torch.no_grad():
            for i in range(4):
                model(torch.from_numpy(imagenet(crops(N_BN // 4, size, 100 + i, True)).transpose(0, 3, 1, 2).copy()))
    model.eval()
    return len(bns)


def torchvision_model(ctor: Callable[[], Any], size: int, note: str = "") -> Callable[[], Case]:
    def build() -> Case:
        import torch

        torch.manual_seed(0)
        model = ctor()
        n = _torch_bn(model, size)
        nchw = lambda x: np.ascontiguousarray(imagenet(x).transpose(0, 3, 1, 2))  # noqa: E731
        return Case(model, {"args_0": nchw(crops(N_CALIB, size, 7, True))}, {"args_0": nchw(crops(N_EVAL, size, 3, False))},
                    example=torch.zeros(1, 3, size, size), top1=(0, 1 if "segment" in note else -1),
                    note=(f"{n} BatchNorm layers set from {N_BN} photo crops" if n else "no BatchNorm")
                    + (f"; {note}" if note else ""))
    return build


def tv(name: str, **kw: Any) -> Callable[[], Any]:
    def make() -> Any:
        import torchvision

        return getattr(torchvision.models, name)(weights=None, **kw)
    return make


def tiny_vit() -> Any:
    import torch
    import torchvision

    m = torchvision.models.VisionTransformer(image_size=64, patch_size=16, num_layers=2, num_heads=2, hidden_dim=64,
                                             mlp_dim=128)
    torch.nn.init.normal_(m.heads.head.weight, std=0.05)  # torchvision zero-initialises the head: outputs would be 0
    return m


def lraspp() -> Any:
    import torchvision

    return torchvision.models.segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None)


def torch_small(which: str) -> Callable[[], Case]:
    def build() -> Case:
        import torch

        from tests import models

        if which == "transformer":
            model = models.torch_transformer()
            x, _ = models.digit_tokens()
            top1 = (0, -1)
        elif which == "segmenter":
            model = models.torch_segmenter()
            x, _ = models.segmentation_data()
            top1 = (0, 1)
        else:
            model = models.torch_detector()
            x, _ = models.detection_data()
            top1 = (1, -1)  # scores
        tr, te = x[: models.N_TRAIN], x[models.N_TRAIN :]
        return Case(model.eval(), {"args_0": tr[:N_CALIB]}, {"args_0": te[:N_EVAL]},
                    example=torch.from_numpy(tr[:1].copy()), top1=top1,
                    note="trained on sklearn digits, tests/models.py")
    return build


F16_INT8 = ("fp16", "int8")
T32 = ("fp32", "fp16", "int8")
ZOO = [
    Spec("mobilenetv2_035", "keras", "classifier", keras_app("MobileNetV2", 96, "tf", alpha=0.35), ("fp16", "int8", "dynamic-int8"), "96x96x3"),
    Spec("mobilenetv3small", "keras", "classifier", keras_app("MobileNetV3Small", 96, "raw"), F16_INT8, "96x96x3"),
    Spec("efficientnetb0", "keras", "classifier", keras_app("EfficientNetB0", 64, "raw"), F16_INT8, "64x64x3"),
    Spec("resnet50", "keras", "classifier", keras_app("ResNet50", 64, "caffe"), ("fp16", "int8", "dynamic-int8"), "64x64x3"),
    Spec("densenet121", "keras", "classifier", keras_app("DenseNet121", 64, "torch"), F16_INT8, "64x64x3"),
    Spec("convnext_tiny", "keras", "classifier (LayerNorm)", keras_app("ConvNeXtTiny", 64, "raw"), F16_INT8, "64x64x3"),
    Spec("keras_vit", "keras", "transformer", keras_tokens("vit"), ("fp16", "int8", "dynamic-int8"), "8 tokens x 8"),
    Spec("keras_lstm", "keras", "sequence", keras_tokens("LSTM"), ("fp16", "int8", "dynamic-int8"), "8 steps x 8"),
    Spec("keras_gru", "keras", "sequence", keras_tokens("GRU"), F16_INT8, "8 steps x 8"),
    Spec("keras_multi_input", "keras", "multi-input", keras_multi_input, F16_INT8, "8x8x1 + 16"),
    Spec("mobilenet_v3_small", "torch", "classifier", torchvision_model(tv("mobilenet_v3_small"), 96), T32, "3x96x96"),
    Spec("resnet18", "torch", "classifier", torchvision_model(tv("resnet18"), 64), (*T32, "dynamic-int8"), "3x64x64"),
    Spec("squeezenet1_1", "torch", "classifier", torchvision_model(tv("squeezenet1_1"), 96), T32, "3x96x96"),
    Spec("shufflenet_v2_x0_5", "torch", "classifier", torchvision_model(tv("shufflenet_v2_x0_5"), 96), T32, "3x96x96"),
    Spec("efficientnet_b0", "torch", "classifier", torchvision_model(tv("efficientnet_b0"), 64), T32, "3x64x64"),
    Spec("mnasnet0_5", "torch", "classifier", torchvision_model(tv("mnasnet0_5"), 96), T32, "3x96x96"),
    Spec("vit_tiny", "torch", "transformer", torchvision_model(tiny_vit, 64, "VisionTransformer 2 layers, dim 64"), T32, "3x64x64"),
    Spec("lraspp_mobilenet_v3_large", "torch", "segmentation", torchvision_model(lraspp, 64, "segmentation, dict output"), T32, "3x64x64"),
    Spec("torch_transformer", "torch", "transformer", torch_small("transformer"), (*T32, "dynamic-int8"), "8 tokens x 8"),
    Spec("torch_segmenter", "torch", "segmentation", torch_small("segmenter"), T32, "1x16x16"),
    Spec("torch_detector", "torch", "detection head", torch_small("detector"), T32, "1x32x32"),
]


# -- float reference and artifacts ------------------------------------------------------------------------
def reference(spec: Spec, case: Case) -> list[tuple[str, np.ndarray]]:
    """The float model's outputs on evalx (batches of 16), named as the model names them."""
    names = list(case.evalx)
    n = len(case.evalx[names[0]])
    chunks: list[list[tuple[str, np.ndarray]]] = []
    for s in range(0, n, 16):
        batch = [case.evalx[k][s : s + 16] for k in names]
        if spec.family == "keras":
            out = case.model(batch[0] if len(batch) == 1 else batch, training=False)
        else:
            import torch

            with torch.no_grad():
                out = case.model(*[torch.from_numpy(np.ascontiguousarray(b)) for b in batch])
        if isinstance(out, dict):
            items = [(str(k), v) for k, v in out.items()]
        elif isinstance(out, list | tuple):
            items = [(f"output_{i}", v) for i, v in enumerate(out)]
        else:
            items = [("output_0", out)]
        chunks.append([(k, np.asarray(v.detach() if hasattr(v, "detach") else v, np.float32)) for k, v in items])
    return [(chunks[0][i][0], np.concatenate([c[i][1] for c in chunks])) for i in range(len(chunks[0]))]


def _nhwc(shape: tuple[int, ...]) -> tuple[int, ...]:
    return (shape[0], *shape[2:], shape[1])


def run_artifact(art: bytes, data: dict[str, np.ndarray]) -> list[tuple[str, np.ndarray]]:
    """Run an artifact on user-layout data (inputs matched by name, else by position; NCHW images laid out NHWC
    when the artifact wants it); outputs (signature name, float array)."""
    c = census(art)
    vals = list(data.values())
    feed = {}
    for pos, s in enumerate(c.inputs):
        x = data.get(s.name, vals[min(pos, len(vals) - 1)])
        if x.ndim == 4 and tuple(x.shape[1:]) != tuple(s.shape[1:]) and _nhwc(x.shape)[1:] == tuple(s.shape[1:]):
            x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        feed[s.name] = x
    r = Runner(art)
    return list(zip([d.name for d in r.outputs], r.run(feed), strict=True))


def align(ref: list[tuple[str, np.ndarray]], outs: list[tuple[str, np.ndarray]]) -> list[np.ndarray] | None:
    """The artifact's outputs in the reference's order and layout (matched by name, else by shape in order)."""
    free = list(outs)
    got = []
    for name, r in ref:
        cands = [(n, o) for n, o in free if o.shape == r.shape or (r.ndim == 4 and o.shape == _nhwc(r.shape))]
        if not cands:
            return None
        pick = next(((n, o) for n, o in cands if n == name), cands[0])
        free.remove(pick)
        o = pick[1]
        got.append(o if o.shape == r.shape else np.moveaxis(o, -1, 1))
    return got


def fidelity(case: Case, art: bytes) -> dict[str, Any]:
    try:
        outs = align(case.ref, run_artifact(art, case.evalx))
    except Exception as exc:  # noqa: BLE001 - recorded, the row goes on
        return {"error": f"{type(exc).__name__}: {first_line(exc)}"}
    if outs is None:
        return {"error": "outputs do not match the float model's shapes"}
    per = {}
    for i, ((name, r), o) in enumerate(zip(case.ref, outs, strict=True)):
        m = compare(r, o, case.top1[1] if i == case.top1[0] else None)
        per[name] = {k: m[k] for k in ("sqnr_db", "cosine", "top1_agreement")}
    prim = per[case.ref[case.top1[0]][0]]
    return {"sqnr_db": min(v["sqnr_db"] for v in per.values()), "cosine": min(v["cosine"] for v in per.values()),
            "top1_agreement": prim["top1_agreement"], "outputs": per}


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else repr(exc)[:200]


def placement(c: Census, precision: str) -> dict[str, Any]:
    """Where the heavy ops compute: the compute kinds of the weighted ops (CONV, FC, BATCH_MATMUL...) and, for
    static precisions, how many ops compute in float inside the graph (I/O boundaries allowed)."""
    kinds = collections.Counter(o.compute for o in c.ops if o.op in WEIGHTED_OPS)
    floats = c.float_compute_ops(allow_io_boundaries=True)
    return {"weighted": dict(sorted(kinds.items())), "float_ops": len(floats),
            "float_op_types": dict(collections.Counter(o.op for o in floats).most_common(6)),
            "key": placement_key(dict(kinds), len(floats), precision)}


def placement_key(weighted: dict[str, int], float_ops: int, precision: str) -> list[Any]:
    """What must match for latencies to be compared: how many weighted ops compute in each kind (float32, int8,
    hybrid-int8...) and, for static precisions, whether any op computes in float inside the graph."""
    return [sorted(weighted.items()), bool(float_ops) if precision in ("int8", "int16x8") else None]


def same_placement(row: dict[str, Any]) -> bool | None:
    e, a = row["edgemp"], row["anchor"]
    if not (e.get("ok") and a.get("ok")):
        return None
    return bool(placement_key(e["placement"]["weighted"], e["placement"]["float_ops"], row["precision"])
                == placement_key(a["placement"]["weighted"], a["placement"]["float_ops"], row["precision"]))


def describe(art: bytes, precision: str) -> dict[str, Any]:
    c = census(art)
    p = placement(c, precision)
    return {"bytes": len(art), "ops": len(c.ops), "transposes": c.transpose_count,
            "io": sorted({s.dtype for s in (*c.inputs, *c.outputs)}),
            "fully_integer": p["float_ops"] == 0 if precision == "int8" else None, "placement": p}


# -- conversions ------------------------------------------------------------------------------------------
def edgemp_convert(spec: Spec, case: Case, precision: str, work: Path) -> tuple[bytes | None, dict[str, Any]]:
    t0 = time.perf_counter()
    info: dict[str, Any] = {}
    try:
        kw: dict[str, Any] = {"example_input": case.example} if spec.family == "torch" else {}
        needs = precision in ("int8", "int16x8", "mixed")
        r = edgemp.convert(case.model, precision, case.calib if needs else None, validation=case.evalx,
                           output_dir=work / f"{spec.name}-{precision}",
                           data=edgemp.DataOptions(num_calibration_samples=N_CALIB),
                           gate=edgemp.GateOptions(max_accuracy_drop=None), runtime=edgemp.RuntimeOptions(latency_runs=0),
                           progress=False, force=True, **kw)
        art = r.artifacts["tflite"].read_bytes()
        info |= {"status": "ok" if r.passed else "ok, report gate FAILED: " + "; ".join(r.report.failures)[:300],
                 "gate_passed": r.passed, "rewrites": r.report["model"]["rewrites"],
                 "convert_s": round(sum(v for k, v in r.report["timings_s"].items() if k not in ("census", "validate")), 2)}
    except EdgempError as exc:
        art = None
        info["status"] = f"{type(exc).__name__}: {first_line(exc)}"
    except Exception as exc:  # noqa: BLE001 - an untyped crash is a finding
        art = None
        info["status"] = f"CRASH {type(exc).__name__}: {first_line(exc)}"
        traceback.print_exc(limit=3)
    info["ok"] = art is not None
    info["wall_s"] = round(time.perf_counter() - t0, 1)
    return art, info


def anchor_convert(spec: Spec, case: Case, precision: str, attempts: int) -> tuple[bytes | None, dict[str, Any]]:
    t0 = time.perf_counter()
    info: dict[str, Any] = {"name": anchor_name(spec, precision)}
    tries: list[str] = []
    art = None
    if spec.family == "keras":
        from edgemp.sources.keras import _with_batch

        try:
            art = tf_converter(_with_batch(case.model, 1), precision, case.calib)
        except Exception as exc:  # noqa: BLE001 - the anchor's failure is a result
            tries.append(f"{type(exc).__name__}: {first_line(exc)}")
    else:
        from litert_torch.generative.quantize import quant_recipes

        channel_last = case.example.dim() == 4
        for _ in range(attempts if precision == "int8" else 1):
            try:
                if precision == "int8":
                    art = pt2e_int8(case.model, case.example, case.calib["args_0"], channel_last)
                else:
                    qc = {"fp32": None, "fp16": quant_recipes.full_fp16_recipe,
                          "dynamic-int8": quant_recipes.full_dynamic_recipe}[precision]
                    art = litert_torch_convert(case.model, case.example, channel_last, qc() if qc else None)
                break
            except Exception as exc:  # noqa: BLE001 - PT2E fails intermittently (shared/STACK.md): retry
                tries.append(f"{type(exc).__name__}: {first_line(exc)}")
                if not isinstance(exc, AssertionError):
                    break
    info["ok"] = art is not None
    info["status"] = "ok" if art is not None else tries[-1]
    info["attempts"] = len(tries) + (1 if art is not None else 0)
    if tries:
        info["failed_attempts"] = tries
    info["wall_s"] = round(time.perf_counter() - t0, 1)
    return art, info


def latency(ours: bytes, anchor: bytes, sample: dict[str, np.ndarray], rounds: int) -> dict[str, Any]:
    """Interleaved per-invoke medians; invokes per round sized so one round takes ~0.3 s per artifact."""
    probe, _ = interleaved_latency({"edgemp": ours, "anchor": anchor}, sample, 1, 5)
    per_round = int(np.clip(300.0 / max(max(probe.values()), 1e-3), 5, 200))
    ms, rounds_ms = interleaved_latency({"edgemp": ours, "anchor": anchor}, sample, rounds, per_round)
    return {"edgemp_ms": ms["edgemp"], "anchor_ms": ms["anchor"], "ratio": round_ratio(rounds_ms, "edgemp", "anchor"),
            "rounds": rounds, "invokes_per_round": per_round}


def first_sample(case: Case, art: bytes) -> dict[str, np.ndarray]:
    """evalx[0] laid out for the artifact, keyed by its signature names."""
    c = census(art)
    vals = list(case.evalx.values())
    out = {}
    for pos, s in enumerate(c.inputs):
        x = case.evalx.get(s.name, vals[min(pos, len(vals) - 1)])[:1]
        if x.ndim == 4 and tuple(x.shape[1:]) != tuple(s.shape[1:]):
            x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        out[s.name] = x
    return out


class Journal:
    """Crash isolation. A converter's native code can kill the process (TFLiteConverter's int8 calibration of a
    Keras LSTM segfaults here): the step in progress is written down before it starts; when a worker dies, the
    supervisor records that step as crashed and starts a new worker, which skips it (and reuses finished rows)."""

    def __init__(self, marker: Path, crashed: dict[str, str]) -> None:
        self.marker, self.crashed = marker, crashed

    def begin(self, key: str, stage: str) -> None:
        self.marker.write_text(json.dumps({"key": key, "stage": stage}))

    def died(self, key: str, stage: str) -> str | None:
        return self.crashed.get(f"{key}#{stage}")

    def done(self) -> None:
        self.marker.unlink(missing_ok=True)


def crash_status(why: str, where: str) -> str:
    return f"CRASH: the process died ({why}) in {where}"


def anchor_name(spec: Spec, precision: str) -> str:
    if spec.family == "keras":
        return {"fp32": "TFLiteConverter", "fp16": "TFLiteConverter fp16", "dynamic-int8": "TFLiteConverter dynamic range",
                "int8": "TFLiteConverter int8 PTQ (int8 I/O)"}[precision]
    return {"fp32": "litert-torch", "fp16": "litert-torch full_fp16_recipe",
            "dynamic-int8": "litert-torch full_dynamic_recipe", "int8": "litert-torch PT2E int8"}[precision]


def measure_row(spec: Spec, case: Case, precision: str, args: argparse.Namespace, work: Path,
                journal: Journal) -> dict[str, Any]:
    key = f"{spec.name}|{precision}"
    row: dict[str, Any] = {"model": spec.name, "family": spec.family, "kind": spec.kind, "input": spec.input,
                           "precision": precision, "note": case.note}

    def step(stage: str, run: Callable[[], Any], crashed: Callable[[str], Any]) -> Any:
        why = journal.died(key, stage)
        if why:
            print(f"[zoo] {key}: skipping {stage} (the process died there before: {why})", flush=True)
            return crashed(why)
        journal.begin(key, stage)
        return run()

    ours, row["edgemp"] = step("edgemp", lambda: edgemp_convert(spec, case, precision, work),
                               lambda why: (None, {"status": crash_status(why, "edgemp.convert"), "ok": False}))
    gc.collect()
    ref, row["anchor"] = step("anchor", lambda: anchor_convert(spec, case, precision, args.pt2e_attempts),
                              lambda why: (None, {"name": anchor_name(spec, precision), "ok": False, "attempts": 1,
                                                  "status": crash_status(why, "the converter")}))
    gc.collect()
    for side, art in (("edgemp", ours), ("anchor", ref)):
        if art is not None:
            row[side] |= describe(art, precision)
            row[side]["fidelity"] = step(f"fidelity-{side}", lambda art=art: fidelity(case, art),
                                         lambda why: {"error": crash_status(why, "the interpreter")})
    if ours is not None and ref is not None:
        row["size_ratio"] = len(ours) / len(ref)
        row["same_placement"] = same_placement(row)

        def measure() -> dict[str, Any]:
            sample = first_sample(case, ours)
            lat = latency(ours, ref, sample, args.rounds)
            if lat["ratio"] > LATENCY_LIMIT:  # confirm before calling it a finding: noise on this shared machine
                first = lat
                lat = latency(ours, ref, sample, 2 * args.rounds)
                lat["first_measurement"] = first
            return lat

        row["latency"] = step("latency", measure, lambda why: {"error": crash_status(why, "the interpreter")})
    return row


# -- report -----------------------------------------------------------------------------------------------
def _f(v: Any, fmt: str) -> str:
    return "–" if v is None else format(v, fmt)


def _fi(d: dict[str, Any]) -> str:
    if not d.get("ok"):
        return "–"
    if d.get("fully_integer") is None:
        return "n/a"
    return "yes" if d["fully_integer"] else f"no ({d['placement']['float_ops']} float: " + ", ".join(
        f"{k}×{v}" for k, v in d["placement"]["float_op_types"].items()) + ")"


def _fid(d: dict[str, Any]) -> str:
    f = d.get("fidelity") or {}
    if not d.get("ok"):
        return "–"
    if "error" in f:
        return f"error: {f['error'][:60]}"
    sq = "∞" if f["sqnr_db"] == float("inf") else f"{f['sqnr_db']:.1f}"
    return f"{sq} / {f['cosine']:.4f} / {_f(f['top1_agreement'], '.2f')}"


def _status(d: dict[str, Any]) -> str:
    s = d["status"].replace("|", "\\|")
    if s.startswith("ok, report gate FAILED: "):  # the artifact was written; its report's fidelity gate failed
        s = "ok (report gate failed: " + s.removeprefix("ok, report gate FAILED: ").split(", cosine")[0] + ")"
    return s[:160] + (f" ({d['attempts']} attempts)" if d.get("attempts", 1) > 1 else "")


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    both = [r for r in rows if r["edgemp"]["ok"] and r["anchor"]["ok"]]
    anchor_ok = [r for r in rows if r["anchor"]["ok"]]
    int8 = [r for r in rows if r["precision"] == "int8"]
    timed = [r for r in both if "ratio" in (r.get("latency") or {})]
    same = [r for r in timed if r.get("same_placement")]
    size_max = max(both, key=lambda r: r["size_ratio"], default=None)
    lat_max = max(same, key=lambda r: r["latency"]["ratio"], default=None)
    lat_all_max = max(timed, key=lambda r: r["latency"]["ratio"], default=None)
    t = {
        "rows": len(rows), "models": len({r["model"] for r in rows}),
        "edgemp_ok": sum(r["edgemp"]["ok"] for r in rows), "anchor_ok": len(anchor_ok),
        "edgemp_ok_where_anchor_ok": sum(r["edgemp"]["ok"] for r in anchor_ok),
        "edgemp_only": [f"{r['model']} {r['precision']}" for r in rows if r["edgemp"]["ok"] and not r["anchor"]["ok"]],
        "int8_rows": len(int8),
        "fully_integer_edgemp": sum(bool(r["edgemp"].get("fully_integer")) for r in int8),
        "fully_integer_anchor": sum(bool(r["anchor"].get("fully_integer")) for r in int8),
        "fully_integer_anchor_not_edgemp": [r["model"] for r in int8 if r["anchor"].get("fully_integer")
                                            and not r["edgemp"].get("fully_integer")],
        "max_size_ratio": size_max["size_ratio"] if size_max else None,
        "max_size_ratio_at": f"{size_max['model']} {size_max['precision']}" if size_max else None,
        "same_placement_rows": len(same),
        "max_latency_ratio": lat_max["latency"]["ratio"] if lat_max else None,
        "max_latency_ratio_at": f"{lat_max['model']} {lat_max['precision']}" if lat_max else None,
        "max_latency_ratio_any_placement": lat_all_max["latency"]["ratio"] if lat_all_max else None,
        "max_latency_ratio_any_placement_at": (f"{lat_all_max['model']} {lat_all_max['precision']}"
                                               if lat_all_max else None),
    }
    t["verdicts"] = {
        "succeeds_where_anchor_succeeds": t["edgemp_ok_where_anchor_ok"] == t["anchor_ok"],
        "fully_integer_at_least_anchor": (t["fully_integer_edgemp"] >= t["fully_integer_anchor"]
                                          and not t["fully_integer_anchor_not_edgemp"]),
        "size_never_larger": t["max_size_ratio"] is not None and t["max_size_ratio"] <= 1.0,
        "latency_within_1.05": t["max_latency_ratio"] is None or t["max_latency_ratio"] <= LATENCY_LIMIT,
    }
    return t


def findings(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every row that misses a target ("target": True), and the other shortfalls worth knowing (latency at a
    different op placement, fidelity clearly below the anchor's), with the cause where it was investigated."""
    out = []
    for r in rows:
        e, a, what = r["edgemp"], r["anchor"], f"{r['model']} {r['precision']}"
        lat = r.get("latency") or {}
        found = []
        if a["ok"] and not e["ok"]:
            found.append((True, "fails where the anchor succeeds", e["status"]))
        if r["precision"] == "int8" and a.get("fully_integer") and e["ok"] and not e.get("fully_integer"):
            found.append((True, "not fully integer where the anchor is", _fi(e)))
        if r.get("size_ratio", 0) > 1.0:
            found.append((True, "artifact larger than the anchor's",
                          f"{e['bytes']:,} vs {a['bytes']:,} B (×{r['size_ratio']:.4f}, +{e['bytes'] - a['bytes']:,} B)"))
        if lat.get("ratio", 0) > LATENCY_LIMIT:
            same = r.get("same_placement")
            found.append((bool(same), f"latency above {LATENCY_LIMIT}× at {'the same' if same else 'a different'} op "
                          "placement" + ("" if same else " (not a target)"),
                          f"×{lat['ratio']:.3f} ({lat['edgemp_ms']:.4g} vs {lat['anchor_ms']:.4g} ms)"))
        fe, fa = e.get("fidelity") or {}, a.get("fidelity") or {}
        if "sqnr_db" in fe and "sqnr_db" in fa and np.isfinite(fa["sqnr_db"]) and fe["sqnr_db"] < fa["sqnr_db"] - 3.0:
            found.append((False, "fidelity below the anchor's (SQNR > 3 dB lower; not a target)",
                          f"{fe['sqnr_db']:.1f} vs {fa['sqnr_db']:.1f} dB"))
        for target, kind, detail in found:
            out.append({"row": what, "target": target, "kind": kind, "detail": detail, "cause": cause(r, kind)})
    return out


REPRO = "source scripts/env.sh && python benchmarks/zoo_findings.py {}"
_FP16 = (
    "edgemp's fp16 recipe (edgemp/quantize/recipes.py, recipe_for(FP16): one AI Edge Quantizer `float_casting` rule) "
    "casts only the weight operand of the ops the quantizer registers float_casting for (FULLY_CONNECTED, CONV_2D, "
    "DEPTHWISE_CONV_2D, TRANSPOSE_CONV, EMBEDDING_LOOKUP: ai_edge_quantizer/algorithm_manager.py; "
    "float_casting.materialize_fc_conv leaves the bias alone). Biases and the constant operands of other ops stay "
    "float32, where TFLiteConverter fp16 stores every float constant as float16 behind a DEQUANTIZE. ResNet50: its "
    "53 conv biases cost +53,120 B, of which compact()'s shorter names and fewer ops win back ~37 KB; DenseNet121: 63 "
    "biases (+16,832 B) and the per-channel scale/offset of its 62 pre-activation BatchNorms, which cannot fold into "
    "a conv and stay as MUL/ADD constants (124 float32 tensors, +137,344 B). Reproduce: " + REPRO.format("fp16"))
_DYN = (
    "edgemp's dynamic-int8 recipe (recipe_for(DYNAMIC_INT8)) sets min_weight_elements=0 for operation '*': every "
    "weighted op gets int8 weights, the first conv (864 elements), the small depthwise convs, a token embedding "
    "(256) and a logits layer (320) included. TFLiteConverter's dynamic range leaves weights under 1,024 elements in "
    "float. Quantizing those small, sensitive tensors costs the SQNR; and XNNPACK takes no hybrid DEPTHWISE_CONV_2D, "
    "so MobileNetV2's 17 hybrid depthwise convs run in TFLite's builtin kernels between XNNPACK partitions (47 of 64 "
    "nodes delegated; the anchor 54): ~3× the anchor's time. The same recipe with min_weight_elements=1024 gives the "
    "anchor's placement, SQNR (21.11 dB; keras_vit 44.5, keras_lstm 44.0) and latency (×1.00), 2 % smaller. "
    "Reproduce: " + REPRO.format("dynamic"))
_TRANSFORMER = (
    "a different op placement, by design: edgemp's int8 is fully integer, litert-torch's PT2E leaves the LayerNorms, "
    "attention matmuls and softmax in float. XNNPACK has no int8 kernels for SQUARED_DIFFERENCE, RSQRT, SUB/ADD of "
    "the decomposed LayerNorm, BATCH_MATMUL of two activations, SOFTMAX or GELU, so in edgemp's artifact those run in "
    "TFLite's builtin kernels between XNNPACK partitions (vit_tiny: 103 of 131 nodes delegated, PT2E 148 of 150; "
    "torch_transformer 46/57 vs 72/72). precision='mixed' chooses float layers by accuracy, not speed, so it does "
    "not close the gap (vit_tiny ×2.67). Reproduce: " + REPRO.format("transformer"))
_VIT_CLS = (
    "torchvision's VisionTransformer initialises the class token to zeros, so before the first LayerNorm the class "
    "row is ~0.014 in magnitude beside patch tokens up to 5.0; edgemp quantizes the token sequence (position-embedding "
    "ADD, LayerNorm arithmetic) with one int8 scale per tensor (step ~0.04), which rounds the class row away, and the "
    "head reads only that row. PT2E keeps that ADD and the LayerNorms in float. With a class token of trained-like "
    "magnitude (N(0, 1)) edgemp's int8 reaches 28.5 dB (PT2E 31.6): a property of this random init. "
    "Reproduce: " + REPRO.format("vit-class-token"))
_HSWISH = (
    "a different op placement: PT2E leaves the stem's HARD_SWISH (1×32×32×16, the largest activation) and the SE-block "
    "ADD/MUL in float, which XNNPACK runs; edgemp's stem HARD_SWISH is int8, and XNNPACK has no int8 HARD_SWISH, so it "
    "runs in TFLite's builtin kernel (edgemp: 20 int8 HARD_SWISH outside XNNPACK, the anchor 19). "
    "Reproduce: " + REPRO.format("lraspp"))
# (model, precision, kind prefix) -> cause, found by reading edgemp/quantize/, edgemp/sources/ and the quantizer, and
# checked with benchmarks/zoo_findings.py. Anything unmatched is reported as "not investigated".
CAUSES: dict[tuple[str, str, str], str] = {
    ("*", "fp16", "artifact larger"): _FP16,
    ("*", "dynamic-int8", "fidelity below"): _DYN,
    ("*", "dynamic-int8", "latency above"): _DYN,
    ("vit_tiny", "int8", "fidelity below"): _VIT_CLS,
    ("vit_tiny", "int8", "latency above"): _TRANSFORMER,
    ("torch_transformer", "int8", "latency above"): _TRANSFORMER,
    ("lraspp_mobilenet_v3_large", "int8", "latency above"): _HSWISH,
}


def cause(row: dict[str, Any], kind: str) -> str:
    for (model, prec, prefix), text in CAUSES.items():
        if model in (row["model"], "*") and prec in (row["precision"], "*") and kind.startswith(prefix):
            return text
    return "not investigated"


def render(result: dict[str, Any]) -> str:
    rows, t = result["rows"], result["totals"]
    v = t["verdicts"]
    ok = lambda b: "**met**" if b else "**NOT met**"  # noqa: E731
    lines = [
        "# Model zoo: edgemp against the official converters", "",
        f"{t['models']} models × their precisions = {t['rows']} rows, in one run ({result['runtime_s'] / 60:.1f} min). "
        f"Host: {result['host']}; CPU flags: {' '.join(result['cpu_flags'])}.", "",
        "## Targets", "",
        "| target | total | verdict |", "|---|---|---|",
        f"| edgemp succeeds wherever the anchor succeeds | {t['edgemp_ok_where_anchor_ok']}/{t['anchor_ok']} rows "
        f"(edgemp ok {t['edgemp_ok']}/{t['rows']}; edgemp only: {', '.join(t['edgemp_only']) or 'none'}) | "
        f"{ok(v['succeeds_where_anchor_succeeds'])} |",
        f"| fully integer on at least as many models as the anchor (int8 rows) | edgemp {t['fully_integer_edgemp']}, "
        f"anchor {t['fully_integer_anchor']} of {t['int8_rows']}"
        + (f"; anchor-only: {', '.join(t['fully_integer_anchor_not_edgemp'])}" if t["fully_integer_anchor_not_edgemp"]
           else "") + f" | {ok(v['fully_integer_at_least_anchor'])} |",
        f"| artifact size never larger than the anchor's | max ×{_f(t['max_size_ratio'], '.4f')} "
        f"({t['max_size_ratio_at']}) | {ok(v['size_never_larger'])} |",
        f"| latency within {LATENCY_LIMIT}× at the same precision and op placement | max ×"
        f"{_f(t['max_latency_ratio'], '.3f')} ({t['max_latency_ratio_at']}) over {t['same_placement_rows']} rows "
        f"with the same placement; over all rows ×{_f(t['max_latency_ratio_any_placement'], '.3f')} "
        f"({t['max_latency_ratio_any_placement_at']}) | {ok(v['latency_within_1.05'])} |",
        "", "## Where edgemp falls short, and why", "",
    ]
    fs = result["findings"]
    for title, target in (("Targets missed", True), ("Other shortfalls (not targets)", False)):
        lines += [f"**{title}:**", ""]
        by_cause: dict[str, list[dict[str, Any]]] = {}
        for f in fs:
            if f["target"] is target:
                by_cause.setdefault(f["cause"], []).append(f)
        for text, group in by_cause.items():  # each cause once, after the rows it explains
            lines.append("- " + "; ".join(f"**{f['row']}** — {f['kind']}: {f['detail']}" for f in group) + ".")
            lines.append(f"  *Cause:* {text}")
        if not by_cause:
            lines.append("- none")
        lines.append("")
    lines += ["**Where the anchor fails** (edgemp converts these):", ""]
    lines += [f"- **{r['model']} {r['precision']}** — {r['anchor']['name']}: {r['anchor']['status']}"
              + (f" ({r['anchor']['attempts']} attempts)" if r["anchor"].get("attempts", 1) > 1 else "")
              for r in rows if r["edgemp"]["ok"] and not r["anchor"]["ok"]] or ["- none"]
    if any("CRASH" in r["anchor"]["status"] for r in rows):
        lines += ["", "The anchor's crashes reproduce on their own: " + REPRO.format("anchor-crash") + "."]
    lines += [
        "", "## Rows", "",
        "| model | kind | input | prec | anchor | edgemp status | anchor status | fully int8 edgemp | fully int8 anchor | "
        "bytes edgemp | bytes anchor | size ×anchor | ms edgemp | ms anchor | latency ×anchor | same placement | "
        "fidelity edgemp SQNR dB / cos / top-1 | fidelity anchor SQNR dB / cos / top-1 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        e, a, lat = r["edgemp"], r["anchor"], r.get("latency") or {}
        lines.append(
            f"| {r['model']} | {r['kind']} | {r['input']} | {r['precision']} | {a['name']} | {_status(e)} | "
            f"{_status(a)} | {_fi(e)} | {_fi(a)} | {_f(e.get('bytes'), ',')} | {_f(a.get('bytes'), ',')} | "
            f"{_f(r.get('size_ratio'), '.4f')} | {_f(lat.get('edgemp_ms'), '.4g')} | {_f(lat.get('anchor_ms'), '.4g')} | "
            f"{_f(lat.get('ratio'), '.3f')} | {'yes' if r.get('same_placement') else ('no' if 'same_placement' in r else '–')} | "
            f"{_fid(e)} | {_fid(a)} |")
    lines += [
        "", "## How it was measured", "",
        "- **edgemp**: `edgemp.convert(model, precision, calibration, validation=..., max_accuracy_drop=None)` with the "
        f"same {N_CALIB} calibration samples the anchor gets; status `ok` when it wrote an artifact (a failed report "
        "gate is shown but still counts as converted), else the EdgempError class and first line.",
        "- **Anchors**: Keras → `tf.lite.TFLiteConverter.from_keras_model` on the same fixed-batch-1 model edgemp "
        "converts (fp16: float16 weights; dynamic-int8: Optimize.DEFAULT alone; int8: representative dataset, "
        "TFLITE_BUILTINS_INT8, int8 I/O). PyTorch → litert-torch with NHWC input (`to_channel_last_io`, image models): "
        "float for fp32, `generative.quantize.quant_recipes.full_fp16_recipe()` / `full_dynamic_recipe()` (AI Edge "
        "Quantizer recipes with the default regex `.*`; litert-torch documents them for Generative-API models, they "
        "apply to any converted model) for fp16 / dynamic-int8, PT2E static int8 (per-channel symmetric, int8 I/O) for "
        f"int8, retried up to {result['settings']['pt2e_attempts']} times on prepare_pt2e's intermittent AssertionError.",
        "- **Fully integer**: `census(artifact).float_compute_ops(allow_io_boundaries=True)` is empty, for both artifacts "
        "(a QUANTIZE right after a float input and a DEQUANTIZE right before a float output are allowed, so an anchor "
        "with float I/O is judged like one with int8 I/O). n/a for fp32/fp16/dynamic-int8 (float compute by design).",
        "- **Same placement**: the set of compute kinds of the weighted ops (CONV/DEPTHWISE/FC/BATCH_MATMUL...) and, for "
        "int8, whether any op computes in float, are equal for both artifacts. The latency target is judged on those "
        "rows only; the others are listed with their ratio for information.",
        f"- **Latency**: {result['settings']['rounds']} rounds, each artifact invoked in turn invoke by invoke (order "
        "rotated), batch 1, 1 thread, XNNPACK on; ms = median over all invokes; ratio = median of per-round ratios. A "
        f"ratio above {LATENCY_LIMIT} is measured again with twice the rounds and the second figure is kept (the first "
        "is in the JSON). Absolute ms move with the load of this shared 2-core machine; ratios are the signal.",
        f"- **Fidelity**: SQNR (min over outputs), cosine (min over outputs) and top-1 agreement (class axis of the "
        f"primary output: logits, per-pixel classes, per-anchor scores) against the float model in its framework, on "
        f"the same {N_EVAL} held-out inputs for both artifacts.",
        f"- **Data**: random-init applications get BatchNorm statistics from {N_BN} crops of real photos (Keras: "
        "momentum 0 and one training pass; PyTorch: cumulative average over 4 train-mode batches) and no softmax head; "
        f"photos — {result['photos']}. Small models: trained on sklearn digits (tests/models.py; multi-input here).",
        "- Random-init deep networks lose most of their signal in int8 with either converter (SQNR 3–10 dB on "
        "MobileNet/EfficientNet/ResNet50 here, edgemp and anchor alike): without trained weights, quantization noise "
        "is not small next to the logits' spread. edgemp's report gate flags those rows (`report gate failed`); "
        "the comparison with the anchor on the same inputs is what this table is for.",
        f"- Cached rows reused from an earlier, interrupted run: {result['cached_rows']}. Native crashes (the step "
        "is recorded as crashed, a new worker process resumes after it): "
        + (", ".join(f"{k.replace('#', ' ')}: {v}" for k, v in result["crashes"].items()) or "none") + ".",
        "- The causes above were checked with `benchmarks/zoo_findings.py` (one subcommand per cause).",
    ]
    return "\n".join(lines) + "\n"


# -- driver -----------------------------------------------------------------------------------------------
def cache_file(out: Path, settings: dict[str, Any]) -> Path:
    key = hashlib.sha256(json.dumps([str(out.resolve()), settings, VERSION], sort_keys=True).encode()).hexdigest()[:12]
    p = cache_dir() / "bench" / f"zoo_rows-{key}.json"
    p.parent.mkdir(parents=True, exist_ok=True)
    return p


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help=f"smoke test: {', '.join(QUICK)}, fewer latency rounds")
    ap.add_argument("--models", default=None, help="comma-separated subset of: " + ", ".join(s.name for s in ZOO))
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--rounds", type=int, default=None, help="latency rounds (default 7; 3 with --quick)")
    ap.add_argument("--pt2e-attempts", type=int, default=5)
    ap.add_argument("--fresh", action="store_true", help="ignore cached rows")
    ap.add_argument("--max-crashes", type=int, default=8, help="worker restarts after a native crash")
    ap.add_argument("--render", action="store_true",
                    help="only re-render OUT/zoo.md (and totals, findings) from OUT/zoo.json; measures nothing")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.rounds = args.rounds or (3 if args.quick else 7)
    args.names = QUICK if args.quick else (args.models.split(",") if args.models else [s.name for s in ZOO])
    unknown = [n for n in args.names if n not in {s.name for s in ZOO}]
    if unknown:
        ap.error(f"unknown model(s) {unknown}")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Supervisor: runs the benchmark in a worker process and starts a new one when a native crash kills it."""
    import signal
    import subprocess

    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse(argv)
    if args.worker:
        return worker(args)
    if args.render:
        return finish(json.loads((args.out / "zoo.json").read_text()), args.out)
    global FIT, EVAL
    FIT, EVAL, photo_note = photo_sets()
    cfile = cache_file(args.out, settings_of(args, photo_note))
    if args.fresh:
        cfile.unlink(missing_ok=True)
        argv = [a for a in argv if a != "--fresh"]
    marker = cfile.with_suffix(".stage")
    marker.unlink(missing_ok=True)
    for _ in range(args.max_crashes + 1):
        rc = subprocess.call([sys.executable, str(Path(__file__).resolve()), *argv, "--worker"])
        if rc == 0:
            return json.loads((args.out / "zoo.json").read_text())
        if rc > 0 or not marker.exists():
            sys.exit(rc if rc > 0 else 1)  # a Python error (or a crash outside any step): do not loop
        why = signal.Signals(-rc).name if -rc in signal.Signals._value2member_map_ else f"signal {-rc}"
        where = json.loads(marker.read_text())
        cached = json.loads(cfile.read_text()) if cfile.exists() else {}
        cached.setdefault("__crashed__", {})[f"{where['key']}#{where['stage']}"] = why
        cfile.write_text(json.dumps(cached, default=str))
        marker.unlink()
        print(f"[zoo] worker died ({why}) in {where['key']} {where['stage']}; resuming without that step", flush=True)
    sys.exit(f"[zoo] gave up after {args.max_crashes} crashes")


def settings_of(args: argparse.Namespace, photo_note: str) -> dict[str, Any]:
    return {"rounds": args.rounds, "pt2e_attempts": args.pt2e_attempts, "photos": photo_note,
            "n": [N_CALIB, N_EVAL, N_BN]}


def worker(args: argparse.Namespace) -> dict[str, Any]:
    global FIT, EVAL
    FIT, EVAL, photo_note = photo_sets()
    settings = settings_of(args, photo_note)
    specs = {s.name: s for s in ZOO}
    cfile = cache_file(args.out, settings)
    cached: dict[str, Any] = json.loads(cfile.read_text()) if cfile.exists() else {}
    prior_runtime = cached.pop("__runtime_s__", {}).get("s", 0.0)
    crashed = cached.pop("__crashed__", {})
    journal = Journal(cfile.with_suffix(".stage"), crashed)

    def save(t_start: float) -> None:
        meta = {"__runtime_s__": {"s": prior_runtime + time.perf_counter() - t_start}, "__crashed__": crashed}
        cfile.write_text(json.dumps(cached | meta, default=str))

    t_start = time.perf_counter()
    rows, reused = [], 0
    work = work_dir("edgemp-zoo-")
    for name in args.names:
        spec = specs[name]
        keys = [f"{name}|{p}" for p in spec.precisions]
        if all(k in cached for k in keys):
            rows += [cached[k] for k in keys]
            reused += len(keys)
            continue
        t0 = time.perf_counter()
        print(f"[zoo] {name}: building", flush=True)
        try:
            if why := journal.died(f"{name}|*", "build"):
                raise RuntimeError(crash_status(why, "building the model"))
            journal.begin(f"{name}|*", "build")
            case = spec.build()
            case.ref = reference(spec, case)
        except Exception as exc:  # noqa: BLE001 - a model that cannot be built is reported, the run goes on
            traceback.print_exc(limit=3)
            for p in spec.precisions:
                bad = {"status": f"model build failed: {type(exc).__name__}: {first_line(exc)}", "ok": False}
                rows.append({"model": name, "family": spec.family, "kind": spec.kind, "input": spec.input,
                             "precision": p, "note": "", "edgemp": dict(bad), "anchor": dict(bad, name="–")})
            continue
        for p, key in zip(spec.precisions, keys, strict=True):
            if key in cached:
                rows.append(cached[key])
                reused += 1
                continue
            row = measure_row(spec, case, p, args, work, journal)
            shutil.rmtree(work / f"{name}-{p}", ignore_errors=True)  # edgemp's artifact and report, measured
            rows.append(row)
            cached[key] = row
            save(t_start)
            journal.done()
            lat = row.get("latency") or {}
            print(f"[zoo] {name} {p}: edgemp {row['edgemp']['status'][:80]} | anchor {row['anchor']['status'][:80]} | "
                  f"size ×{_f(row.get('size_ratio'), '.4f')} | latency ×{_f(lat.get('ratio'), '.3f')} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
        del case
        gc.collect()
        if spec.family == "keras":
            import keras

            keras.backend.clear_session()

    shutil.rmtree(work, ignore_errors=True)
    runtime = prior_runtime + time.perf_counter() - t_start
    return finish({"rows": rows, "host": cpu_description(), "cpu_flags": cpu_flags(), "photos": photo_note,
                   "settings": settings, "cached_rows": reused, "crashes": crashed, "runtime_s": round(runtime, 1),
                   "versions": edgemp_versions()}, args.out)


def finish(result: dict[str, Any], out: Path) -> dict[str, Any]:
    """Totals, verdicts and findings from the rows; write zoo.json and zoo.md."""
    rows = result["rows"]
    for r in rows:  # from the stored placements, so cached rows follow the current definition
        if "same_placement" in r:
            r["same_placement"] = same_placement(r)
    result |= {"totals": summarize(rows), "findings": findings(rows)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "zoo.json").write_text(json.dumps(result, indent=2, default=str))
    md = render(result)
    (out / "zoo.md").write_text(md)
    print(md)
    return result


def edgemp_versions() -> dict[str, str]:
    from edgemp._versions import versions

    v = dict(versions())
    import importlib.metadata as md

    for pkg in ("torch", "torchvision", "litert-torch", "keras", "tensorflow-cpu"):
        try:
            v[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return v


if __name__ == "__main__":
    main()
