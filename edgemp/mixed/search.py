"""`precision="mixed"`: the fewest layers in float that bring INT8 within the budget.

Greedy, as NNCF's accuracy control: start from full INT8; rank layers by the damage of quantizing each alone;
move the most sensitive to float (alone, else with its consumers, else with its producers) and re-validate;
when that does not help, undo it and re-rank the remaining layers by their gain in float against the current
configuration. Near-ties (Budget.near) go to the layer adding the fewest float/int8
boundaries (each is a QUANTIZE/DEQUANTIZE pair's half). Every candidate re-uses the calibration statistics.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

from edgemp.targets.tflite.census import census
from edgemp.mixed.graph import Layer, LayerGraph, describe
from edgemp.mixed.scoring import Budget, Score, Scorer
from edgemp.mixed.sensitivity import HEAD, float_alone_effects, ranked_int8_alone

log = logging.getLogger(__name__)

RERANK_TOP = 8  # re-ranking re-scores at most this many candidates (the best by the previous ranking)
RANK_TOP = 8  # layers whose damage alone is measured on every validation sample: at least, 2x the cap up to HEAD


@dataclasses.dataclass
class Step:
    step: int
    action: str
    float_layers: list[str]
    float_ops: int
    boundaries: int
    score: Score
    met: bool
    accepted: bool
    bytes: int | None = None
    latency_ms: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"score": self.score.to_dict()}


@dataclasses.dataclass
class SearchResult:
    region: frozenset[str]
    artifact: bytes
    score: Score
    met: bool
    steps: list[Step]
    effects: dict[str, tuple[Score, tuple[float, float]]]
    cap: int
    would_take: str | None = None


def resolve_cap(max_float_layers: int | float, num_layers: int) -> int:
    """A count (int >= 0) or a fraction (0 < float < 1) of the model's layers (ops of the float graph)."""
    if isinstance(max_float_layers, float) and 0 < max_float_layers < 1:
        return max(1, int(max_float_layers * num_layers + 1e-9))
    return int(max_float_layers)


