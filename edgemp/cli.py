"""The `edgemp` command: parses, calls the API, prints, maps errors to exit codes. Nothing more.

Exit codes: 0 success, 2 bad input, 3 validation failed (collapse / accuracy gate), 4 conversion error, 1 other.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from edgemp.config import ColorMode, IODType, Layout, Precision, ResizePolicy

EXIT_GATE_FAILED = 3


def _handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from edgemp.errors import EdgempError

        try:
            return fn(*args, **kwargs)
        except EdgempError as exc:
            click.secho(f"error: {exc}", fg="red", err=True)
            sys.exit(exc.exit_code)

    return wrapper


def _floats(text: str | None) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers, got {text!r}") from None


def _count_or_fraction(text: str) -> int | float:
    try:
        v = float(text)
    except ValueError:
        raise click.BadParameter(f"expected a count (3) or a fraction (0.1), got {text!r}") from None
    return v if 0 < v < 1 else int(v)


def _size(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"expected HxW (e.g. 224x224), got {text!r}") from None
    return h, w


def preprocessing_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    opts = [
        click.option("--size", help="Image size HxW (default: the model input's)."),
        click.option("--resize", type=click.Choice([r.value for r in ResizePolicy]), default="stretch", show_default=True),
        click.option("--color", type=click.Choice([c.value for c in ColorMode]), default="auto", show_default=True),
        click.option("--scale", type=float, default=1 / 255, show_default=True, help="Pixel multiplier before mean/std."),
        click.option("--mean", help="Per-channel mean, comma-separated (after scale)."),
        click.option("--std", help="Per-channel std, comma-separated (after scale)."),
        click.option("--layout", type=click.Choice([x.value for x in Layout]), default="NHWC", show_default=True),
    ]
    for o in reversed(opts):
        fn = o(fn)
    return fn


def runtime_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    opts = [
        click.option("--threads", type=int, default=1, show_default=True, help="Interpreter threads."),
        click.option("--no-xnnpack", is_flag=True, help="Run without the default XNNPACK delegate."),
        click.option("--delegate", "delegates", multiple=True, type=click.Path(),
                     help="External delegate library (.so); repeatable. Failing to load is an error."),
        click.option("--delegate-option", "delegate_options", multiple=True, metavar="KEY=VALUE",
                     help="Option passed to every --delegate; repeatable."),
        click.option("--latency-runs", type=int, default=50, show_default=True),
        click.option("--max-accuracy-drop", type=float, default=0.01, show_default=True,
                     help="Top-1 drop allowed, as a fraction (0.01 = one point)."),
        click.option("--progress/--no-progress", default=None, help="Progress bars (default: on a terminal)."),
        click.option("--labels", "labels_file", type=click.Path(), help="Class names in output order, one per line."),
    ]
    for o in reversed(opts):
        fn = o(fn)
    return fn


def _preprocessing(size: str | None, resize: str, color: str, scale: float, mean: str | None, std: str | None,
                   layout: str) -> Any:
    from edgemp.config import Preprocessing

    return Preprocessing(size=_size(size), resize=resize, color=color, scale=scale,  # type: ignore[arg-type]
                         mean=_floats(mean) or (0.0,), std=_floats(std) or (1.0,), layout=layout)  # type: ignore[arg-type]


def _labels(path: str | None) -> list[str] | None:
    if path is None:
        return None
    try:
        return [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    except OSError as exc:
        raise click.BadParameter(f"cannot read labels file {path}: {exc.strerror}") from None


def _delegates(paths: tuple[str, ...], options: tuple[str, ...]) -> list[dict[str, Any]]:
    opts = {}
    for kv in options:
        if "=" not in kv:
            raise click.BadParameter(f"--delegate-option expects KEY=VALUE, got {kv!r}")
        k, v = kv.split("=", 1)
        opts[k] = v
    return [{"path": p, "options": opts} for p in paths]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="edgemp")
@click.option("-v", "--verbose", count=True, help="More logging.")
def main(verbose: int) -> None:
    """edgemp: trained Keras model -> validated FP16/INT8 TFLite for phones and edge devices."""
    logging.basicConfig(level=logging.WARNING - 10 * verbose, format="%(levelname)s %(name)s: %(message)s")


@main.command()
@click.argument("model", type=click.Path())
@click.option("-p", "--precision", type=click.Choice([p.value for p in Precision]), default="int8", show_default=True)
@click.option("-c", "--calibration", type=click.Path(), help="Folder of images, .npy or .npz.")
@click.option("--validation", type=click.Path(), help="Folder with one sub-folder per class, or .npz with x/y.")
@click.option("-o", "--output-dir", type=click.Path(), default="dist", show_default=True)
@click.option("--io-dtype", type=click.Choice([i.value for i in IODType]), default="quantized", show_default=True,
              help="I/O of int8/int16x8 models: the quantized type, or float32.")
@click.option("--input-layout", type=click.Choice([x.value for x in Layout]),
              help="PyTorch (.pt2) sources: layout of the artifact's 4-D inputs (default NHWC).")
@click.option("-n", "--num-calibration-samples", type=int, default=200, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--max-validation-samples", type=int)
@click.option("--name", help="Base name of the output files (default: the model's).")
@click.option("--force", is_flag=True, help="Overwrite existing outputs.")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON report instead of the table.")
@click.option("--max-float-layers", default="0.1", show_default=True,
              help="mixed: cap on layers kept in float, a count (3) or a fraction of the model's ops (0.1).")
@click.option("--keep-float", multiple=True, help="mixed: a layer name or regex always kept in float (repeatable).")
@click.option("--never-float", multiple=True, help="mixed: a layer name or regex never kept in float (repeatable).")
@click.option("--min-sqnr-db", type=float, help="mixed: output-fidelity budget (without labels), e.g. 30.")
@click.option("--min-cosine", type=float, help="mixed: output-fidelity budget (without labels), e.g. 0.999.")
@click.option("--coreml", "with_coreml", is_flag=True, help="Also write a Core ML .mlpackage.")
@click.option("--coreml-precision", type=click.Choice(["fp32", "fp16", "mixed", "int8-weights", "w8a8", "palettize6",
                                                       "palettize4"]), help="Default: the counterpart of --precision.")
@click.option("--coreml-fp32-op", "coreml_fp32_ops", multiple=True,
              help="Core ML mixed: a layer name kept fp32, or type:OP for every Core ML op of that type.")
@click.option("--coreml-image-input", is_flag=True, help="Core ML input as an image with the preprocessing folded in.")
@click.option("--deployment-target", default="iOS16", show_default=True, help="Core ML minimum deployment target.")
@preprocessing_options
@runtime_options
@_handle_errors
def convert(model: str, precision: str, calibration: str | None, validation: str | None, output_dir: str,
            io_dtype: str, input_layout: str | None, num_calibration_samples: int, seed: int, max_validation_samples: int | None,
            name: str | None, force: bool, as_json: bool, max_float_layers: str, keep_float: tuple[str, ...],
            never_float: tuple[str, ...], min_sqnr_db: float | None, min_cosine: float | None, with_coreml: bool,
            coreml_precision: str | None, coreml_fp32_ops: tuple[str, ...], coreml_image_input: bool,
            deployment_target: str,
            size: str | None, resize: str, color: str, scale: float,
            mean: str | None, std: str | None, layout: str, threads: int, no_xnnpack: bool,
            delegates: tuple[str, ...], delegate_options: tuple[str, ...], latency_runs: int,
            max_accuracy_drop: float, progress: bool | None, labels_file: str | None) -> None:
    """Convert MODEL (.keras, .h5, SavedModel dir or torch.export .pt2) to a validated .tflite.

    Data for a .pt2 model is given in the layout of its example input (NCHW for images). With
    `--precision mixed` the most INT8-sensitive layers stay in float until the budget holds."""
    from edgemp.convert import convert as do_convert

    result = do_convert(
        model, precision, calibration, validation, output_dir, io_dtype=io_dtype, input_layout=input_layout,
        num_calibration_samples=num_calibration_samples, seed=seed,
        preprocessing=_preprocessing(size, resize, color, scale, mean, std, layout),
        max_accuracy_drop=max_accuracy_drop, max_validation_samples=max_validation_samples, num_threads=threads,
        xnnpack=not no_xnnpack, delegates=_delegates(delegates, delegate_options), latency_runs=latency_runs,
        name=name, force=force, progress=progress, class_names=_labels(labels_file),
        max_float_layers=_count_or_fraction(max_float_layers), keep_float=keep_float, never_float=never_float,
        min_sqnr_db=min_sqnr_db, min_cosine=min_cosine, targets=("tflite", "coreml") if with_coreml else ("tflite",),
        coreml_precision=coreml_precision, coreml_fp32_ops=coreml_fp32_ops, coreml_image_input=coreml_image_input,
        minimum_deployment_target=deployment_target,
    )
    _print_report(result.report, as_json)
    if not as_json:
        click.echo(f"wrote {', '.join(str(p) for p in result.artifacts.values())}")
    sys.exit(0 if result.passed else EXIT_GATE_FAILED)


@main.command()
@click.argument("model", type=click.Path())
@click.option("-c", "--calibration", type=click.Path(), required=True, help="Folder of images, .npy or .npz.")
@click.option("--validation", type=click.Path(), help="Folder with one sub-folder per class, or .npz with x/y.")
@click.option("-o", "--output-dir", type=click.Path(), default="dist", show_default=True)
@click.option("--input-layout", type=click.Choice([x.value for x in Layout]))
@click.option("-n", "--num-calibration-samples", type=int, default=200, show_default=True)
@click.option("--max-validation-samples", type=int, default=1000, show_default=True)
@click.option("--tensor-samples", type=int, default=32, show_default=True,
              help="Samples for the tensor-by-tensor comparison.")
@click.option("--top", type=int, default=15, show_default=True, help="Rows of the table to print.")
@click.option("--name", help="Base name of the output files (default: the model's).")
@click.option("--force", is_flag=True, help="Overwrite existing outputs.")
@click.option("--labels", "labels_file", type=click.Path(exists=True), help="Class names in output order, one per line.")
@click.option("--progress/--no-progress", default=None)
@click.option("--threads", type=int, default=1, show_default=True)
@_handle_errors
def analyze(model: str, calibration: str, validation: str | None, output_dir: str, input_layout: str | None,
            num_calibration_samples: int, max_validation_samples: int, tensor_samples: int, top: int, name: str | None,
            force: bool, labels_file: str | None, progress: bool | None, threads: int) -> None:
    """Rank MODEL's layers by INT8 sensitivity; write the table (JSON, Markdown), a plot and an HTML page."""
    from edgemp.analyze import analyze as do_analyze

    result = do_analyze(model, calibration, validation, output_dir, input_layout=input_layout,
                        num_calibration_samples=num_calibration_samples, max_validation_samples=max_validation_samples,
                        tensor_samples=tensor_samples, class_names=_labels(labels_file), num_threads=threads,
                        name=name, force=force, progress=progress)
    lines = result.to_markdown().splitlines()
    table = [ln for ln in lines if ln.startswith("|")]
    click.echo("\n".join([ln for ln in lines if ln and not ln.startswith("|")][:3] + table[: top + 2]))
    click.echo(f"wrote {', '.join(str(p) for p in result.artifacts.values())}")


