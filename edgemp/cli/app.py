"""The `edgemp` group: runs a command with framework noise filtered, maps errors to exit codes and one line.

Exit codes: 0 success, 2 bad input, 3 validation failed (collapse, accuracy or fidelity gate), 4 conversion
error, 1 an unexpected error (a bug: `--debug` shows its traceback), 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
import sys
import traceback
from collections.abc import Iterator
from types import FrameType
from typing import Any

import click

from edgemp import _quiet


EXIT_GATE_FAILED = 3
EXIT_UNEXPECTED = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for a process Ctrl-C stopped
NOT_A_TTY_WIDTH = 200  # rich tables are cut at 80 columns when stdout is a file or a pipe; COLUMNS still wins


class EdgempGroup(click.Group):
    """Runs a command with framework noise filtered from fd 2 and maps what escapes it to one line and an exit code:
    EdgempError -> its own code; any other exception -> 1 with a hint to re-run with --debug; Ctrl-C -> 130."""

    def invoke(self, ctx: click.Context) -> Any:
        from edgemp.errors import EdgempError

        debug = bool(ctx.params.get("debug"))
        if ctx.params.get("verbose") or _log_level() == logging.DEBUG:
            _quiet.show_framework_output()
        try:
            with _interrupt_outside_gc_callbacks(), _quiet.filtered_fd2():
                return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except EdgempError as exc:
            if debug:
                traceback.print_exc()
            click.secho(f"error: {exc}", fg="red", err=True)
            sys.exit(exc.exit_code)
        except Exception as exc:
            if isinstance(exc, OSError) and exc.errno == 32:  # EPIPE (`edgemp ... | head`): click's business
                raise
            if debug:
                traceback.print_exc()
            lines = str(exc).strip().splitlines()
            what = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
            hint = "" if debug else "; re-run with --debug to see the traceback"
            click.secho(f"error: unexpected {what}{' [...]' if len(lines) > 1 else ''}{hint}", fg="red", err=True)
            sys.exit(EXIT_UNEXPECTED)


@contextlib.contextmanager
def _interrupt_outside_gc_callbacks() -> Iterator[None]:
    """Ctrl-C that lands while a garbage-collector callback runs (JAX registers one; the latency loop allocates
    enough to run it often) or a finalizer (__del__, weakref.finalize) raises KeyboardInterrupt inside it, where
    Python prints "Exception ignored" and goes on: the command kept running. The interrupt is then raised 50 ms
    later, outside."""
    if sys.platform == "win32" or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield  # not the main thread's default handling (an embedding app, a test runner): leave it alone
        return

    def in_callback(frame: FrameType | None) -> bool:
        codes = {getattr(cb, "__code__", None) for cb in gc.callbacks}
        while frame is not None:  # a gc callback, or a finalizer: both swallow what they raise
            if frame.f_code in codes or frame.f_code.co_name == "__del__" or (
                    frame.f_code.co_name == "__call__" and frame.f_code.co_filename.endswith("weakref.py")):
                return True
            frame = frame.f_back
        return False

    def interrupt(signum: int, frame: FrameType | None) -> None:
        if in_callback(frame):
            signal.setitimer(signal.ITIMER_REAL, 0.05)
            return
        raise KeyboardInterrupt

    saved_alarm = signal.signal(signal.SIGALRM, interrupt)
    signal.signal(signal.SIGINT, interrupt)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGALRM, saved_alarm)


def _log_level(verbose: int = 0) -> int:
    env = os.environ.get("EDGEMP_LOG", "").strip().upper()
    from_env = logging.getLevelName(env) if env else logging.WARNING
    from_env = from_env if isinstance(from_env, int) else logging.WARNING
    return min(from_env, logging.WARNING - 10 * verbose)


@click.group(cls=EdgempGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="edgemp", help="Show the version and exit.")
@click.option("-v", "--verbose", count=True,
              help="More logging (-v info, -vv debug), and the frameworks' own output (TensorFlow, LiteRT, "
                   "coremltools), which edgemp hides otherwise; EDGEMP_LOG=debug does the same.")
@click.option("--debug", is_flag=True, help="Show the Python traceback of an error.")
def main(verbose: int, debug: bool) -> None:
    """edgemp: trained Keras or PyTorch model -> validated FP16/INT8 TFLite (and Core ML) for phones and edge devices."""
    logging.basicConfig(level=_log_level(verbose), format="%(levelname)s %(name)s: %(message)s")
    if not _quiet.noisy():
        import warnings

        def one_line(message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
            click.secho(f"warning: {message}", fg="yellow", err=True)

        warnings.showwarning = one_line  # edgemp's warnings as one line; the frameworks' are noise unless -v
        warnings.filterwarnings("ignore", module=_FRAMEWORKS)


_FRAMEWORKS = r"(tensorflow|keras|tf_keras|torch|torchvision|torchao|coremltools|absl|google|h5py|ml_dtypes|jax|" \
              r"litert_torch|ai_edge_litert|ai_edge_torch|ai_edge_quantizer|onnx|numpy|sklearn)(\.|$)"


