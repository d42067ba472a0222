"""Where per-layer candidates are built and scored: in this process, or as Ray tasks.

Analysis and the mixed search spend their time quantizing and scoring one candidate per layer
(benchmarks/results/analysis_profile_*.md); the candidates are independent, so they can run anywhere that has
the float model, the calibration statistics and the scoring data. Both executors run the same function
(`build_and_score`) on the same inputs, so a score — and every choice made from it, down to the bytes of the
final artifact — does not depend on where it ran.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any

from edgemp import quantize
from edgemp.errors import ConversionError
from edgemp.mixed.scoring import Score, Scorer
from edgemp.quantize import Statistics, apply_recipe, merge_statistics
from edgemp.quantize.engine import release_parsed


def build_and_score_many(recipes: Sequence[Any], float_tflite: bytes, statistics: Statistics,
                         scorer: Scorer) -> list[dict[str, Any]]:
    """A few candidates per Ray task: the arguments are fetched and unpacked once for all of them."""
    try:
        return [build_and_score(r, float_tflite, statistics, scorer) for r in recipes]
    finally:
        release_parsed()


def build_and_score(recipe: Any, float_tflite: bytes, statistics: Statistics, scorer: Scorer) -> dict[str, Any]:
    """One candidate: quantize with `recipe`, run it, compare with the float reference (a plain dict: cheap to
    ship back from a worker)."""
    try:
        artifact = apply_recipe(float_tflite, recipe, statistics, candidate=True)
    except ConversionError as exc:  # the quantizer refuses this one: infeasible, never chosen
        return Score.infeasible(f"the quantizer refused it: {exc}").to_dict()
    return scorer.run(artifact).to_dict()


def calibrate_shard(samples: Sequence[Any], float_tflite: bytes, num_threads: int) -> Statistics:
    """A Ray task: the statistics of a few consecutive calibration samples."""
    return quantize.calibrate(float_tflite, samples, num_threads=num_threads, progress=False)


CALIBRATION_SHARD_MIN = 16  # samples: fewer per worker and parsing the model costs more than the shard saves


def warm_up() -> bool:
    """Import what a candidate needs (TensorFlow, the quantizer, LiteRT) in a fresh worker, before candidates come."""
    import ai_edge_litert.interpreter  # noqa: F401
    import ai_edge_quantizer.quantizer  # noqa: F401

    return True


LOCAL_WORKERS = 4  # threads at most by default: each holds one candidate and one interpreter in memory


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS has no affinity API
        return os.cpu_count() or 1


class Executor:
    """`score(recipes, ...)` -> one Score per recipe, in order. `seconds`: wall time spent in score().

    In this process, candidates run on `num_workers` threads (default: the usable CPUs, at most LOCAL_WORKERS):
    LiteRT's invoke and the quantizer's array work release the GIL, so one candidate quantizes while another runs.
    Each candidate's interpreter keeps the thread count asked for (RuntimeOptions.num_threads), so a score is the
    same on any number of workers."""

    name = "local"

    def __init__(self, num_workers: int | None = None) -> None:
        self.seconds = 0.0
        self.calibration_shards = 0  # how the last calibration here was split (0: none ran here)
        self.num_workers = num_workers or min(usable_cpus(), LOCAL_WORKERS)

    @property
    def threads_here(self) -> int:
        """Threads for work that stays in this process (the preserved-tensor pass, the float reference): the
        workers asked for; 1 keeps everything on one core."""
        return self.num_workers

    @property
    def width(self) -> int:
        """Candidates scored side by side: what a batch shorter than this leaves idle."""
        return self.num_workers

    def score(self, recipes: Sequence[Any], float_tflite: bytes, statistics: Statistics, scorer: Scorer,
              progress: bool | None, label: str) -> list[Score]:
        from edgemp._progress import track

        t0 = time.perf_counter()
        if self.num_workers == 1 or len(recipes) < 2:
            try:
                done = [build_and_score(r, float_tflite, statistics, scorer)
                        for r in track(recipes, label, total=len(recipes), enabled=progress)]
            finally:
                release_parsed()  # the pool's threads drop theirs when they end
        else:
            with warnings.catch_warnings(), ThreadPoolExecutor(min(self.num_workers, len(recipes)),
                                                               thread_name_prefix="edgemp-candidate") as pool:
                warnings.simplefilter("ignore")  # the quantizer's, on the threads (filters are process-wide)
                futures = [pool.submit(build_and_score, r, float_tflite, statistics, scorer) for r in recipes]
                try:
                    for _ in track(as_completed(futures), label, total=len(futures), enabled=progress):
                        pass
                    done = [f.result() for f in futures]  # in order; a candidate's exception surfaces here
                except BaseException:  # Ctrl-C or a failed candidate: do not build the rest first
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise
        self.seconds += time.perf_counter() - t0
        return [Score(**d) for d in done]

    def calibrate(self, float_tflite: bytes, samples: Sequence[Any], num_threads: int = 1,
                  progress: bool | None = None) -> Statistics:
        """The calibration statistics: one shard of consecutive samples per worker thread (each its own calibrator
        and interpreter; LiteRT's invoke and the min/max updates of large tensors release the GIL), merged — exactly
        what one pass gives (merge_statistics). One pass when there is one worker or too few samples."""
        from edgemp._progress import track
        from edgemp.quantize.engine import _no_progress_bars

        shards = min(self.threads_here, len(samples) // CALIBRATION_SHARD_MIN)
        if shards < 2:
            self.calibration_shards = 1
            return quantize.calibrate(float_tflite, samples, num_threads=num_threads, progress=progress)
        edges = [round(i * len(samples) / shards) for i in range(shards + 1)]
        parts = [list(samples[a:b]) for a, b in zip(edges, edges[1:])]
        # the calibrator's own bar would reach the terminal from a thread (stderr is swapped on the main one only)
        with _no_progress_bars(), warnings.catch_warnings(), ThreadPoolExecutor(
                shards, thread_name_prefix="edgemp-calibration") as pool:
            warnings.simplefilter("ignore")
            futures = [pool.submit(quantize.calibrate, float_tflite, part, num_threads, False) for part in parts]
            for _ in track(as_completed(futures), f"Calibrating ({shards} shards on threads)", total=shards,
                           enabled=progress):
                pass
            stats = [f.result() for f in futures]  # in order; a shard's error surfaces here
        self.calibration_shards = shards
        return merge_statistics(stats)

    def tensor_sums(self, float_tflite: bytes, quant_tflite: bytes, shards: list[list[Any]],
                    tensors: list[str]) -> list[Any]:
        """The preserved-tensor pass of analysis (sensitivity.tensor_errors), one shard of samples per thread."""
        from edgemp.mixed.sensitivity import shard_sums

        return shard_sums(float_tflite, quant_tflite, shards, tensors, self.threads_here)

    def start(self) -> None:
        """Get ready for candidates (nothing to start in-process)."""

    def close(self) -> None:
        """Release what the executor holds (nothing in-process)."""


class RayExecutor(Executor):
    """Candidates as Ray tasks. The float model, the statistics and the scorer (validation inputs, float
    reference, labels) go into the object store once per session; a worker that dies is retried, a task that fails
    stops the run with its reason (a score the search cannot trust is not silently dropped)."""

    name = "ray"

    def __init__(self, address: str | None = None, num_workers: int | None = None, retries: int = 2,
                 timeout: float | None = None) -> None:
        from edgemp._ray import check_task_options, require_ray

        super().__init__()
        require_ray()
        check_task_options(num_workers, retries, timeout)
        self.address, self.num_workers, self.retries, self.timeout = address, num_workers, retries, timeout
        self._session: Any = None
        self._refs: dict[tuple[int, int, int], tuple[Any, ...]] = {}
        self._warming: list[Any] = []

    def ray_running(self) -> bool:
        """This process already runs or is connected to a Ray (an application's ray.init())."""
        from edgemp._ray import require_ray

        return bool(require_ray().is_initialized())

    def start(self) -> None:
        """Start (or connect to) Ray and have every worker import the heavy libraries now, without waiting: the
        caller converts and calibrates meanwhile, and the first candidates find the workers ready."""
        from edgemp._ray import ray_session

        if self._session is None:
            self._session = ray_session(self.address, self.num_workers)
            self._ray = self._session.__enter__()
            remote = self._ray.remote(num_cpus=1)(warm_up)
            self._warming = [remote.remote() for _ in range(self._slots())]

    @property
    def threads_here(self) -> int:
        """The workers are idle while this process works between their tasks: its own CPUs (at most
        LOCAL_WORKERS), or 1 when one worker was asked for."""
        return 1 if self.num_workers == 1 else min(usable_cpus(), LOCAL_WORKERS)

    @property
    def width(self) -> int:
        return self._slots() if self._session is not None else (self.num_workers or self.threads_here)

    def _slots(self) -> int:
        return self.num_workers or max(1, int(self._ray.cluster_resources().get("CPU", 1)))

    def score(self, recipes: Sequence[Any], float_tflite: bytes, statistics: Statistics, scorer: Scorer,
              progress: bool | None, label: str) -> list[Score]:
        from edgemp._ray import put

        if not recipes:
            return []
        if self._session is None and len(recipes) <= self.threads_here:
            # no local Ray started for what this process' threads run as fast: its start-up (~7 s here) is longer
            # than a few candidates (a mixed search after analyze finds most of its scores cached)
            here = Executor(self.threads_here)
            scores = here.score(recipes, float_tflite, statistics, scorer, progress, label)
            self.seconds += here.seconds
            return scores
        t0 = time.perf_counter()
        self.start()
        key = (id(float_tflite), id(statistics), id(scorer))  # each scoring set goes to the object store once
        if key not in self._refs:
            self._refs[key] = (put(float_tflite), put(statistics), put(scorer.portable()))
        size = max(1, min(8, len(recipes) // (3 * self._slots())))  # a few per task, several tasks per worker
        chunks = [list(recipes[i : i + size]) for i in range(0, len(recipes), size)]
        values = self._tasks(build_and_score_many, chunks, self._refs[key], progress, label,
                             "candidate task(s) failed on Ray, e.g. {error}. Run with executor='local' to see it "
                             "in this process.")
        self.seconds += time.perf_counter() - t0
        return [Score(**v) for chunk in values for v in chunk]

    def calibrate(self, float_tflite: bytes, samples: Sequence[Any], num_threads: int = 1,
                  progress: bool | None = None) -> Statistics:
        """One shard of consecutive samples per worker, merged: the statistics a single pass gives, bit for bit
        (min/max), in a fraction of the time. Calibration is as long as a plain conversion's float conversion, and
        outside the candidates it is what runs longest (benchmarks/results/analysis_profile_efficientnetb0.md)."""
        from edgemp._ray import put

        self.start()
        shards = min(self._slots(), len(samples) // CALIBRATION_SHARD_MIN)
        if shards < 2:
            return super().calibrate(float_tflite, samples, num_threads, progress)
        edges = [round(i * len(samples) / shards) for i in range(shards + 1)]
        parts = [list(samples[a:b]) for a, b in zip(edges, edges[1:])]
        stats = self._tasks(calibrate_shard, parts, (put(float_tflite), num_threads), progress,
                            f"Calibrating ({shards} shards on Ray)", "calibration shard(s) failed on Ray: {error}")
        self.calibration_shards = shards
        return merge_statistics(stats)

    def tensor_sums(self, float_tflite: bytes, quant_tflite: bytes, shards: list[list[Any]],
                    tensors: list[str]) -> list[Any]:
        """One Ray task per shard once Ray runs (the workers idle meanwhile): two processes, where this process'
        threads contend for the GIL over the per-tensor arithmetic (EfficientNetB0, 32 samples: 7.9 s on one
        thread, 5.3 s on two). The same sums, in shard order, as on one thread."""
        from edgemp._ray import put
        from edgemp.mixed.sensitivity import tensor_sums

        if self._session is None or len(shards) < 2:
            return super().tensor_sums(float_tflite, quant_tflite, shards, tensors)
        return self._tasks(tensor_sums, shards, (put(float_tflite), put(quant_tflite), tensors), False,
                           "Tensor errors", "preserved-tensor shard(s) failed on Ray: {error}")

    def _tasks(self, fn: Any, items: list[Any], args: tuple[Any, ...], progress: bool | None, label: str,
               failure: str) -> list[Any]:
        """`fn(item, *args)` per item as Ray tasks, their values in order; any failure stops the run with its reason
        (`failure`, with {error}: the first one's)."""
        from edgemp._ray import run_tasks

        outcomes = run_tasks(fn, items, args=args, num_workers=self.num_workers, retries=self.retries,
                             timeout=self.timeout, progress=progress, label=label)
        failed = [o for o in outcomes if not o.ok]
        if failed:
            raise ConversionError(f"{len(failed)} of {len(outcomes)} " + failure.format(error=failed[0].error))
        return [o.value for o in outcomes]

    def close(self) -> None:
        if self._session is not None:
            session, self._session, self._refs = self._session, None, {}
            session.__exit__(None, None, None)


def make_executor(executor: str | Executor | None, ray_address: str | None = None,
                  num_workers: int | None = None) -> Executor:
    """The executor named (checked by MixedOptions: 'local' or 'ray'). A Ray one connects right away to a cluster
    (a wrong address fails before any work) or to the Ray this process already runs; a local Ray is started by
    whoever knows there is work for it: the pipeline before a float conversion (start() warms the workers up
    meanwhile), else the first batch of candidates too large for this process' threads, or a calibration."""
    if isinstance(executor, Executor):
        return executor
    if (executor or "local") == "local":
        return Executor(num_workers)
    ex = RayExecutor(ray_address, num_workers)
    if ray_address is not None or ex.ray_running():
        ex.start()
    return ex