def search(session: Any, budget: Budget, *, cap: int, keep: Sequence[str] = (), never: Sequence[str] = (),
           forced: Sequence[str] = (), latency: Callable[[bytes], float] | None = None,
           progress: bool | None = None, noise: dict[str, float] | None = None) -> SearchResult:
    """`forced`: ops that have no int8 form (float in any quantized model): float from the start, and not counted
    against `cap`, which limits what the search chooses. `session`: a MixedSession (make, scorer, score_regions)."""
    make, graph, scorer = session.make, session.graph, session.scorer
    width = session.executor.width
    steps: list[Step] = []
    cap += sum(1 for t in forced if graph.by_tensor[t].ranked)

    def record(action: str, region: frozenset[str], art: bytes, s: Score, accepted: bool) -> None:
        if s.error is not None:
            action = f"infeasible, skipped: {action.removeprefix('no gain, undone: ')} — {s.error}"
        steps.append(Step(len(steps), action, _names(graph, region), len(region), graph.boundaries(region), s,
                          budget.met(s, scorer.float_accuracy), accepted, len(art) or None,
                          latency(art) if latency and accepted else None))

    region = graph.close([*keep, *forced])
    art = make(region)
    cur = session.score(region, art)
    first = "full int8" if not keep else f"int8 with keep_float ({len(graph.close(keep))} ops)"
    if forced:
        first += f", {len(forced)} op(s) without int8 support in float"
    record(first, region, art, cur, True)
    best = (region, art, cur)
    if budget.met(cur, scorer.float_accuracy):
        return SearchResult(region, art, cur, True, steps, {}, cap)

    blocked = set(never) | set(region)
    cands = [lay for lay in graph.ranked if lay.tensor not in blocked]
    # Rank by the damage of quantizing each layer alone: unlike "float alone", it also exposes a tensor that
    # cannot be int8 whichever of its ends is kept in float (a join of very different ranges, say).
    _, effects, rough = ranked_int8_alone(session, budget, cands, max(RANK_TOP, min(2 * cap, HEAD)), progress, noise)
    # layers only the first pass saw come after those measured on every sample, in the first pass's order; those it
    # skipped (little added noise) come last, by that noise
    priority = {t: (-2e6, min((noise or {}).get(t, 0.0), 1e6)) for t in (lay.tensor for lay in cands)}
    priority |= {t: (-1e6, d[1]) for t, (_, d) in rough.items()}
    priority |= {t: d for t, (_, d) in effects.items()}
    tried: set[str] = set()
    met = False
    while True:
        avail = [lay for lay in cands if lay.tensor not in region and lay.tensor not in tried]
        if not avail:
            break
        pick = _choose(graph, budget, region, avail, priority)
        # The layer alone, then with its consumers, then with its producers: a tensor stays float only when
        # both ends are float, so a contiguous region can help where a single layer cannot.
        tries = []
        for extra in ((), graph.consumers[pick.tensor], graph.producers[pick.tensor]):
            r = graph.close(region | {pick.tensor} | {t for t in extra if t not in never})
            if r not in tries and _ranked_count(graph, r) <= cap:
                tries.append(r)
        if not tries:
            steps.append(Step(len(steps), f"stop: {describe(pick)} would exceed max_float_layers={cap}",
                              _names(graph, region), len(region), graph.boundaries(region), cur, False, False))
            break
        accepted = False
        for k, new in enumerate(tries):
            if width > 1 and not session.known(new):
                # what this try and the next ones will most likely need, side by side: the same choices. A try
                # already scored (by an earlier look-ahead, or analysis) launches nothing: a batch of guesses alone
                # would cost a whole candidate's time when the search ends here
                session.score_regions(_ahead(graph, budget, cap, region, tries[k:], avail, priority, width),
                                      progress=False)
            a = make(new)
            s = session.score(new, a)
            added = ", ".join(describe(graph.by_tensor[t]) for t in sorted(new - region, key=_index(graph))
                              if graph.by_tensor[t].ranked)
            if budget.objective(s) > budget.objective(cur):
                record(f"keep float: {added}", new, a, s, True)
                region, cur, art, accepted = new, s, a, True
                if budget.objective(cur) > budget.objective(best[2]):
                    best = (region, art, cur)
                break
            record(f"no gain, undone: {added}", new, a, s, False)
        if accepted:
            if budget.met(cur, scorer.float_accuracy):
                met = True
                break
            continue
        tried.add(pick.tensor)
        rest = sorted((lay for lay in avail if lay.tensor != pick.tensor), key=lambda lay: priority[lay.tensor],
                      reverse=True)[:RERANK_TOP]
        fresh = float_alone_effects(session, budget, cur, rest, region, progress=False)
        priority.update({t: g for t, (_, g) in fresh.items()})
        steps.append(Step(len(steps), f"re-ranked {len(fresh)} layers by their gain in float against the current "
                          "configuration", _names(graph, region), len(region), graph.boundaries(region), cur, False, False))
    region, art, cur = (region, art, cur) if met else best
    result = SearchResult(region, art, cur, met, steps, effects, cap)
    if not met:
        result.would_take = _what_it_would_take(make, graph, scorer, budget, region, cands, priority, cap)
    return result


def _ahead(graph: LayerGraph, budget: Budget, cap: int, region: frozenset[str], tries: list[frozenset[str]],
           avail: list[Layer], priority: dict[str, tuple[float, float]], width: int) -> list[frozenset[str]]:
    """`width` regions to score at once: the try about to be scored (`tries[0]`) and, as if each step took its first
    try (the usual case: a layer ranked damaging helps in float), the first tries of the steps after it; then this
    step's other tries. The search still takes them one by one and decides as it would have; a guess it does not
    reach only cost an idle worker's time."""
    plan, r = [tries[0]], tries[0]
    rest = [lay for lay in avail if lay.tensor not in r]
    while len(plan) < width and rest:
        nxt = graph.close(r | {_choose(graph, budget, r, rest, priority).tensor})
        if _ranked_count(graph, nxt) > cap:
            break
        plan.append(nxt)
        r, rest = nxt, [lay for lay in rest if lay.tensor not in nxt]
    return (plan + tries[1:])[:width]