@main.command()
@click.argument("model", type=click.Path())
@click.option("-r", "--reference", type=click.Path(), help="Float reference: .keras/.h5/SavedModel or a .tflite.")
@click.option("-d", "--data", type=click.Path(), help="Validation data: class folders, images, .npy or .npz (x/y).")
@click.option("--max-samples", type=int)
@click.option("--json", "as_json", is_flag=True)
@click.option("--report", "report_path", type=click.Path(), help="Also write the JSON report here.")
@preprocessing_options
@runtime_options
@_handle_errors
def validate(model: str, reference: str | None, data: str | None, max_samples: int | None, as_json: bool,
             report_path: str | None, size: str | None, resize: str, color: str, scale: float, mean: str | None,
             std: str | None, layout: str, threads: int, no_xnnpack: bool, delegates: tuple[str, ...],
             delegate_options: tuple[str, ...], latency_runs: int, max_accuracy_drop: float,
             progress: bool | None, labels_file: str | None) -> None:
    """Validate MODEL.tflite on the host against a reference model."""
    from edgemp.api import validate as do_validate

    report = do_validate(model, reference, data, preprocessing=_preprocessing(size, resize, color, scale, mean, std, layout),
                         max_accuracy_drop=max_accuracy_drop, max_samples=max_samples, num_threads=threads,
                         xnnpack=not no_xnnpack, delegates=_delegates(delegates, delegate_options),
                         latency_runs=latency_runs, progress=progress, class_names=_labels(labels_file))
    if report_path:
        report.to_json(Path(report_path))
    _print_report(report, as_json)
    sys.exit(0 if report.passed else EXIT_GATE_FAILED)


