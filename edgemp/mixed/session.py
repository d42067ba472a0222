"""What analysis and the mixed search share: one float model, one calibration, one scorer, cached recipes."""

from __future__ import annotations

from typing import Any

import numpy as np

from edgemp.targets.tflite.census import census
from collections.abc import Sequence

from edgemp.config import GateOptions, RuntimeOptions
from edgemp.errors import ConversionError
from edgemp.mixed.cache import ScoreCache, data_key
from edgemp.mixed.graph import LayerGraph
from edgemp.mixed.scoring import FailedCandidate, Scorer
from edgemp.quantize import Statistics, apply_recipe
from edgemp.validation.data import ValidationData
from edgemp.validation.evaluate import batched
from edgemp.validation.judge import TaskJudge
from edgemp.validation.runtime import Runner
from edgemp.validation.tasks import infer_tasks


class MixedSession:
    """`make(region)` quantizes the float model with `region` kept in float, from statistics gathered once."""

    def __init__(self, source: Any, float_tflite: bytes, statistics: Statistics, vdata: ValidationData,
                 opts: RuntimeOptions, float_io: bool = False, progress: bool | None = None,
                 graph: LayerGraph | None = None, gate: GateOptions | None = None,
                 class_names: Sequence[str] | None = None) -> None:
        self.source, self.float_tflite, self.statistics = source, float_tflite, statistics
        self.float_io = float_io
        self.graph = graph or LayerGraph(census(float_tflite), source.layers(), aliases=source.scope_aliases())
        self.inputs = {k: v for k, v in source.artifact_inputs(vdata.inputs).items()}
        reference = batched(source.predict, vdata.inputs, progress=progress, label="Running float reference")
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
        self.opts = opts
        self._cache: dict[frozenset[str], bytes] = {}
        self.quantize_runs = 0

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

    def samples(self, n: int) -> list[dict[str, np.ndarray]]:
        """The first n validation samples as batch-1 dicts (artifact layout) for tensor-level comparison."""
        count = len(next(iter(self.inputs.values())))
        return [{k: v[i : i + 1] for k, v in self.inputs.items()} for i in range(min(n, count))]


def _search_opts(opts: RuntimeOptions) -> RuntimeOptions:
    # The search scores dozens of candidates on the host: XNNPACK and the threads as asked, no delegates
    # (an external delegate is validated once on the final artifact).
    return RuntimeOptions(num_threads=opts.num_threads, xnnpack=opts.xnnpack, latency_runs=0)

