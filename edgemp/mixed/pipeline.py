"""Glue between the convert pipeline and the mixed-precision machinery: the search for `precision="mixed"`,
and the per-layer analysis behind `edgemp.analyze`, with their report sections and files."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from edgemp._io import write_atomic
from edgemp.config import GateOptions, RuntimeOptions
from edgemp.errors import ConversionError, InputError
from edgemp.mixed.executor import Executor, make_executor
from edgemp.mixed.graph import describe
from edgemp.mixed.report import plot_png, ranked_rows, to_html, to_markdown
from edgemp.mixed.scoring import Budget, FailedCandidate, Score
from edgemp.targets.tflite.census import census
from edgemp.mixed.graph import LayerGraph
from edgemp.mixed.search import SearchResult, format_score, resolve_cap, search, verify_region
from edgemp.mixed.sensitivity import (HEAD, RANK_SUBSET, LayerSensitivity, added_noise, float_alone_effects,
                                      ranked_int8_alone)
from edgemp.mixed.session import MixedSession
from edgemp.quantize import Statistics
from edgemp.quantize.support import why_float
from edgemp.validation.data import ValidationData


@dataclasses.dataclass
class MixedOutcome:
    artifact: bytes
    recipe: list[dict[str, Any]]
    section: dict[str, Any]  # the report's "mixed" section
    files: dict[str, bytes | str]  # suffix -> content (sensitivity .md/.png/.html)
    met: bool
    message: str
    region_problems: list[str]
    # (source, validation data, its float outputs): the final validation of the same model on the same data reuses
    # them instead of running the float model again
    reference: tuple[Any, Any, list[Any]] | None = None


def run_mixed(source: Any, float_tflite: bytes, stats: Statistics | Callable[[], Statistics], vdata: ValidationData,
              opts: RuntimeOptions, *, float_io: bool, gate: GateOptions, max_float_layers: int | float,
              keep_float: Sequence[str], never_float: Sequence[str], tensor_samples: int, title: str,
              progress: bool | None, class_names: Sequence[str] | None = None,
              learned: tuple[bytes, list[dict[str, Any]] | None] | None = None,
              executor: Any = None, reference: Any = None) -> MixedOutcome:
    """`learned`: a QAT module's int8 artifact and recipe, taken as it is (no float layer) when it meets the
    budget; otherwise the search runs as usual on `float_tflite` (the QAT-trained weights). `reference`: the float
    reference started earlier (edgemp.mixed.session.reference_ahead), or None to run it here."""
    # Check the cheap things first: a bad name or budget must fail before the float reference runs.
    budget = Budget.resolve(gate.max_accuracy_drop, gate.min_sqnr_db, gate.min_cosine,
                            gate.metric is not None or vdata.labels is not None, metric_name(gate, vdata))
    graph = LayerGraph(census(float_tflite), source.layers(), float_io=float_io, aliases=source.scope_aliases())
    keep = graph.select(keep_float, "keep_float")
    never = graph.select(never_float, "never_float")
    if set(keep) & set(never):
        raise InputError("a layer is both in keep_float and never_float: "
                         + ", ".join(describe(graph.by_tensor[t]) for t in set(keep) & set(never)))
    cap = resolve_cap(max_float_layers, len(graph.layers))
    with executor_for(executor) as ex:
        session = MixedSession(source, float_tflite, stats, vdata, opts, float_io=float_io, progress=progress,
                               graph=graph, gate=gate, class_names=class_names, executor=ex, reference=reference)
        outcome = _run_mixed(session, budget, graph, keep, never, cap, learned, tensor_samples, title, progress,
                             float_io, max_float_layers)
    outcome.reference = (source, vdata, session.scorer.reference)
    return outcome


def qat_mixed(conv: Any, artifact: bytes, recipe: Any) -> MixedOutcome:
    """`mixed` from a QAT module (a Conversion whose source is one): the learned scales alone when they meet the
    budget (no float layer); otherwise the search runs on the QAT-trained weights, the layers it keeps int8 getting
    scales from calibration."""
    from edgemp.quantize.rewrites import prepare_for_quantization

    trained = conv.source.trained_source()
    with conv.timer.stage("float_conversion"):
        base = prepare_for_quantization(trained.to_float_tflite(conv.data.batch_size)).model
    vdata, _ = conv.validation
    with conv.timer.stage("mixed_search"):
        m = conv.mixed_options
        outcome = run_mixed(trained, base, lambda: conv._statistics(base, trained), vdata, conv.runtime,
                            float_io=False, gate=conv.gate, max_float_layers=m.max_float_layers,
                            keep_float=m.keep_float, never_float=m.never_float, tensor_samples=32, title=conv.base,
                            progress=conv.progress, class_names=conv.data.class_names, learned=(artifact, recipe),
                            executor=conv.executor)
    outcome.section["calibration_runs"] = conv.calibration_runs
    return outcome


def _run_mixed(session: MixedSession, budget: Budget, graph: LayerGraph, keep: list[str], never: list[str], cap: int,
               learned: tuple[bytes, Any] | None, tensor_samples: int, title: str, progress: bool | None,
               float_io: bool, max_float_layers: int | float) -> MixedOutcome:
    prior = None
    if learned is not None:
        score = session.scorer(learned[0])
        prior = {"score": score.to_dict(), "met": budget.met(score, session.scorer.float_accuracy),
                 "float_accuracy_of_trained_weights": session.scorer.float_accuracy}
        if prior["met"] and not keep:
            return _learned_outcome(learned, prior, budget, session, max_float_layers)
    start = session.make(graph.close(keep))
    forced = _without_int8(start, graph)
    sens = session.tensor_errors(start, tensor_samples) if not isinstance(start, FailedCandidate) else {}
    sr = search(session, budget, cap=cap, keep=keep, never=never, forced=list(forced), latency=session.latency_ms,
                progress=progress, noise=added_noise(sens, graph))
    _attach_effects(sens, sr.effects, graph, "int8_alone")
    rows = ranked_rows(sens, graph, sr.region)
    section = _section(sr, budget, session, rows)
    section["forced_float"] = [{"name": describe(graph.by_tensor[t]), "op": graph.by_tensor[t].op, "tensor": t,
                                "reason": why} for t, why in forced.items()]
    md = to_markdown(rows, f"Per-layer INT8 sensitivity: {title}", [f"Budget: {budget.describe()}."])
    png = plot_png(rows, f"{title}: per-layer INT8 sensitivity")
    files: dict[str, bytes | str] = {"sensitivity.md": md, "sensitivity.png": png,
                                     "sensitivity.html": to_html(md, png, f"{title}: mixed precision",
                                                                 section["steps"])}
    message = _message(sr, budget, session)
    if prior is not None:
        section["qat_learned_scales"] = prior
        message += (" The QAT module's learned scales alone scored "
                    f"{format_score(Score(**prior['score']), session.scorer.float_accuracy, budget.metric)}; the "
                    "search kept its trained weights and calibrated the int8 layers' scales.")
    if isinstance(sr.artifact, FailedCandidate) or sr.score.error is not None:
        raise ConversionError(f"mixed precision found no candidate the quantizer and LiteRT accept: {sr.score.error}")
    return MixedOutcome(sr.artifact, graph.recipe(sr.region, float_io=float_io), section, files, sr.met, message,
                        verify_region(sr.artifact, graph, sr.region))


@contextlib.contextmanager
def executor_for(options: Any) -> Iterator[Executor]:
    """The executor given, or the one MixedOptions ask for (local when None); closed (a Ray it started shut down) at
    the end."""
    ex = options if isinstance(options, Executor) else make_executor(
        getattr(options, "executor", None), getattr(options, "ray_address", None), getattr(options, "num_workers", None))
    try:
        yield ex
    finally:
        ex.close()


def _learned_outcome(learned: tuple[bytes, Any], prior: dict[str, Any], budget: Budget, session: MixedSession,
                     max_float_layers: int | float) -> MixedOutcome:
    """The QAT artifact met the budget with every layer int8: nothing to search."""
    score = Score(**prior["score"])
    fa = session.scorer.float_accuracy
    section = {"budget": budget.to_dict() | {"description": budget.describe()}, "met": True,
               "max_float_layers": resolve_cap(max_float_layers, len(session.graph.layers)),
               "num_ranked_layers": len(session.graph.ranked), "float_layers": [], "float_ops": [], "boundaries": 0,
               "score": prior["score"], "metric": session.scorer.judge.name or None, "float_accuracy": fa,
               "steps": [], "would_take": None, "quantize_runs": 0, "scored_artifacts": session.scorer.runs,
               "scores_from_cache": 0, **_reused(session), "layers": [], "qat_learned_scales": prior}
    message = (f"mixed precision met the budget ({budget.describe()}) with the QAT module's learned scales alone, "
               f"no layer in float: {format_score(score, fa, budget.metric)}.")
    return MixedOutcome(learned[0], learned[1] or [], section, {}, True, message, [])


def analyze_layers(session: MixedSession, tensor_samples: int, progress: bool | None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows of the sensitivity table for the full-INT8 model, and a summary."""
    graph = session.graph
    int8 = session.make(frozenset())
    budget = Budget(max_accuracy_drop=0.0, metric=session.scorer.judge.name) if session.scorer.labelled \
        else Budget(min_sqnr_db=0.0)
    sens = session.tensor_errors(int8, tensor_samples)
    # the full-INT8 score and each head layer's 'float alone' score go with the head's batch (the executor's
    # workers see one batch, not three waits); float_alone_effects then finds them in the session
    all_float, damage, rough = ranked_int8_alone(
        session, budget, graph.ranked, HEAD, progress, added_noise(sens, graph),
        also=lambda head: [frozenset(), *(graph.close({lay.tensor}) for lay in head)])
    base = session.score_regions([frozenset()])[0]
    head = [lay for lay in graph.ranked if lay.tensor in damage]
    gain = float_alone_effects(session, budget, base, head, progress=progress)
    _attach_effects(sens, damage, graph, "int8_alone")
    _attach_effects(sens, gain, graph, "float_alone")
    for t, (score, delta) in rough.items():  # first pass only: on the first samples, not ranked against the head
        s = sens.setdefault(t, LayerSensitivity(graph.by_tensor[t]))
        s.first_pass = score
    summary = {"metric": session.scorer.judge.name or None, "float_accuracy": session.scorer.float_accuracy, "int8": base.to_dict(), "all_float_ops": all_float.to_dict(),
               "num_layers": len(graph.layers),
               "num_ranked_layers": len(graph.ranked), "validation_samples": len(next(iter(session.inputs.values()))),
               "tensor_samples": min(tensor_samples, len(next(iter(session.inputs.values())))),
               "measured_on_all_samples": len(damage),
               "first_pass": {"samples": session.subset_size(RANK_SUBSET), "layers": len(rough)} if rough else None,
               "not_scored": len(graph.ranked) - len(damage) - len(rough),  # little added noise: no candidate built
               "executor": session.executor.name, "executor_seconds": round(session.executor.seconds, 2),
               "calibration_shards": session.executor.calibration_shards,
               "quantize_runs": session.quantize_runs, "scored_artifacts": session.scorer.runs,
               "scores_from_cache": _cache_hits(session), **_reused(session)}
    return ranked_rows(sens, graph), summary


