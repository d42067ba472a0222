"""Fidelity gate study: which output SQNR and cosine separate good artifacts from damaged ones, per precision.

Without labels or a metric, edgemp judges an artifact by output fidelity against the float model: the worst
output's SQNR (dB) and its mean per-sample cosine must reach config.FIDELITY_FLOOR of the precision. This study
measures what those numbers say about the task, on trained models with real labelled data:

  - fashion_cnn (Keras), fashion_cnn_torch (PyTorch), sensitive_cnn (Keras; full INT8 hurts it), all trained on
    Fashion-MNIST by edgemp.demo, validated on 1,000 test images (top-1);
  - tests/models.py: keras_vit and torch_transformer on digit row tokens (top-1), torch_segmenter (label maps,
    mIoU with 255 = ignore; its `aux` output is judged by fidelity only), torch_detector (boxes + scores,
    judged by tests.models.detection_accuracy as metric=), validated on the 397 held-out digits.

Artifacts: every precision through edgemp.convert (labelled validation: the real accuracy drop), plus damaged
artifacts made with edgemp's own engine (edgemp.quantize): calibration on the wrong input range (x255 ... x0.01),
on 1-2 samples, with the AI Edge Quantizer's default moving-average statistics, weights perturbed before
quantizing, and int8 outputs with a badly chosen range (clipped, too coarse, or so wide that every value is the
zero point: a dead output). Each is classified by its labelled drop: good (<= 1 point), grey (1-5), damaged (> 5).
Every artifact is then validated again WITHOUT labels with the defaults in edgemp/config.py (the real gate).

    source scripts/env.sh && python benchmarks/fidelity_gate.py
Writes benchmarks/results/fidelity_gate.{json,md}; `--report-only` rewrites the .md from the .json. About 6 minutes
on an idle 2-core machine (one thread), 13 when the machine is shared.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from _common import cpu_description, work_dir

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests.models: the small trained models of the test suite

import edgemp  # noqa: E402
from edgemp import demo  # noqa: E402
from edgemp.config import FIDELITY_FLOOR, GateOptions, Precision, RuntimeOptions  # noqa: E402
from edgemp.errors import EdgempError, MixedPrecisionError  # noqa: E402
from edgemp.quantize import apply_recipe, calibrate, recipe_for  # noqa: E402
from edgemp.quantize.engine import _silenced, signature_key  # noqa: E402
from edgemp.sources import load_source  # noqa: E402
from edgemp.validation.data import ValidationData, load_validation  # noqa: E402
from edgemp.validation.evaluate import batched, evaluate  # noqa: E402

OUT = REPO / "benchmarks" / "results"
PRECISIONS = ("fp32", "fp16", "dynamic-int8", "int8", "int16x8", "mixed")
GOOD, GREY = 1.0, 5.0  # labelled drop in points: good <= 1 < grey <= 5 < damaged
RT = RuntimeOptions(num_threads=1, latency_runs=0, warmup_runs=0)
NF = 1000  # Fashion-MNIST test images per model (int16x8 runs without XNNPACK: ~10 ms per image here)


@dataclasses.dataclass
class Case:
    name: str
    model: Any
    kw: dict[str, Any]  # convert() keywords: example_input / input_layout (PyTorch), metric
    cal: np.ndarray  # calibration inputs (200, user layout)
    x: np.ndarray  # validation inputs (user layout)
    y: Any  # class ids, label maps or detection targets
    score: str  # what the drop is measured in


def cases() -> list[Case]:
    import torch

    from tests import models as m

    xt, yt = demo.fashion_mnist("test")
    xtr = demo.fashion_mnist("train")[0][:200]
    nchw = lambda a: np.ascontiguousarray(a.transpose(0, 3, 1, 2))  # noqa: E731
    tok, ytok = m.digit_tokens()
    seg_x, seg_y = m.segmentation_data()
    det_x, det_t = m.detection_data()
    n = m.N_TRAIN
    return [
        Case("fashion_cnn (Keras)", demo.example_model_path(), {}, xtr, xt[:NF], yt[:NF], "top-1"),
        Case("fashion_cnn_torch (PyTorch)", demo.torch_example_model(),
             {"example_input": torch.zeros(1, 1, 28, 28), "input_layout": "NHWC"}, nchw(xtr), nchw(xt[:NF]),
             yt[:NF], "top-1"),
        Case("sensitive_cnn (Keras)", demo.sensitive_model_path(), {}, xtr * 255.0, xt[:NF] * 255.0, yt[:NF],
             "top-1"),
        Case("keras_vit (Keras)", m.keras_vit(), {}, tok[:200], tok[n:], ytok[n:], "top-1"),
        Case("torch_transformer (PyTorch)", m.torch_transformer(), {"example_input": torch.zeros(1, 8, 8)},
             tok[:200], tok[n:], ytok[n:], "top-1"),
        Case("torch_segmenter (PyTorch)", m.torch_segmenter(),
             {"example_input": torch.zeros(1, 1, 16, 16), "input_layout": "NHWC"}, seg_x[:200], seg_x[n:], seg_y[n:],
             "mIoU"),
        Case("torch_detector (PyTorch)", m.torch_detector(),
             {"example_input": torch.zeros(1, 1, 32, 32), "input_layout": "NHWC", "metric": m.detection_accuracy},
             det_x[:200], det_x[n:], det_t[n:], "detection accuracy"),
    ]


# -- damaged artifacts, made with edgemp's own engine -------------------------------------------------------------
class Ctx:
    """One model loaded once: its float .tflite, the validation data, the float reference outputs."""

    def __init__(self, case: Case) -> None:
        self.case = case
        self.source = load_source(case.model, example_input=case.kw.get("example_input"),
                                  input_layout=case.kw.get("input_layout"))
        self.float_tflite = self.source.to_float_tflite(1)
        self.specs = self.source.input_specs()
        self.metric = case.kw.get("metric")
        self.vdata = load_validation((case.x, case.y), self.specs, opaque_labels=self.metric is not None)
        self.unlabelled = ValidationData(self.vdata.inputs, None, None, "the same inputs, labels withheld", [])
        self.ref = batched(self.source.predict, self.vdata.inputs)

    def samples(self, scale: float = 1.0, n: int | None = None) -> list[dict[str, np.ndarray]]:
        name = self.specs[0].name
        cal = self.case.cal[:n]
        return [self.source.artifact_inputs({name: (cal[i : i + 1] * scale).astype(np.float32)})
                for i in range(len(cal))]

    def evaluate(self, artifact: bytes, precision: Precision, labelled: bool) -> tuple[dict[str, Any], list[Any]]:
        gate = GateOptions(max_accuracy_drop=None, metric=self.metric) if labelled else GateOptions()
        return evaluate(artifact, None, self.vdata if labelled else self.unlabelled, RT, gate, precision=precision,
                        reference_outputs=self.ref, adapt=self.source.artifact_inputs,
                        channels_first=self.source.output_channels_first(), output_names=self.source.output_names())


def moving_average_stats(float_tflite: bytes, samples: list[dict[str, np.ndarray]]) -> dict[str, Any]:
    """The AI Edge Quantizer's default calibration (moving average of per-sample min/max), which edgemp avoids."""
    from ai_edge_quantizer import calibrator, recipe_manager

    from edgemp.quantize.recipes import static_rule

    manager = recipe_manager.RecipeManager()
    manager.load_quantization_recipe([static_rule(8)])
    with _silenced():
        cal = calibrator.Calibrator(float_tflite, num_threads=1)  # no qsv_update_func: the library default
        cal.calibrate({signature_key(float_tflite): samples}, manager)
    return dict(cal.get_model_qsvs())