@main.command()
@click.argument("model", type=click.Path())
@click.option("--json", "as_json", is_flag=True)
@click.option("--ops", "show_ops", is_flag=True, help="List every op with its dtypes.")
@_handle_errors
def inspect(model: str, as_json: bool, show_ops: bool) -> None:
    """Print the op census of MODEL.tflite (or MODEL.mlpackage): what each op computes in, weights, I/O, size."""
    from rich.console import Console
    from rich.table import Table

    from edgemp.api import inspect_model

    c = inspect_model(model)
    if as_json:
        click.echo(json.dumps(c.to_dict(), indent=2))
        return
    console = Console()
    if model.rstrip("/").endswith(".mlpackage"):
        console.print(f"[bold]{model}[/]: Core ML ML Program, {c.size_bytes:,} bytes, {len(c.ops)} ops, "
                      f"spec version {c.spec_version}")
        console.print(f"ops by compute precision: {c.compute_counts}")
        console.print(f"op types: {c.op_counts}")
        console.print(f"weights (storage dtype): {c.weight_dtypes}; class labels: {c.classifier_labels}")
        for kind, specs in (("input", c.inputs), ("output", c.outputs)):
            for s in specs:
                console.print(f"{kind}: {s.name} {s.kind} {list(s.shape)} {s.dtype}")
        if show_ops:
            for o in c.ops:
                console.print(f"  [{o.compute}] {o.type} {o.name}")
        return
    console.print(f"[bold]{model}[/]: {c.size_bytes:,} bytes, {len(c.ops)} ops, {c.transpose_count} TRANSPOSE")
    t = Table(title="Ops by compute type")
    t.add_column("compute")
    t.add_column("ops", justify="right")
    for k, v in c.compute_counts.items():
        t.add_row(k, str(v))
    console.print(t)
    console.print(f"op types: {c.op_counts}")
    console.print(f"weights: {c.weight_dtypes} {c.per_channel_weights}; tensor dtypes: {c.tensor_dtypes}")
    io = Table(title="I/O")
    for col in ("kind", "name", "shape", "dtype", "scale", "zero point"):
        io.add_column(col)
    for kind, specs in (("input", c.inputs), ("output", c.outputs)):
        for s in specs:
            io.add_row(kind, s.name, str(list(s.shape)), s.dtype, "" if s.scale is None else f"{s.scale:.6g}",
                       "" if s.zero_point is None else str(s.zero_point))
    console.print(io)
    if show_ops:
        for o in c.ops:
            console.print(f"  [{o.compute}] {o.describe()}")