def write_files(out_dir: Path, base: str, files: dict[str, bytes | str]) -> dict[str, Path]:
    paths = {}
    for suffix, content in files.items():
        p = out_dir / f"{base}.{suffix}"
        write_atomic(p, content)
        paths[suffix.replace(".", "_")] = p
    return paths


def sensitivity_json(rows: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    return json.dumps({"schema_version": 1, "summary": summary, "layers": rows}, indent=2, default=_jsonable)


def _jsonable(v: Any) -> Any:
    return str(v)


def _attach_effects(sens: dict[str, LayerSensitivity], effects: dict[str, Any], graph: Any, kind: str) -> None:
    for t, (score, delta) in effects.items():
        s = sens.setdefault(t, LayerSensitivity(graph.by_tensor[t]))
        if kind == "int8_alone":
            s.int8_alone, s.damage = score, delta
        else:
            s.float_alone, s.gain = score, delta


def _section(sr: SearchResult, budget: Budget, session: MixedSession, rows: list[dict[str, Any]]) -> dict[str, Any]:
    g = session.graph
    return {
        "budget": budget.to_dict() | {"description": budget.describe()},
        "met": sr.met,
        "max_float_layers": sr.cap,
        "num_ranked_layers": len(g.ranked),
        "float_layers": [describe(g.by_tensor[t]) for t in sorted(sr.region, key=lambda t: g.by_tensor[t].index)
                         if g.by_tensor[t].ranked],
        "float_ops": [g.by_tensor[t].to_dict() for t in sorted(sr.region, key=lambda t: g.by_tensor[t].index)],
        "boundaries": g.boundaries(sr.region),
        "score": sr.score.to_dict(),
        "metric": session.scorer.judge.name or None,
        "float_accuracy": session.scorer.float_accuracy,
        "steps": [s.to_dict() for s in sr.steps],
        "would_take": sr.would_take,
        "quantize_runs": session.quantize_runs,
        "scored_artifacts": session.scorer.runs,
        "scores_from_cache": _cache_hits(session),
        **_reused(session),
        "layers": rows,
    }


def _cache_hits(session: MixedSession) -> int:
    """Candidates whose score came from an earlier run on the same model and data (edgemp.mixed.cache)."""
    return session.cache_hits()


def _reused(session: MixedSession) -> dict[str, bool]:
    """The float reference outputs and the tensor errors, taken from an earlier run on the same model file and data
    (edgemp._diskcache) instead of run again."""
    return {"reference_from_cache": session.reused["float_reference"],
            "tensor_errors_from_cache": session.reused["tensor_errors"]}


def _message(sr: SearchResult, budget: Budget, session: MixedSession) -> str:
    names = ", ".join(_names_short(sr, session)) or "none"
    head = (f"mixed precision {'met' if sr.met else 'could not meet'} the budget ({budget.describe()}) "
            f"with {sum(1 for t in sr.region if session.graph.by_tensor[t].ranked)} of {len(session.graph.ranked)} "
            f"layers in float (max {sr.cap}): {names}; {format_score(sr.score, session.scorer.float_accuracy, budget.metric)}")
    return head + (f". {sr.would_take[0].upper()}{sr.would_take[1:]}." if sr.would_take else ".")


def _names_short(sr: SearchResult, session: MixedSession) -> list[str]:
    g = session.graph
    return [g.by_tensor[t].name for t in sorted(sr.region, key=lambda t: g.by_tensor[t].index) if g.by_tensor[t].ranked]


def _without_int8(artifact: bytes, graph: LayerGraph) -> dict[str, str]:
    """Ops that compute in float in the full-int8 candidate (no int8 support): tensor -> why."""
    if isinstance(artifact, FailedCandidate):
        return {}
    return {o.outputs[0].name: why_float(o.op) for o in census(artifact).ops
            if o.compute in ("float32", "float16") and o.outputs and o.outputs[0].name in graph.by_tensor}


def metric_name(gate: GateOptions, vdata: ValidationData) -> str:
    """What an accuracy budget is a drop of, known before anything runs."""
    if gate.metric is not None:
        return getattr(gate.metric, "__name__", "metric")
    labels = vdata.labels
    return "mIoU" if labels is not None and getattr(labels, "ndim", 1) > 1 else "top-1"