def _model(tflite: bytes) -> tuple[Any, Any]:
    from edgemp.targets.tflite.census import _schema
    from edgemp.targets.tflite.compat import inline_buffers

    schema = _schema()[0]
    return schema, schema.ModelT.InitFromPackedBuf(inline_buffers(tflite), 0)


def _pack(schema: Any, m: Any) -> bytes:
    import flatbuffers

    from edgemp.targets.tflite.compat import _aligned

    m.buffers = [_aligned(schema, b) for b in m.buffers]
    builder = flatbuffers.Builder(1 << 20)
    builder.Finish(m.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def perturb_weights(float_tflite: bytes, rel: float, seed: int = 0) -> bytes:
    """The float model with Gaussian noise (sigma = rel x the tensor's std) on every conv / dense / matmul weight."""
    from edgemp.targets.tflite.census import WEIGHTED_OPS, _schema

    schema, m = _model(float_tflite)
    names = _schema()[1]
    rng = np.random.default_rng(seed)
    done: set[int] = set()
    for sg in m.subgraphs:
        for op in sg.operators:
            code = m.operatorCodes[op.opcodeIndex]
            if names.get(max(code.builtinCode, code.deprecatedBuiltinCode)) not in WEIGHTED_OPS or len(op.inputs) < 2:
                continue
            t = sg.tensors[op.inputs[1]]
            buf = m.buffers[t.buffer]
            if t.type != schema.TensorType.FLOAT32 or buf.data is None or len(buf.data) == 0 or t.buffer in done:
                continue
            w = np.frombuffer(np.asarray(buf.data, np.uint8).tobytes(), np.float32)
            w = w + rng.normal(0.0, rel * float(w.std()), w.shape).astype(np.float32)
            buf.data = np.frombuffer(w.astype(np.float32).tobytes(), np.uint8)
            done.add(t.buffer)
    assert done, "no weights found to perturb"
    return _pack(schema, m)


def output_tensor_names(float_tflite: bytes) -> list[str]:
    _, m = _model(float_tflite)
    sg = m.subgraphs[0]
    return [sg.tensors[i].name.decode() for i in sg.outputs]


def widen_outputs(stats: dict[str, Any], names: list[str], factor: float) -> dict[str, Any]:
    """The calibrated range of every model output scaled by `factor` (< 1 clips, > 1 coarsens the int8 steps)."""
    out = dict(stats)
    for n in names:
        q = out[n]
        out[n] = {**q, "min": np.asarray(q["min"]) * factor, "max": np.asarray(q["max"]) * factor}
    return out


def damaged(ctx: Ctx) -> list[tuple[str, Precision, Callable[[], bytes]]]:
    """(variant, precision, build) of the deliberately damaged artifacts."""
    f = ctx.float_tflite
    p8, p16 = Precision.INT8, Precision.INT16X8
    r8, r16 = recipe_for(p8), recipe_for(p16)

    def static(recipe: Any, scale: float = 1.0, n: int | None = None, model: bytes = f) -> bytes:
        return apply_recipe(model, recipe, calibrate(model, ctx.samples(scale, n)))

    def out_range(factor: float) -> bytes:
        return apply_recipe(f, r8, widen_outputs(calibrate(f, ctx.samples()), output_tensor_names(f), factor))

    def noisy(rel: float, precision: Precision) -> bytes:
        g = perturb_weights(f, rel)
        rec = recipe_for(precision)
        return static(rec, model=g) if precision.needs_calibration else (apply_recipe(g, rec) if rec else g)

    v: list[tuple[str, Precision, Callable[[], bytes]]] = []
    for s in (255.0, 16.0, 4.0, 0.25, 0.01):
        v.append((f"calibrated on inputs x{s:g}", p8, lambda s=s: static(r8, s)))
    v += [("calibrated on 1 sample", p8, lambda: static(r8, n=1)),
          ("calibrated on 2 samples", p8, lambda: static(r8, n=2)),
          ("moving-average calibration (quantizer default)", p8,
           lambda: apply_recipe(f, r8, moving_average_stats(f, ctx.samples())))]
    for rel in (0.03, 0.1, 0.3):
        v.append((f"weights +{100 * rel:g}% noise", p8, lambda rel=rel: noisy(rel, p8)))
    for fac, what in ((0.1, "clipped"), (0.3, "clipped"), (30.0, "coarse"), (1e4, "dead")):
        v.append((f"output range x{fac:g} ({what})", p8, lambda fac=fac: out_range(fac)))
    v += [("calibrated on inputs x0.01", p16, lambda: static(r16, 0.01)),
          ("calibrated on inputs x255", p16, lambda: static(r16, 255.0)),
          ("calibrated on 1 sample", p16, lambda: static(r16, n=1))]
    for prec, rels in ((Precision.DYNAMIC_INT8, (0.1, 0.3)), (Precision.FP16, (0.03, 0.1)),
                       (Precision.FP32, (0.03, 0.1, 0.3))):
        for rel in rels:
            v.append((f"weights +{100 * rel:g}% noise", prec, lambda rel=rel, prec=prec: noisy(rel, prec)))
    return v


# -- rows ----------------------------------------------------------------------------------------------------------
def row(case: Case, precision: str, variant: str, section: dict[str, Any],
        unlabelled: tuple[dict[str, Any], list[Any]]) -> dict[str, Any]:
    """One artifact: labelled figures from `section` (validation with labels), the gate's verdict without them."""
    outs = section["outputs"]
    acc = section["accuracy"] or {}
    drop = 100 * acc["drop"] if acc.get("drop") is not None else None
    worst = min(outs, key=lambda o: o["sqnr_db"])
    agree = [o["top1_agreement"] for o in outs if o["top1_agreement"] is not None]
    usection, uchecks = unlabelled
    cls = None if drop is None else ("good" if drop <= GOOD + 1e-9 else "grey" if drop <= GREY + 1e-9 else "damaged")
    return {
        "model": case.name, "precision": precision, "variant": variant, "score": case.score,
        "float_score": acc.get("float_top1", acc.get("float_miou", acc.get("float"))),
        "artifact_score": acc.get("top1", acc.get("miou", acc.get("artifact"))),
        "drop_points": drop, "class": cls,
        "sqnr_db": float(worst["sqnr_db"]), "worst_output": worst["name"],
        "cosine": float(min(o["cosine"] for o in outs)), "min_cosine": float(min(o["min_cosine"] for o in outs)),
        "top1_agreement": min(agree) if agree else None,
        "outputs": {o["name"]: {k: o[k] for k in ("sqnr_db", "cosine", "min_cosine", "top1_agreement")} for o in outs},
        "collapse": [c.detail for c in uchecks if c.name.startswith("not_collapsed") and not c.passed],
        "unlabelled_gate": usection["fidelity_gate"],
        "unlabelled_passed": all(c.passed for c in uchecks),
        "unlabelled_failures": [c.name for c in uchecks if not c.passed],
    }


def study(case: Case, work: Path, log: Callable[[str], None]) -> list[dict[str, Any]]:
    rows = []
    ctx = Ctx(case)
    for prec in PRECISIONS:
        t0 = time.perf_counter()
        try:
            with warnings.catch_warnings():  # layout-overhead warnings of the PyTorch models: not this study's subject
                warnings.simplefilter("ignore", UserWarning)
                r = edgemp.convert(case.model, prec, case.cal, (case.x, case.y), work / f"{len(rows)}-{prec}",
                                   latency_runs=0, progress=False, force=True, **case.kw)
        except MixedPrecisionError as exc:  # the best artifact is written and reported all the same
            r = exc.result
        except EdgempError as exc:
            log(f"  {prec}: not converted: {type(exc).__name__}: {str(exc)[:200]}")
            rows.append({"model": case.name, "precision": prec, "variant": "edgemp.pipeline", "error": str(exc)[:300]})
            continue
        art = r.artifacts["tflite"].read_bytes()
        # the labelled figures of the convert() report itself; the unlabelled verdict on the same artifact
        rows.append(row(case, prec, "edgemp.pipeline", r.report["validation"],
                        ctx.evaluate(art, Precision(prec), labelled=False)))
        log(_line(rows[-1], time.perf_counter() - t0))
    for variant, prec, build in damaged(ctx):
        t0 = time.perf_counter()
        try:
            art = build()
        except EdgempError as exc:
            log(f"  {prec.value} {variant}: not built: {str(exc)[:200]}")
            rows.append({"model": case.name, "precision": prec.value, "variant": variant, "error": str(exc)[:300]})
            continue
        if (why := load_failure(art, work)) is not None:
            log(f"  {prec.value} {variant}: {why}")
            rows.append({"model": case.name, "precision": prec.value, "variant": variant, "error": why,
                         "unloadable": True})
            continue
        rows.append(row(case, prec.value, variant, ctx.evaluate(art, prec, labelled=True)[0],
                        ctx.evaluate(art, prec, labelled=False)))
        log(_line(rows[-1], time.perf_counter() - t0))
    return rows


def load_failure(artifact: bytes, work: Path) -> str | None:
    """None if LiteRT (XNNPACK on, as edgemp validates) loads the artifact; else why. Probed in a child process:
    an artifact with absurd quantization scales makes XNNPACK abort the whole process, not raise."""
    from edgemp.targets.tflite.census import census

    path = work / "probe.tflite"
    path.write_bytes(artifact)
    code = ("from ai_edge_litert.interpreter import Interpreter\n"
            f"Interpreter(model_path={str(path)!r}, num_threads=1).allocate_tensors()")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    if r.returncode == 0:
        return None
    scales = [s for op in census(artifact).ops for t in (*op.inputs, *op.outputs) for s in t.scale]
    how = "aborted the process (SIGABRT)" if r.returncode in (-6, 134) else f"failed (exit code {r.returncode})"
    return (f"LiteRT {how} while preparing it with XNNPACK; largest quantization scale in the artifact "
            f"{max(scales, default=0.0):.3g}. edgemp's own validation would die the same way (see the notes).")


def _line(r: dict[str, Any], seconds: float) -> str:
    agree = "-" if r["top1_agreement"] is None else f"{r['top1_agreement']:.3f}"
    return (f"  {r['precision']:>12} {r['variant'][:48]:<48} drop {r['drop_points']:+7.2f}  SQNR {r['sqnr_db']:7.2f} dB  "
            f"cos {r['cosine']:.5f}  agree {agree}  {r['class']:<7} unlabelled "
            f"{'PASS' if r['unlabelled_passed'] else 'FAIL'}  ({seconds:.1f} s)")


# -- choosing the floors -------------------------------------------------------------------------------------------
CONVERT = "edgemp.pipeline"
MARGIN_DB = 2.0  # a floor stays at least this far above the damage ceiling
COSINE_LADDER = (0.9, 0.95, 0.98, 0.99, 0.995, 0.998, 0.999, 0.9995, 0.9998, 0.9999, 0.99995, 0.99998, 0.99999)


def _nines(cos: float) -> float:
    """-log10(1 - cosine): cosine on a scale where equal steps are equal factors of the error (0.999 -> 3)."""
    return -math.log10(max(1.0 - cos, 1e-9))


def choose(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per precision: (min SQNR dB, min cosine) from the study.

    Damage ceiling: the highest SQNR (and, separately, cosine) of a damaged artifact of that precision (mixed: of
    int8, whose failure modes it shares). Good floor: the lowest of the good artifacts edgemp.convert made at that
    precision. The SQNR floor is their midpoint in dB rounded down to a multiple of 5 dB, but never less than
    MARGIN_DB above the damage ceiling; the cosine floor is their midpoint on the -log10(1 - cos) scale, rounded
    down to a step of COSINE_LADDER, but above the ceiling. Every damaged artifact then fails on SQNR alone and on
    cosine alone; deliberately damaged variants that turned out harmless may fall below (listed as overlaps).
    """
    ok = [r for r in rows if "error" not in r and r.get("class")]
    chosen: dict[str, dict[str, Any]] = {}
    for p in PRECISIONS:
        evidence = "int8" if p == "mixed" else p
        damaged_rows = [r for r in ok if r["precision"] == evidence and r["class"] == "damaged"]
        good = [r for r in ok if r["precision"] == p and r["class"] == "good" and r["variant"] == CONVERT]
        if not damaged_rows or not good:
            continue
        d_sq = max(damaged_rows, key=lambda r: _f(r["sqnr_db"]))
        d_cos = max(damaged_rows, key=lambda r: r["cosine"])
        g_sq = min(good, key=lambda r: _f(r["sqnr_db"]))
        g_cos = min(good, key=lambda r: r["cosine"])
        lo, hi = _f(d_sq["sqnr_db"]), min(_f(g_sq["sqnr_db"]), 200.0)
        sqnr = 5.0 * math.floor((lo + hi) / 2 / 5.0)
        if sqnr < lo + MARGIN_DB:
            sqnr = float(math.ceil(lo + MARGIN_DB))
        mid = (_nines(d_cos["cosine"]) + _nines(g_cos["cosine"])) / 2
        below = [c for c in COSINE_LADDER if _nines(c) <= mid + 1e-12 and c > d_cos["cosine"]]
        cos = below[-1] if below else min(c for c in COSINE_LADDER if c > d_cos["cosine"])
        chosen[p] = {"min_sqnr_db": sqnr, "min_cosine": cos, "evidence_precision": evidence,
                     "damage_ceiling": {"sqnr_db": lo, "sqnr_artifact": _who(d_sq), "cosine": d_cos["cosine"],
                                        "cosine_artifact": _who(d_cos)},
                     "worst_good_convert": {"sqnr_db": _f(g_sq["sqnr_db"]), "sqnr_artifact": _who(g_sq),
                                            "cosine": g_cos["cosine"], "cosine_artifact": _who(g_cos)}}
    return chosen


def _f(v: Any) -> float:
    return float(v)  # "inf" (JSON) -> inf


def _who(r: dict[str, Any]) -> str:
    return f"{r['model']} {r['precision']} {r['variant']}"


def floor_passes(r: dict[str, Any], floor: tuple[float, float]) -> bool:
    """The fidelity gate on every output: SQNR >= floor and mean cosine >= floor."""
    return all(_f(o["sqnr_db"]) >= floor[0] and o["cosine"] >= floor[1] for o in r["outputs"].values())


def tally(rows: list[dict[str, Any]], verdict: Callable[[dict[str, Any]], bool]) -> dict[str, dict[str, list[int]]]:
    """precision -> class -> [passed, failed]."""
    out: dict[str, dict[str, list[int]]] = {}
    for r in rows:
        if "error" in r or not r.get("class"):
            continue
        cell = out.setdefault(r["precision"], {c: [0, 0] for c in ("good", "grey", "damaged")})[r["class"]]
        cell[0 if verdict(r) else 1] += 1
    return out


# -- main and the report ---------------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="", help="comma-separated substrings of model names to run (default: all)")
    ap.add_argument("--report-only", action="store_true", help="rewrite the .md from the .json without measuring")
    args = ap.parse_args()
    if args.report_only:
        data = json.loads((OUT / "fidelity_gate.json").read_text())
        write_md(data["rows"], data["runtime_s"], data["host"], data["fidelity_floor"])
        return
    t0 = time.perf_counter()
    work = work_dir("edgemp-fidelity-")
    rows: list[dict[str, Any]] = []
    for case in cases():
        if args.models and not any(s in case.name for s in args.models.split(",")):
            continue
        print(case.name, flush=True)
        rows += study(case, work, lambda s: print(s, flush=True))
        write_json(rows, time.perf_counter() - t0)  # after each model: a crash later keeps what was measured
    seconds = time.perf_counter() - t0
    write_json(rows, seconds)
    write_md(rows, seconds, cpu_description(), {p.value: list(v) for p, v in FIDELITY_FLOOR.items()})
    print(f"total {seconds:.0f} s; wrote {OUT / 'fidelity_gate.md'}")


def write_json(rows: list[dict[str, Any]], seconds: float) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    floors = {p.value: list(v) for p, v in FIDELITY_FLOOR.items()}
    (OUT / "fidelity_gate.json").write_text(json.dumps(_plain(
        {"rows": rows, "chosen": choose(rows), "fidelity_floor": floors, "good_max_drop": GOOD,
         "grey_max_drop": GREY, "runtime_s": round(seconds, 1), "host": cpu_description()}), indent=1,
        allow_nan=False))


def write_md(rows: list[dict[str, Any]], seconds: float, host: str, config: dict[str, list[float]]) -> None:
    chosen = choose(rows)
    ok = [r for r in rows if "error" not in r]
    n_models = len({r["model"] for r in rows})
    lines = ["# Fidelity gate: which output SQNR / cosine separates good artifacts from damaged ones", "",
             f"{len(ok)} artifacts of {n_models} trained models, each validated with labels (the real task drop) and "
             "again without them (the fidelity gate). Classes by labelled drop: **good** <= 1 point, **grey** 1-5, "
             "**damaged** > 5 (top-1 points; mIoU points for torch_segmenter; points of detection accuracy, the "
             "metric= of torch_detector). SQNR is the worst output's; cosine is the lowest per-output mean of the "
             "per-sample cosine (what the gate compares); min cos is the lowest single-sample cosine.", "",
             "## Chosen defaults (edgemp/config.py FIDELITY_FLOOR)", "",
             "| precision | min SQNR dB | min cosine | damage ceiling: highest damaged SQNR / cosine | worst good edgemp.convert "
             "artifact: SQNR / cosine | margins (dB) | in config |", "|---|---|---|---|---|---|---|"]
    for p, c in chosen.items():
        d, g = c["damage_ceiling"], c["worst_good_convert"]
        same = config.get(p) == [c["min_sqnr_db"], c["min_cosine"]]
        ev = "" if c["evidence_precision"] == p else f" (of {c['evidence_precision']})"
        lines.append(f"| {p} | {c['min_sqnr_db']:g} | {c['min_cosine']:g} | {d['sqnr_db']:.2f} dB ({d['sqnr_artifact']})"
                     f" / {d['cosine']:.5f} ({d['cosine_artifact']}){ev} | {g['sqnr_db']:.2f} dB ({g['sqnr_artifact']}) / "
                     f"{g['cosine']:.5f} ({g['cosine_artifact']}) | +{c['min_sqnr_db'] - d['sqnr_db']:.1f} over damage, "
                     f"{g['sqnr_db'] - c['min_sqnr_db']:.1f} under good | {'yes' if same else 'NO: ' + str(config.get(p))} |")
    lines += ["", "Rule (benchmarks/fidelity_gate.py `choose`): the SQNR floor is the midpoint between the damage ceiling "
              "and the worst good artifact of edgemp.convert, rounded down to a multiple of 5 dB but at least "
              f"{MARGIN_DB:g} dB above the ceiling; the cosine floor is their midpoint on the -log10(1 - cos) scale, "
              "rounded down to a step of " + ", ".join(f"{c:g}" for c in COSINE_LADDER) + ", but above the ceiling. "
              "So every damaged artifact fails on SQNR alone and again on cosine alone. mixed has no damaged "
              "artifacts of its own: it is int8 with float islands and shares int8's failure modes and evidence.", ""]
    floors = {p: (c["min_sqnr_db"], c["min_cosine"]) for p, c in chosen.items()}
    by_floor = tally(ok, lambda r: r["precision"] in floors and floor_passes(r, floors[r["precision"]]))
    by_gate = tally(ok, lambda r: r["unlabelled_passed"])
    lines += ["## Pass / fail without labels", "",
              "floor: the chosen floors applied to every output. edgemp: the same artifact validated by edgemp "
              "without labels with the defaults that were in edgemp/config.py for this run (fidelity gate plus the "
              "collapse checks).", "",
              "| precision | good pass / fail (floor) | grey pass / fail (floor) | damaged pass / fail (floor) | "
              "good (edgemp) | grey (edgemp) | damaged (edgemp) |", "|---|---|---|---|---|---|---|"]
    for p in PRECISIONS:
        if p not in by_floor:
            continue
        f, g = by_floor[p], by_gate[p]
        lines.append(f"| {p} | " + " | ".join(f"{f[c][0]} / {f[c][1]}" for c in ("good", "grey", "damaged")) + " | "
                     + " | ".join(f"{g[c][0]} / {g[c][1]}" for c in ("good", "grey", "damaged")) + " |")
    lines += [""]
    for p in PRECISIONS:
        if p not in floors:
            continue
        mine = [r for r in ok if r["precision"] == p]
        conv = [r for r in mine if r["variant"] == CONVERT and r["class"] == "good"]
        bad = [r for r in mine if r["class"] == "damaged"]
        lines.append(f"- {p}: damaged artifacts failing without labels: {sum(not r['unlabelled_passed'] for r in bad)}"
                     f" of {len(bad)}; good edgemp.convert artifacts passing: "
                     f"{sum(r['unlabelled_passed'] for r in conv)} of {len(conv)}.")
    lines += ["", "## Overlaps: good artifacts that fail, grey ones that pass", ""]
    for p in PRECISIONS:
        c = chosen.get(p)
        mine = [r for r in ok if r["precision"] == p and r["class"] == "good"]
        if c is None or not mine:
            continue
        low = min(mine, key=lambda r: _f(r["sqnr_db"]))
        gap = _f(low["sqnr_db"]) - c["damage_ceiling"]["sqnr_db"]
        if gap >= MARGIN_DB and _f(low["sqnr_db"]) >= c["min_sqnr_db"]:
            continue
        what = ("no single floor passes every good artifact and fails every damaged one" if gap <= 0 else
                f"a floor passing every good artifact would clear the damage ceiling by {gap:.1f} dB at most")
        lines.append(f"- {p}: {what}: the lowest good artifact ({_who(low)}, {_f(low['sqnr_db']):.1f} dB, cosine "
                     f"{low['cosine']:.4f}) vs the damage ceiling ({c['damage_ceiling']['sqnr_artifact']}, "
                     f"{c['damage_ceiling']['sqnr_db']:.1f} dB, cosine {c['damage_ceiling']['cosine']:.4f}).")
    lines += ["", "Where they overlap the floors are set to fail every damaged artifact, and the good ones below them "
              "fail too. Those are all deliberately damaged variants that happened to stay within a point of float "
              "(moving-average or 1-2-sample calibration, noisy weights, the segmenter with clipped logits whose "
              "argmax survives while its scores do not), never an artifact edgemp.convert made; they lie among "
              "damaged artifacts of other models (dense and regression outputs lose points at higher SQNR than "
              "classifier logits), so nothing measured without labels can tell them apart. Without labels, "
              "failing a fine artifact costs the user a labelled validation run (the failure says so), passing a "
              "damaged one ships a model that lost points: the floors choose the first. For fp32 and fp16 the good "
              "artifacts that fail are weight-noise variants, 30-100 dB below what a conversion at that precision "
              "gives; a floor low enough to pass them would sit on top of the damaged ones and pass every grey one, "
              "so the midpoint keeps these floors far above any damage seen and far below real conversions.", ""]
    for p in PRECISIONS:
        if p not in floors:
            continue
        fail_good = [r for r in ok if r["precision"] == p and r["class"] == "good" and not floor_passes(r, floors[p])]
        pass_grey = [r for r in ok if r["precision"] == p and r["class"] == "grey" and floor_passes(r, floors[p])]
        pass_bad = [r for r in ok if r["precision"] == p and r["class"] == "damaged" and floor_passes(r, floors[p])]
        for what, rs in (("good, fail", fail_good), ("grey, pass", pass_grey), ("DAMAGED, PASS", pass_bad)):
            if rs:
                lines.append(f"- {p} {what}: " + "; ".join(
                    f"{r['model']} {r['variant']} ({r['drop_points']:+.2f} points, {_f(r['sqnr_db']):.1f} dB, cos "
                    f"{r['cosine']:.4f})" for r in sorted(rs, key=lambda r: _f(r["sqnr_db"]))))
    errors = [r for r in rows if "error" in r]
    if errors:
        lines += ["", "## Not measured", ""]
        lines += [f"- {r['model']} {r['precision']} {r['variant']}: {r['error'][:240]}" for r in errors]
        lines += ["", "edgemp.convert refuses to label an artifact `int8` / `int16x8` / `mixed` when the quantizer left "
                  "ops in float (the LayerNormalization's NEG of keras_vit, the EXP of torch_detector's box decoding, "
                  "int16 ops of torch_transformer): those models' int8 evidence is the engine-made variants, which "
                  "skip that label check (a few ops stay in float). An artifact LiteRT cannot load is left out: "
                  "XNNPACK aborts the process on it (calibration x255 drives the detector's EXP output scale to "
                  "~1e36), and edgemp.validate / convert would die the same way instead of reporting an error."]
    lines += ["", "## Every artifact, by precision, sorted by SQNR", ""]
    for p in PRECISIONS:
        rs = sorted([r for r in ok if r["precision"] == p], key=lambda r: _f(r["sqnr_db"]))
        if not rs:
            continue
        fl = floors.get(p)
        lines += [f"### {p}" + (f" (floor {fl[0]:g} dB, cosine {fl[1]:g})" if fl else ""), "",
                  "| model | artifact | drop (points) | class | SQNR dB (worst output) | cosine | min cos | top-1 agree | "
                  "floor | edgemp, no labels |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in rs:
            agree = "" if r["top1_agreement"] is None else f"{r['top1_agreement']:.3f}"
            worst = f" ({r['worst_output']})" if len(r["outputs"]) > 1 else ""
            verdict = "pass" if fl and floor_passes(r, fl) else "FAIL"
            gate = "pass" if r["unlabelled_passed"] else "FAIL: " + ", ".join(r["unlabelled_failures"])
            lines.append(f"| {r['model']} | {r['variant']} | {r['drop_points']:+.2f} | {r['class']} | "
                         f"{_f(r['sqnr_db']):.2f}{worst} | {r['cosine']:.5f} | {r['min_cosine']:.4f} | {agree} | "
                         f"{verdict} | {gate} |")
        lines.append("")
    lines += ["## Method", "",
              "- Models: fashion_cnn / fashion_cnn_torch / sensitive_cnn (edgemp.demo; trained on Fashion-MNIST; "
              f"{NF} test images), keras_vit / torch_transformer (digit row tokens), torch_segmenter (label maps, "
              "mIoU, 255 = ignore), torch_detector (metric=tests.models.detection_accuracy) from tests/models.py, "
              "trained on the first 1,400 sklearn digits and validated on the other 397. Calibration: 200 training "
              "samples.",
              "- edgemp.convert rows: every precision with labelled validation (the report's own figures). The mixed "
              "search's budget is the default top-1 (or metric) drop of 1 point.",
              "- Damaged rows, made with edgemp.quantize on the same float .tflite: calibration on inputs scaled by "
              "x255 ... x0.01 (wrong preprocessing), on 1-2 samples, with the AI Edge Quantizer's default "
              "moving-average statistics (edgemp uses min/max); Gaussian noise on every conv/dense/matmul weight "
              "(sigma = 3/10/30% of the tensor's std) before quantizing; int8 outputs whose calibrated range was "
              "scaled by 0.1 / 0.3 (clipped), 30 (coarse) or 1e4 (every value the zero point: dead). They are judged "
              "exactly as convert() judges (edgemp.validation.evaluate, same reference outputs).",
              "- Classification by the labelled drop only: a variant that happens to be harmless is good, whatever "
              "was done to it.",
              f"- Host: {host}; LiteRT with XNNPACK, 1 thread. Study time {seconds / 60:.1f} min.",
              "", "Re-run: `source scripts/env.sh && python benchmarks/fidelity_gate.py` (`--report-only` rewrites "
              "this file from the .json)."]
    (OUT / "fidelity_gate.md").write_text("\n".join(lines) + "\n")


def _plain(v: Any) -> Any:
    """JSON-safe: numpy scalars as Python numbers, infinities as the strings "inf" / "-inf"."""
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_plain(x) for x in v]
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


if __name__ == "__main__":
    main()