def _choose(graph: LayerGraph, budget: Budget, region: frozenset[str], avail: list[Layer],
            gains: dict[str, tuple[float, float]]) -> Layer:
    """The largest gain; among near-equal gains the one adding the fewest boundaries (contiguous regions)."""
    ranked = {lay.tensor: rankable(gains[lay.tensor]) for lay in avail}
    top = max(ranked.values())
    # equal -inf gains (every candidate NaN or unscorable) are not "near" by arithmetic: then any of them will do
    near = [lay for lay in avail if ranked[lay.tensor] == top or budget.near(ranked[lay.tensor], top)]
    return min(near, key=lambda lay: (graph.boundaries(graph.close(region | {lay.tensor})),
                                      tuple(-g for g in ranked[lay.tensor]), lay.index))


def rankable(gain: tuple[float, float]) -> tuple[float, ...]:
    """A gain that orders: NaN (a candidate whose score could not be computed) ranks below every number, where
    comparisons with NaN would make max() and sorted() depend on the order the candidates come in."""
    return tuple(-math.inf if math.isnan(g) else g for g in gain)


def _what_it_would_take(make: Callable[[frozenset[str]], bytes], graph: LayerGraph, scorer: Scorer, budget: Budget,
                        region: frozenset[str], cands: list[Layer], gains: dict[str, tuple[float, float]],
                        cap: int, limit: int = 40) -> str:
    """Continue past the cap in ranking order (bounded) to tell the user what meeting the budget would need."""
    order = sorted((lay for lay in cands if lay.tensor not in region), key=lambda lay: rankable(gains[lay.tensor]),
                   reverse=True)
    r = region
    for lay in order[:limit]:
        r = graph.close(r | {lay.tensor})
        s = scorer(make(r))
        if budget.met(s, scorer.float_accuracy):
            return (f"the budget is met with {_ranked_count(graph, r)} layers in float (max_float_layers={cap}): "
                    f"raise max_float_layers to {_ranked_count(graph, r)}")
    s_all = scorer(make(graph.close({lay.tensor for lay in graph.ranked})))
    if budget.met(s_all, scorer.float_accuracy):
        return (f"more than {_ranked_count(graph, r)} layers in float would be needed; relax the budget or "
                "retrain/quantization-aware-train the sensitive layers")
    what = (f"even with every quantizable layer in float the score is "
            f"{format_score(s_all, scorer.float_accuracy, scorer.judge.name or 'top-1')}")
    if not graph.float_io:
        return (what + ": what is left quantized is the model's int8 inputs/outputs, so the loss is in the I/O "
                "quantization (e.g. one output holding values of very different ranges). Ask for io_dtype='float' "
                "(float32 I/O; the graph stays int8 inside), or split such an output in the model")
    return what + "; relax the budget or retrain/quantization-aware-train the sensitive layers"


def format_score(s: Score, float_accuracy: float | None, metric: str = "top-1") -> str:
    if s.error is not None:
        return f"infeasible ({s.error})"
    if s.accuracy is not None and float_accuracy is not None:
        drop = float_accuracy - s.accuracy
        drop_text = f"{100 * drop:.2f} points" if metric in ("top-1", "mIoU") else f"{drop:.4g}"
        return f"{metric} {s.accuracy:.4f} (drop {drop_text}), SQNR {s.sqnr_db:.1f} dB"
    return f"SQNR {s.sqnr_db:.1f} dB, cosine {s.cosine:.5f}"


def _index(graph: LayerGraph) -> Callable[[str], int]:
    return lambda t: graph.by_tensor[t].index


def _ranked_count(graph: LayerGraph, region: frozenset[str]) -> int:
    return sum(1 for t in region if graph.by_tensor[t].ranked)


def _names(graph: LayerGraph, region: frozenset[str]) -> list[str]:
    return [describe(graph.by_tensor[t]) for t in sorted(region, key=lambda t: graph.by_tensor[t].index)
            if graph.by_tensor[t].ranked]


def verify_region(artifact: bytes, graph: LayerGraph, region: frozenset[str]) -> list[str]:
    """Honest label for a mixed artifact: exactly the chosen ops compute in float, every other op in int8."""
    problems = []
    for o in census(artifact).ops:
        if o.op in ("QUANTIZE", "DEQUANTIZE") or not o.outputs:
            continue
        t = o.outputs[0].name
        if t not in graph.by_tensor:
            continue
        is_float = o.compute in ("float32", "float16")
        if is_float != (t in region):
            problems.append(f"{describe(graph.by_tensor[t])} ({o.op}) computes in {o.compute}, expected "
                            f"{'float' if t in region else 'int8'}")
    return problems