@main.command()
@click.option("-o", "--output-dir", type=click.Path(), default="dist/demo", show_default=True)
@click.option("-p", "--precision", "precisions", multiple=True, default=("fp16", "int8"), show_default=True,
              type=click.Choice([p.value for p in Precision]))
@_handle_errors
def demo(output_dir: str, precisions: tuple[str, ...]) -> None:
    """Main job on shipped defaults: the example Fashion-MNIST CNN, calibration_data/, validated on 10k test images.

    Trains the example model once (cached) and overwrites its own outputs in OUTPUT_DIR on every run.
    """
    from rich.console import Console

    from edgemp import demo as demo_data
    from edgemp.convert import convert as do_convert

    console = Console()
    root = Path(__file__).resolve().parents[1]
    calibration = root / "calibration_data" / "fashion_mnist"
    console.print("[bold]edgemp demo[/]: training (first run only) and caching the example model ...")
    model = demo_data.example_model_path()
    test = demo_data.fashion_mnist("test")
    failed = False
    for precision in precisions:
        console.rule(f"{precision}")
        result = do_convert(model, precision, calibration, test, output_dir, force=True, progress=None,
                            class_names=list(demo_data.CLASSES))
        result.report.render(console)
        console.print(f"wrote {', '.join(str(p) for p in result.artifacts.values())}")
        failed |= not result.passed
    sys.exit(EXIT_GATE_FAILED if failed else 0)


def _print_report(report: Any, as_json: bool) -> None:
    if as_json:
        click.echo(report.to_json())
    else:
        report.render()


from edgemp import cli_device  # noqa: E402,F401  (registers package / verify / unpack / bench on `main`)
