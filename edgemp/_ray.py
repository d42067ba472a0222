"""Run independent jobs in this process or as Ray tasks, with the same outcomes: one per item, in input order.

Ray is an optional extra (`edgemp[ray]`), imported only when a Ray run is asked for. What this module settles once,
for every user of it (`edgemp.sweep`, the mixed-precision executor):

- `ray_session(address, num_cpus)` starts a quiet local Ray on demand, or connects to a cluster, and shuts down only
  what it started: a Ray the application had already initialised is used and left running.
- `run_tasks(fn, items, ...)` submits `fn(item, *args)` per item, at most `num_workers` at a time, and follows
  completed tasks with `ray.wait` (the progress bar advances per finished task). A worker that dies (a segfault in
  a converter, `os._exit`, the OOM killer) is retried `retries` times by Ray; a task that raises is not retried and
  comes back as a failed `Outcome` with the exception's type and message; a task not done `timeout` seconds after
  it was submitted (worker start-up included) is cancelled and reported. One failing item never stops the others, and nothing waits forever when `timeout` is set.
- `put(value)` places a large shared object (a model, statistics, validation data) in the object store once; pass
  the reference in `args` and every task receives the value itself.
- `run_local(fn, items, ...)` is the same contract in-process, so callers have one code path for both executors.

    with ray_session(None, 2):
        data = put(big_arrays)
        outcomes = run_tasks(score, candidates, args=(data,), num_workers=2)
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from edgemp import _params as P
from edgemp._progress import track
from edgemp.errors import InputError, MissingDependencyError

log = logging.getLogger(__name__)

EXTRA_HINT = "pip install 'edgemp[ray]'"
# Environment Ray (and the workers it starts) sees while edgemp's session runs, unless the user set it: no usage
# statistics sent anywhere (edgemp never talks to the network on its own at run time).
_QUIET_ENV = {"RAY_USAGE_STATS_ENABLED": "0"}


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What one item gave: `value` when it finished, else `error` ("ExceptionType: message"). `seconds` is the wall
    time the driver saw from submission to completion (in-process: the call itself)."""

    index: int
    item: Any
    value: Any = None
    error: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


def require_ray() -> Any:
    """The `ray` module, or MissingDependencyError naming the extra (imported here only: `import edgemp` stays
    light)."""
    try:
        import ray
    except ImportError as exc:
        raise MissingDependencyError(f"executor='ray' needs Ray ({exc.name or 'ray'} is not installed): "
                                     f"{EXTRA_HINT}, or use executor='local'.") from exc
    return ray


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None) -> Iterator[Any]:
    """A Ray to submit tasks to: the one already initialised in this process (left running), else a local one
    started now (`num_cpus` CPUs, default all), else the cluster at `address`. Whatever this call started or
    connected is shut down (disconnected, for a cluster) when the block ends."""
    ray = require_ray()
    if ray.is_initialized():
        yield ray
        return
    if address is not None and (not isinstance(address, str) or not address.strip()):
        raise InputError(f"ray_address must be a Ray address such as 'ray://head:10001' or 'auto', got {address!r}.")
    if address is not None and num_cpus is not None:
        log.info("connecting to the Ray cluster at %s: num_workers limits the tasks in flight, not its CPUs", address)
    saved = {k: os.environ.get(k) for k in _QUIET_ENV}
    os.environ.update({k: v for k, v in _QUIET_ENV.items() if saved[k] is None})
    try:
        options: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False, ignore_reinit_error=True,
                                       logging_level=logging.ERROR, configure_logging=True)
        try:
            if address is None:
                ray.init(num_cpus=num_cpus, **options)
            else:
                check_reachable(address)
                ray.init(address=address, **options)
        except ConnectionError as exc:
            raise InputError(f"cannot connect to the Ray cluster at {address!r} ({exc}): check the address "
                             "(ray://<head>:10001, or 'auto' on a cluster node), or leave it out for a local Ray.") \
                from exc
        try:
            yield ray
        finally:
            ray.shutdown()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """An explicit host:port that accepts no connection is refused now: Ray itself retries it for minutes before it
    gives up. ('auto' and other forms are left to Ray, which answers those quickly.)"""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:  # a port that is not a number: Ray's own error says what it expects
        return
    if not host or port is None:
        return
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        raise InputError(f"cannot reach the Ray cluster at {address!r} ({host}:{port}: "
                         f"{exc.strerror or type(exc).__name__}): check the address and that the head node is running "
                         "(`ray start --head` prints it; ray://<head>:10001 for a client, <head>:6379 on a cluster "
                         "node), or leave it out for a local Ray.") from exc


def put(value: Any) -> Any:
    """Place `value` in the object store once (inside a ray_session); pass the reference as a task argument."""
    return require_ray().put(value)


