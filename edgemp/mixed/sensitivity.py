"""Per-layer sensitivity of a model to INT8: the error at each op's output, and each layer's effect alone.

Tensor error: the float and the int8 model run side by side on the same samples with every intermediate
tensor preserved (reference kernels: XNNPACK would fuse them away); tensors are matched by name, which the
quantizer keeps, so the comparison is layer to layer whatever Q/DQ ops were inserted.
Effect alone, both ways, from the statistics gathered once: the damage of quantizing just that layer (the rest in
float; this also sees a tensor that cannot be int8 whichever side of it is kept in float) and the gain of keeping
just that layer in float (the rest in int8).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from edgemp.mixed.graph import Layer, LayerGraph
from edgemp.mixed.scoring import Budget, Score


@dataclasses.dataclass
class LayerSensitivity:
    layer: Layer
    rmse: float | None = None
    rmse_over_scale: float | None = None  # ~0.29 (1/sqrt(12)) is pure rounding noise; much more means clipping/bad range
    sqnr_db: float | None = None
    cosine: float | None = None
    scale: float | None = None
    int8_alone: Score | None = None  # the float model with only this layer quantized
    damage: tuple[float, float] | None = None  # objective(all float) - objective(int8_alone): what its int8 costs
    float_alone: Score | None = None  # the int8 model with only this layer in float
    gain: tuple[float, float] | None = None  # objective(float_alone) - objective(full int8)
    first_pass: Score | None = None  # int8 alone on the first samples only (a layer outside the measured head)

    def to_dict(self) -> dict[str, Any]:
        d = self.layer.to_dict() | {"rmse": self.rmse, "rmse_over_scale": self.rmse_over_scale,
                                    "sqnr_db": self.sqnr_db, "cosine": self.cosine, "scale": self.scale}
        d["int8_alone"] = self.int8_alone.to_dict() if self.int8_alone else None
        d["damage"] = list(self.damage) if self.damage else None
        d["float_alone"] = self.float_alone.to_dict() if self.float_alone else None
        d["gain"] = list(self.gain) if self.gain else None
        d["first_pass"] = self.first_pass.to_dict() if self.first_pass else None
        return d


TENSOR_SHARD = 16  # samples per pass: fixed, so the sums (and the ranking they give) are the same on any thread count


def tensor_errors(float_tflite: bytes, quant_tflite: bytes, samples: Sequence[dict[str, np.ndarray]],
                  graph: LayerGraph, threads: int = 1,
                  run_shards: SumShards | None = None) -> dict[str, LayerSensitivity]:
    """Error of every op's output in the quantized model against the float model's tensor of the same name.

    The samples go in fixed shards of TENSOR_SHARD, each on its own pair of interpreters, summed in shard order:
    with `threads` > 1 the shards run side by side (invoke and the array arithmetic release the GIL; one pass on
    EfficientNetB0 is seconds of reference kernels), or wherever `run_shards` runs them (an executor's workers), and
    the result is bit for bit the one-thread result."""
    shards = [list(samples[i : i + TENSOR_SHARD]) for i in range(0, len(samples), TENSOR_SHARD)]
    tensors = [lay.tensor for lay in graph.layers]
    run = run_shards or (lambda f, q, sh, ts: shard_sums(f, q, sh, ts, threads))
    parts = run(float_tflite, quant_tflite, shards, tensors)
    if not parts:
        return {}
    sums, scales = parts[0][0], parts[0][1]
    for more, _ in parts[1:]:
        for t, v in more.items():
            sums[t] = sums[t] + v if t in sums else v
    res = {}
    for t, (noise, signal, dot, pout, n_el) in sums.items():
        if not n_el:
            continue
        scale = scales[t] or None
        rmse = float(np.sqrt(noise / n_el))
        res[t] = LayerSensitivity(
            graph.by_tensor[t], rmse=rmse, rmse_over_scale=rmse / scale if scale else None,
            sqnr_db=float(10 * np.log10(signal / noise)) if noise > 0 and signal > 0 else float("inf"),
            cosine=float(dot / np.sqrt(signal * pout)) if signal > 0 and pout > 0 else (1.0 if noise == 0 else 0.0),
            scale=scale)
    return res


Sums = tuple[dict[str, np.ndarray], dict[str, float]]
# (float model, quantized model, shards of samples, tensor names) -> each shard's sums, in shard order
SumShards = Callable[[bytes, bytes, list[list[dict[str, np.ndarray]]], list[str]], list[Sums]]


def shard_sums(float_tflite: bytes, quant_tflite: bytes, shards: Sequence[Sequence[dict[str, np.ndarray]]],
               tensors: Sequence[str], threads: int = 1) -> list[Sums]:
    """Each shard's sums (tensor_sums), on up to `threads` threads of this process."""
    from concurrent.futures import ThreadPoolExecutor

    if threads > 1 and len(shards) > 1:
        with ThreadPoolExecutor(min(threads, len(shards)), thread_name_prefix="edgemp-tensors") as pool:
            return list(pool.map(lambda part: tensor_sums(part, float_tflite, quant_tflite, tensors), shards))
    return [tensor_sums(part, float_tflite, quant_tflite, tensors) for part in shards]


def tensor_sums(samples: Sequence[dict[str, np.ndarray]], float_tflite: bytes, quant_tflite: bytes,
                tensors: Sequence[str]) -> Sums:
    """Per tensor [noise, signal, dot, output power, elements] over `samples`, and each tensor's int8 scale (the
    samples first: one Ray task per shard, the models shared)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    def interp(model: bytes) -> tuple[Any, dict[str, dict[str, Any]], Any]:
        itp = Interpreter(model_content=model, experimental_preserve_all_tensors=True,
                          experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        itp.allocate_tensors()
        return itp, {d["name"]: d for d in itp.get_tensor_details()}, itp.get_signature_runner()

    fi, fdet, frun = interp(float_tflite)
    qi, qdet, qrun = interp(quant_tflite)
    qin = {k: v for k, v in qrun.get_input_details().items()}
    acc = {t: np.zeros(5) for t in tensors if t in fdet and t in qdet}
    for s in samples:
        frun(**{k: np.asarray(v, np.float32) for k, v in s.items()})
        feed = {}
        for k, v in s.items():
            d = qin[k]
            scale, zp = d["quantization"] if d["quantization"] != (0.0, 0) else (0.0, 0)
            if np.issubdtype(d["dtype"], np.integer) and scale:
                info = np.iinfo(d["dtype"])
                v = np.clip(np.round(np.asarray(v, np.float64) / scale + zp), info.min, info.max).astype(d["dtype"])
            feed[k] = v
        qrun(**feed)
        for t, a in acc.items():
            ref = fi.get_tensor(fdet[t]["index"]).astype(np.float64).ravel()
            q = qi.get_tensor(qdet[t]["index"])
            scale, zp = qdet[t]["quantization"]
            out = ((q.astype(np.float64) - zp) * scale if scale else q.astype(np.float64)).ravel()
            if out.shape != ref.shape:
                continue
            err = out - ref
            # einsum, not `@`: BLAS splits each dot over threads that cost more to wake than the dot (EfficientNetB0:
            # 19 CPU-s for 10.8 s of wall with OpenBLAS' threads, 8.6 s on one core without them)
            a += (_dot(err, err), _dot(ref, ref), _dot(ref, out), _dot(out, out), err.size)
    return acc, {t: float(qdet[t]["quantization"][0]) for t in acc}


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.einsum("i,i->", a, b))


def float_alone_effects(session: Any, budget: Budget, base: Score, candidates: Sequence[Layer],
                        base_region: frozenset[str] = frozenset(), progress: bool | None = None,
                        subset: int | None = None) -> dict[str, tuple[Score, tuple[float, float]]]:
    """Score with each candidate layer (closed over same-scale ops) added to `base_region` in float."""
    graph = session.graph
    b = budget.objective(base)
    scores = session.score_regions([graph.close(base_region | {lay.tensor}) for lay in candidates], subset,
                                   "Per-layer effect", progress)
    out = {}
    for lay, s in zip(candidates, scores, strict=True):
        o = budget.objective(s)
        out[lay.tensor] = (s, (o[0] - b[0], o[1] - b[1]))
    return out


def int8_alone_effects(session: Any, budget: Budget, candidates: Sequence[Layer], progress: bool | None = None,
                       subset: int | None = None, also: Sequence[frozenset[str]] = (),
                       ) -> tuple[Score, dict[str, tuple[Score, tuple[float, float]]]]:
    """Score with only each candidate quantized (everything else float): (all-float score, per-layer damage).
    `also`: more regions scored in the same batch (the session keeps their scores for the caller)."""
    everything = frozenset(lay.tensor for lay in session.graph.layers)
    regions = [everything] + [everything - {lay.tensor} for lay in candidates]
    scores = session.score_regions(regions + list(also), subset, "Per-layer damage", progress)[: len(regions)]
    ref = scores[0]
    r = budget.objective(ref)
    out = {}
    for lay, s in zip(candidates, scores[1:], strict=True):
        o = budget.objective(s)
        out[lay.tensor] = (s, (r[0] - o[0], r[1] - o[1]))
    return ref, out


HEAD = 12  # layers whose damage alone is measured on every sample (analysis; the mixed search at most as many, so
# that after analyze it finds all of them in the score cache)
RANK_SUBSET = 16  # samples a first ranking pass scores every layer on (when the validation set has > 2x as many)
FIRST_PASS = 24  # layers the first pass scores at least (or a sixth of them), picked by the noise they add


def added_noise(sens: dict[str, LayerSensitivity], graph: LayerGraph) -> dict[str, float]:
    """What one run of the full-INT8 model with preserved tensors says of each layer: the SQNR it loses from its
    inputs to its output (dB; the noise this layer adds, not what it inherits: a clipped range adds much), +inf for
    a layer fed by the model's input or without a tensor to compare. Higher: more worth scoring end to end.
    Not RMSE/scale: deep in a network the noise inherited from upstream is several quantization steps of a tensor
    that adds little (EfficientNetB0: 34 squeeze-excite layers above 1, and none of them damaging)."""
    out = {}
    for lay in graph.ranked:
        s = sens.get(lay.tensor)
        if s is None or s.sqnr_db is None:
            out[lay.tensor] = float("inf")  # no tensor to compare: cannot be ruled out
            continue
        ins = [sens[p].sqnr_db for p in graph.producers.get(lay.tensor, []) if p in sens and sens[p].sqnr_db is not None]
        lost = min(ins) - s.sqnr_db if ins else float("inf")
        out[lay.tensor] = 0.0 if math.isnan(lost) else lost  # exact in and out (inf - inf): adds nothing
    return out


def _worst_is_nan(v: float) -> float:
    """A sort key where NaN (a score that could not be computed) counts as the highest."""
    return math.inf if math.isnan(v) else v


def ranked_int8_alone(session: Any, budget: Budget, candidates: Sequence[Layer], top: int,
                      progress: bool | None = None, noise: dict[str, float] | None = None,
                      also: Callable[[Sequence[Layer]], Sequence[frozenset[str]]] | None = None,
                      ) -> tuple[Score, dict[str, tuple[Score, tuple[float, float]]],
                                 dict[str, tuple[Score, tuple[float, float]]]]:
    """The damage of each layer alone, at the cost of a few. With `noise` (added_noise), only the layers adding the
    most (FIRST_PASS, or a sixth) go on; those are scored on the first RANK_SUBSET samples and ranked by output
    SQNR damage there (continuous, so stable on few samples); the `top` most damaging are measured on the whole
    validation set. Returns (all-float score, exact effects of the head, first-pass effects of the rest).
    `also(head)`: regions the caller scores next from the head (its 'float alone' gains), scored in the head's batch:
    one wait for the executor's workers instead of two, and no worker idle at the end of the first."""
    n = session.subset_size(RANK_SUBSET)
    more = also or (lambda head: ())
    if len(candidates) <= top:
        ref, exact = int8_alone_effects(session, budget, candidates, progress, also=more(candidates))
        return ref, exact, {}
    first = list(candidates)
    keep = max(FIRST_PASS, 2 * top, len(candidates) // 6)
    if noise is not None and len(first) > keep:
        first = sorted(first, key=lambda lay: noise.get(lay.tensor, float("inf")), reverse=True)[:keep]
    if n is None:  # too few samples for a cheaper first pass: what goes on is measured on all of them
        ref, exact = int8_alone_effects(session, budget, first, progress, also=more(first))
        return ref, exact, {}
    _, rough = int8_alone_effects(session, budget, first, progress, subset=n)
    # most damaging first: the lowest output SQNR on the subset (continuous, so stable on few samples; whatever the
    # budget, whose objective's second term is the cosine for an SQNR budget), then the budget's damage; NaN and
    # an infeasible candidate (-inf SQNR) count as the most damaging
    order = sorted(first, key=lambda lay: (_worst_is_nan(-rough[lay.tensor][0].sqnr_db),
                                           _worst_is_nan(rough[lay.tensor][1][0])), reverse=True)
    ref, exact = int8_alone_effects(session, budget, order[:top], progress, also=more(order[:top]))
    return ref, exact, {t: e for t, e in rough.items() if t not in exact}
