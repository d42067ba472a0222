"""What the commands share: parameter types with ranges, option groups built from the registries, and
small readers (labels files, delegates).
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from edgemp.config import ColorMode, IODType, Layout, ResizePolicy

from edgemp.cli.app import NOT_A_TTY_WIDTH


def _console() -> Any:
    """A rich Console for stdout: as wide as the terminal, or NOT_A_TTY_WIDTH when stdout is a file or a pipe."""
    from rich.console import Console

    wide = not sys.stdout.isatty() and not os.environ.get("COLUMNS")
    return Console(width=NOT_A_TTY_WIDTH if wide else None)


class FiniteFloat(click.FloatRange):
    """click.FloatRange that also refuses nan and inf (they pass its comparisons)."""

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        v = super().convert(value, param, ctx)
        if not math.isfinite(v):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return v


class FloatList(click.ParamType):
    """Comma-separated finite numbers (per-channel mean/std); positive=True refuses zero and negatives."""

    name = "N[,N...]"

    def __init__(self, positive: bool = False) -> None:
        self.positive = positive

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        if isinstance(value, tuple):
            return value
        try:
            vals = tuple(float(v) for v in str(value).split(","))
        except ValueError:
            self.fail(f"expected comma-separated numbers, got {value!r}.", param, ctx)
        if not all(math.isfinite(v) for v in vals):
            self.fail(f"expected finite numbers, got {value!r}.", param, ctx)
        if self.positive and any(v <= 0 for v in vals):
            self.fail(f"expected numbers > 0 (inputs are divided by them), got {value!r}.", param, ctx)
        return vals


class Size(click.ParamType):
    """HxW, both >= 1."""

    name = "HxW"

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        if isinstance(value, tuple):
            return value
        try:
            h, w = (int(v) for v in str(value).lower().split("x"))
        except ValueError:
            self.fail(f"expected HxW (e.g. 224x224), got {value!r}.", param, ctx)
        if h < 1 or w < 1:
            self.fail(f"height and width must be at least 1, got {value!r}.", param, ctx)
        return h, w


class CountOrFraction(click.ParamType):
    """A count (0, 1, 2, ...) or a fraction strictly between 0 and 1."""

    name = "COUNT|FRACTION"

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return value
        try:
            v = float(value)
        except ValueError:
            self.fail(f"expected a count (3) or a fraction (0.1), got {value!r}.", param, ctx)
        if not math.isfinite(v) or v < 0 or (v >= 1 and not v.is_integer()):
            self.fail(f"expected a count (0, 1, 2, ...) or a fraction between 0 and 1, got {value!r}.", param, ctx)
        return v if 0 < v < 1 else int(v)


class ChoiceList(click.ParamType):
    """Comma-separated names, each one of `choices`, each once (`--precisions fp16,int8,mixed`)."""

    name = "NAME[,NAME...]"

    def __init__(self, choices: list[str]) -> None:
        self.choices = list(choices)

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        if isinstance(value, tuple):
            return value
        names = tuple(v.strip().lower() for v in str(value).split(",") if v.strip())
        bad = [n for n in names if n not in self.choices]
        if not names or bad:
            self.fail(f"{(bad or [value])[0]!r} is not one of {', '.join(self.choices)} (comma-separated).", param, ctx)
        if len(set(names)) != len(names):
            self.fail(f"each name once, got {value!r}.", param, ctx)
        return names


POSITIVE_INT = click.IntRange(min=1)
NON_NEGATIVE_INT = click.IntRange(min=0)
POSITIVE_FLOAT = FiniteFloat(min=0, min_open=True)
UNSAFE_LOAD = click.option("--unsafe-load", is_flag=True,
                           help="Load a .keras/.h5 that contains Python code (a Lambda layer) by RUNNING that code: "
                                "only for files you trust as you trust a script.")
VALIDATION = click.option("--validation", type=click.Path(),
                          help="Folder with one sub-folder per class, or .npz with x/y.")
THREADS = click.option("--threads", type=POSITIVE_INT, default=1, show_default=True, help="Interpreter threads.")
# options convert and sweep (and analyze) share, spelled once
IO_DTYPE = click.option("--io-dtype", type=click.Choice([i.value for i in IODType]), default="quantized",
                        show_default=True, help="I/O of int8/int16x8 models: the quantized type, or float32.")
INPUT_LAYOUT = click.option("--input-layout", type=click.Choice([x.value for x in Layout]),
                            help="PyTorch (.pt2) sources: layout of the artifact's 4-D inputs (default NHWC).")
NUM_CALIBRATION_SAMPLES = click.option("-n", "--num-calibration-samples", type=POSITIVE_INT, default=200,
                                       show_default=True, help="Calibration samples drawn from --calibration.")
MAX_FLOAT_LAYERS = click.option("--max-float-layers", type=CountOrFraction(), default="0.1", show_default=True,
                                help="mixed: cap on layers kept in float, a count (3) or a fraction of the model's ops "
                                     "(0.1).")


def preprocessing_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    opts = [
        click.option("--size", type=Size(), help="Image size HxW (default: the model input's)."),
        click.option("--resize", type=click.Choice([r.value for r in ResizePolicy]), default="stretch", show_default=True,
                     help="How images are brought to --size: stretch, or keep the aspect ratio (crop / pad)."),
        click.option("--color", type=click.Choice([c.value for c in ColorMode]), default="auto", show_default=True,
                     help="Colour mode images are read in (auto: the model input's channels)."),
        click.option("--scale", type=POSITIVE_FLOAT, default=1 / 255, show_default=True,
                     help="Pixel multiplier before mean/std."),
        click.option("--mean", type=FloatList(), help="Per-channel mean, comma-separated (after scale)."),
        click.option("--std", type=FloatList(positive=True), help="Per-channel std, comma-separated (after scale)."),
        click.option("--layout", type=click.Choice([x.value for x in Layout]), default="NHWC", show_default=True,
                     help="Layout of image arrays: NHWC (Keras) or NCHW (PyTorch)."),
    ]
    for o in reversed(opts):
        fn = o(fn)
    return fn


def runtime_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    opts = [
        THREADS,
        click.option("--no-xnnpack", is_flag=True, help="Run without the default XNNPACK delegate."),
        click.option("--delegate", "delegates", multiple=True, type=click.Path(),
                     help="External delegate library (.so); repeatable. Failing to load is an error."),
        click.option("--delegate-option", "delegate_options", multiple=True, metavar="KEY=VALUE",
                     help="Option passed to every --delegate; repeatable."),
        click.option("--latency-runs", type=NON_NEGATIVE_INT, default=50, show_default=True,
                     help="Timed single-sample runs for the host latency; 0: latency not measured."),
        click.option("--max-accuracy-drop", type=FiniteFloat(min=0, max=1), default=0.01, show_default=True,
                     help="Top-1 drop allowed, as a fraction (0.01 = one point)."),
        click.option("--progress/--no-progress", default=None, help="Progress bars (default: on a terminal)."),
        click.option("--labels", "labels_file", type=click.Path(), help="Class names in output order, one per line."),
    ]
    for o in reversed(opts):
        fn = o(fn)
    return fn


def _preprocessing(size: tuple[int, int] | None, resize: str, color: str, scale: float,
                   mean: tuple[float, ...] | None, std: tuple[float, ...] | None, layout: str) -> Any:
    from edgemp.config import Preprocessing

    return Preprocessing(size=size, resize=resize, color=color, scale=scale,  # type: ignore[arg-type]
                         mean=mean or (0.0,), std=std or (1.0,), layout=layout)  # type: ignore[arg-type]


def _labels(path: str | None) -> list[str] | None:
    if path is None:
        return None
    try:
        return [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    except OSError as exc:
        raise click.BadParameter(f"cannot read labels file {path}: {exc.strerror}", param_hint="'--labels'") from None
    except UnicodeDecodeError:
        raise click.BadParameter(f"labels file {path} is not UTF-8 text (one class name per line)",
                                 param_hint="'--labels'") from None


def _delegates(paths: tuple[str, ...], options: tuple[str, ...]) -> list[dict[str, Any]]:
    opts = {}
    for kv in options:
        if "=" not in kv:
            raise click.BadParameter(f"expected KEY=VALUE, got {kv!r}", param_hint="'--delegate-option'")
        k, v = kv.split("=", 1)
        opts[k] = v
    return [{"path": p, "options": opts} for p in paths]


def _print_report(report: Any, as_json: bool) -> None:
    if as_json:
        click.echo(report.to_json())
    else:
        report.render(_console())




def candidate_executor(f: Any) -> Any:
    """--executor/--ray-address/--workers of convert (mixed) and analyze: where per-layer candidates run."""
    for opt in reversed([
        click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
                     help="mixed/analyze: score the per-layer candidates in this process, or as Ray tasks "
                          "(edgemp[ray]; same result)."),
        click.option("--ray-address", help="ray: the cluster to use (ray://<head>:10001, or auto); default: a local "
                                           "Ray started for this run."),
        click.option("--workers", "num_workers", type=POSITIVE_INT,
                     help="candidates scored at once: threads in this process (default: the CPUs, at most 4), or "
                          "Ray tasks (and the local Ray's CPUs; default: every CPU)."),
    ]):
        f = opt(f)
    return f
