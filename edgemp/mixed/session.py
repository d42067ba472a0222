"""What analysis and the mixed search share: one float model, one calibration, one scorer, cached recipes."""

from __future__ import annotations

import hashlib
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from edgemp.targets.tflite.census import census
from collections.abc import Callable, Sequence

from edgemp import _diskcache
from edgemp.config import GateOptions, RuntimeOptions
from edgemp.errors import ConversionError
from edgemp.mixed import sensitivity
from edgemp.mixed.cache import ScoreCache, data_key
from edgemp.mixed.graph import LayerGraph
from edgemp.mixed.executor import Executor
from edgemp.mixed.scoring import FailedCandidate, Score, Scorer
from edgemp.quantize import Statistics, apply_recipe
from edgemp.validation.data import ValidationData
from edgemp.validation.evaluate import batched
from edgemp.validation.judge import TaskJudge
from edgemp.validation.runtime import Runner
from edgemp.validation.tasks import infer_tasks

REFERENCE_BATCH = 64  # samples per source.predict call for the float reference (part of its cache key)


def float_reference(source: Any, vdata: ValidationData, progress: bool | None) -> tuple[list[np.ndarray], bool]:
    """(the float model's outputs on the validation inputs, taken from the disk cache?)."""
    return _diskcache.reference(
        source, vdata.inputs, REFERENCE_BATCH,
        lambda: batched(source.predict, vdata.inputs, REFERENCE_BATCH, progress=progress,
                        label="Running float reference"))


def reference_ahead(source: Any, vdata: ValidationData, threads: int) -> Future[Any] | None:
    """The float reference, started on a thread now, for a session made later: the float conversion before it
    keeps one core busy (the TFLite converter's export is single-threaded) and the reference uses the other.
    Only with more than one thread, and for sources whose model can run while it is being converted (TensorFlow's:
    a traced function runs while the converter traces its own; torch.export is not made for that)."""
    if threads < 2 or not getattr(source, "predicts_during_conversion", False):
        return None
    pool = ThreadPoolExecutor(1, thread_name_prefix="edgemp-reference")
    try:
        return pool.submit(float_reference, source, vdata, False)  # no progress bar beside the converter's work
    finally:
        pool.shutdown(wait=False)