def run_local(fn: Callable[..., Any], items: Sequence[Any], *, args: Sequence[Any] = (),
              progress: bool | None = None, label: str = "tasks") -> list[Outcome]:
    """`fn(item, *args)` for each item in this process, one after the other; an exception is that item's failure."""
    outcomes = []
    for i, item in enumerate(track(items, label, total=len(items), enabled=progress)):
        t0 = time.perf_counter()
        try:
            value, error = fn(item, *args), None
        except Exception as exc:  # noqa: BLE001 - one item's failure is its outcome; the others go on
            value, error = None, describe(exc)
        outcomes.append(Outcome(i, item, value, error, time.perf_counter() - t0))
    return outcomes


def run_tasks(fn: Callable[..., Any], items: Sequence[Any], *, args: Sequence[Any] = (), address: str | None = None,
              num_workers: int | None = None, retries: int = 2, timeout: float | None = None,
              progress: bool | None = None, label: str = "tasks") -> list[Outcome]:
    """`fn(item, *args)` for each item as a Ray task (one CPU each, at most `num_workers` in flight), in a
    ray_session(address, num_workers). Returns one Outcome per item, in input order. `fn` must be importable by the
    workers (a module-level function of an installed package) or picklable by value."""
    check_task_options(num_workers, retries, timeout)
    with ray_session(address, num_workers) as ray:
        slots = num_workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        remote = ray.remote(num_cpus=1, max_retries=retries, retry_exceptions=False)(fn)
        done = _completed(ray, remote, list(items), args, slots, timeout, retries)
        found = {o.index: o for o in track(done, label, total=len(items), enabled=progress)}
    return [found[i] for i in range(len(items))]


def check_task_options(num_workers: Any, retries: Any, timeout: Any) -> None:
    """run_tasks' limits, checked before a Ray starts (callers check them before any other work too)."""
    P.integer("num_workers", num_workers, 1, none_ok=True)
    P.integer("retries", retries, 0)
    P.real("timeout", timeout, 0, none_ok=True)
    if timeout is not None and timeout <= 0:
        raise InputError(f"timeout must be a number of seconds > 0 (or None: no limit), got {timeout!r}.")


def _completed(ray: Any, remote: Any, items: list[Any], args: Sequence[Any], slots: int, timeout: float | None,
               retries: int) -> Iterator[Outcome]:
    """Outcomes in the order tasks finish; a new task is submitted whenever one finishes."""
    waiting = list(enumerate(items))[::-1]
    running: dict[Any, tuple[int, float]] = {}  # ref -> (index, submitted at)
    try:
        while waiting or running:
            while waiting and len(running) < slots:
                i, item = waiting.pop()
                running[remote.remote(item, *args)] = (i, time.perf_counter())
            now = time.perf_counter()
            wait_s = None if timeout is None else max(0.0, min(t + timeout for _, t in running.values()) - now)
            ready, _ = ray.wait(list(running), num_returns=1, timeout=wait_s)
            for ref in ready:
                i, t0 = running.pop(ref)
                yield _outcome(ray, ref, i, items[i], t0, retries)
            if not ready and timeout is not None:
                now = time.perf_counter()
                for ref, (i, t0) in list(running.items()):
                    if now - t0 >= timeout:
                        del running[ref]
                        ray.cancel(ref, force=True)
                        yield Outcome(i, items[i], None, f"TimeoutError: no result after {timeout:g} s; the task was "
                                      "cancelled (raise timeout= if the job is just slow)", now - t0)
    finally:  # the consumer stopped early (an interrupt): nothing keeps running on our behalf
        for ref in running:
            ray.cancel(ref, force=True)


def _outcome(ray: Any, ref: Any, i: int, item: Any, t0: float, retries: int) -> Outcome:
    exceptions = ray.exceptions
    try:
        value = ray.get(ref)
    except exceptions.RayTaskError as exc:  # the task raised: its own exception, not a Ray failure
        cause = exc.cause if getattr(exc, "cause", None) is not None else exc
        return Outcome(i, item, None, describe(cause), time.perf_counter() - t0)
    except (exceptions.WorkerCrashedError, exceptions.NodeDiedError, exceptions.OutOfMemoryError) as exc:
        return Outcome(i, item, None, f"{type(exc).__name__}: the worker running this task died on each of "
                       f"{retries + 1} attempt(s) (a crash in native code, or out of memory)", time.perf_counter() - t0)
    except exceptions.RayError as exc:  # anything else Ray reports for the task (an object lost, ...)
        return Outcome(i, item, None, describe(exc), time.perf_counter() - t0)
    return Outcome(i, item, value, None, time.perf_counter() - t0)


def describe(exc: BaseException) -> str:
    """"Type: first line of the message" (at most 500 characters): what a table row can show."""
    text = str(exc).strip()
    first = text.splitlines()[0] if text else "no message"
    return f"{type(exc).__name__}: {first[:500]}"