class MixedSession:
    """`make(region)` quantizes the float model with `region` kept in float, from statistics gathered once."""

    def __init__(self, source: Any, float_tflite: bytes, statistics: Statistics | Callable[[], Statistics],
                 vdata: ValidationData,
                 opts: RuntimeOptions, float_io: bool = False, progress: bool | None = None,
                 graph: LayerGraph | None = None, gate: GateOptions | None = None,
                 class_names: Sequence[str] | None = None, executor: Executor | None = None,
                 reference: Future[Any] | None = None) -> None:
        self.source, self.float_tflite = source, float_tflite
        self.executor = executor or Executor()
        self._statistics = statistics  # or a callable: calibration runs only when a candidate is first built
        self.float_io = float_io
        self.graph = graph or LayerGraph(census(float_tflite), source.layers(), aliases=source.scope_aliases())
        self.inputs = {k: v for k, v in source.artifact_inputs(vdata.inputs).items()}
        # what came from <EDGEMP_CACHE> (edgemp._diskcache) instead of running again: a second run on the same model
        # file and data (analyze, then convert -p mixed) neither runs the float model nor the preserved-tensor pass
        self.reused: dict[str, bool] = {"float_reference": False, "tensor_errors": False}
        reference, self.reused["float_reference"] = (reference.result() if reference is not None
                                                     else float_reference(source, vdata, progress))
        names = [d.name for d in Runner(float_tflite, RuntimeOptions(latency_runs=0), source.output_names()).outputs]
        gate = gate or GateOptions()
        tasks = infer_tasks(names, [r.shape for r in reference], source.output_channels_first(), gate.output_tasks)
        judge = TaskJudge(tasks, vdata.labels, gate, class_names)
        self.scorer = Scorer(self.inputs, reference, judge, _search_opts(opts))
        key = None if gate.metric is not None or not ScoreCache.enabled() else data_key(
            [self.inputs, list(reference), vdata.labels, [[t.name, t.task.value, t.class_axis, t.num_classes]
                                                          for t in tasks],
             list(class_names) if class_names is not None else None, gate.label_output, opts.num_threads,
             opts.xnnpack])
        self.scorer.cache = ScoreCache(key) if key is not None else None
        self._data_key = key
        self.opts = opts
        self._cache: dict[frozenset[str], bytes] = {}
        self._scores: dict[tuple[frozenset[str], int | None], Score] = {}
        self._subsets: dict[int, Scorer] = {}
        self._model_key: str | None = None
        self._keys: dict[frozenset[str], str | None] = {}  # region -> its recipe key (asked per try several times)
        self.quantize_runs = 0
        self.progress = progress

    def subset_size(self, n: int) -> int | None:
        """How many samples a ranking pass scores: n when the validation set has more than 2n (else all of them,
        None), and never with a user metric (opaque code over all the data)."""
        total = len(next(iter(self.inputs.values())))
        return n if total > 2 * n and self.scorer.judge.kind != "metric" else None

    def score_regions(self, regions: Sequence[frozenset[str]], subset: int | None = None, label: str = "Scoring",
                      progress: bool | None = None) -> list[Score]:
        """Scores of many candidates, each built and scored once (here or on the executor's workers); the
        scores are also kept on disk keyed by the recipe (edgemp.mixed.cache), so a later run on the same model,
        statistics and data builds nothing it has scored before. `subset`: on the first `subset` samples only."""
        scorer = self.scorer if subset is None else self._subset_scorer(subset)
        found: dict[int, Score] = {}
        todo: list[int] = []
        keys = [self._recipe_key(r) for r in regions]
        seen = 0  # scored earlier in this session (a batch that also held them): not counted again
        for i, r in enumerate(regions):
            known = self._scores.get((frozenset(r), subset))
            seen += known is not None
            cached = scorer.cache.get(keys[i]) if known is None and scorer.cache is not None and keys[i] else None
            if known is not None or cached is not None:
                found[i] = known or Score(**cached)  # type: ignore[arg-type]
            else:
                todo.append(i)
        recipes = [self.graph.recipe(frozenset(regions[i]), float_io=self.float_io) for i in todo]
        fresh = self.executor.score(recipes, self.float_tflite, self.statistics, scorer,
                                    self.progress if progress is None else progress, label) if todo else []
        self.quantize_runs += len(todo)
        scorer.runs += len(regions) - seen
        for i, sc in zip(todo, fresh, strict=True):
            found[i] = sc
            if scorer.cache is not None and keys[i]:
                scorer.cache.put(keys[i], sc.to_dict())
        if scorer.cache is not None:
            scorer.cache.flush()
        for i, r in enumerate(regions):
            self._scores[(frozenset(r), subset)] = found[i]
        return [found[i] for i in range(len(regions))]

    def score(self, region: frozenset[str], artifact: bytes) -> Score:
        """The score of `region`, built here as `artifact` (the search's steps): from this session's batches or the
        disk cache by recipe (what analysis and score_regions keep), else run here and kept under its recipe too."""
        region = frozenset(region)
        known = self._scores.get((region, None))
        if known is not None:
            return known
        key = self._recipe_key(region)
        cache = self.scorer.cache if key else None
        cached = cache.get(key) if cache is not None else None
        if cached is not None:
            self.scorer.runs += 1
            known = Score(**cached)
        else:
            known = self.scorer(artifact)
            if cache is not None and not isinstance(artifact, FailedCandidate):
                cache.put(key, known.to_dict())
                cache.flush()
        self._scores[(region, None)] = known
        return known

    def known(self, region: frozenset[str]) -> bool:
        """`region`'s score on every sample is at hand (this session's batches, or the disk cache by recipe): asking
        for it builds and runs nothing."""
        region = frozenset(region)
        if (region, None) in self._scores:
            return True
        key = self._recipe_key(region)
        return bool(key) and self.scorer.cache is not None and key in self.scorer.cache

    def cache_hits(self) -> int:
        """Scores taken from the disk cache (all samples and first-pass subsets)."""
        return sum(s.cache.hits for s in (self.scorer, *self._subsets.values()) if s.cache is not None)

    def _subset_scorer(self, n: int) -> Scorer:
        if n not in self._subsets:
            sub = self.scorer.subset(n)
            sub.cache = ScoreCache(data_key([self._data_key, "subset", n])) if self._data_key is not None else None
            self._subsets[n] = sub
        return self._subsets[n]

    def _recipe_key(self, region: frozenset[str]) -> str | None:
        """What a candidate is made of: the float model, the statistics and the recipe (None: not keyed)."""
        region = frozenset(region)
        if region not in self._keys:
            self._keys[region] = self._new_recipe_key(region)
        return self._keys[region]

    def _new_recipe_key(self, region: frozenset[str]) -> str | None:
        if self._data_key is None:
            return None
        if self._model_key is None:
            self._model_key = data_key([hashlib.sha256(self.float_tflite).hexdigest(), self.statistics]) or ""
        if not self._model_key:
            return None
        return "recipe:" + (data_key([self._model_key, self.graph.recipe(region, float_io=self.float_io)]) or "")

    @property
    def statistics(self) -> Statistics:
        if callable(self._statistics):
            self._statistics = self._statistics()
        return self._statistics

    def make(self, region: frozenset[str]) -> bytes:
        region = frozenset(region)
        if region not in self._cache:
            self.quantize_runs += 1
            try:
                self._cache[region] = apply_recipe(self.float_tflite, self.graph.recipe(region, float_io=self.float_io),
                                                   self.statistics)
            except ConversionError as exc:  # one candidate the quantizer refuses is infeasible, not the end
                self._cache[region] = FailedCandidate.of(f"the quantizer refused it: {exc}")
        return self._cache[region]

    def latency_ms(self, artifact: bytes, runs: int = 30) -> float:
        first = {k: v[:1] for k, v in self.inputs.items()}
        opts = RuntimeOptions(num_threads=self.opts.num_threads, xnnpack=self.opts.xnnpack, latency_runs=runs,
                              warmup_runs=5)
        return float(Runner(artifact, opts).latency(first)["median_ms"])

    def tensor_errors(self, artifact: bytes, n: int) -> dict[str, sensitivity.LayerSensitivity]:
        """Per-tensor errors of `artifact` against the float model on the first n samples (sensitivity.tensor_errors),
        taken from the disk cache when an earlier run compared the same two models on the same samples."""
        samples = self.samples(n)
        errors, self.reused["tensor_errors"] = _diskcache.tensor_errors(
            self.float_tflite, artifact, samples, self.graph,
            lambda: sensitivity.tensor_errors(self.float_tflite, artifact, samples, self.graph,
                                              run_shards=self.executor.tensor_sums))
        return errors

    def samples(self, n: int) -> list[dict[str, np.ndarray]]:
        """The first n validation samples as batch-1 dicts (artifact layout) for tensor-level comparison."""
        count = len(next(iter(self.inputs.values())))
        return [{k: v[i : i + 1] for k, v in self.inputs.items()} for i in range(min(n, count))]


def _search_opts(opts: RuntimeOptions) -> RuntimeOptions:
    # The search scores dozens of candidates on the host: XNNPACK and the threads as asked, no delegates
    # (an external delegate is validated once on the final artifact).
    return RuntimeOptions(num_threads=opts.num_threads, xnnpack=opts.xnnpack, latency_runs=0)

