"""`edgemp convert / analyze / validate / inspect / demo`: parse, call the API, print. Nothing more."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from edgemp.precisions import registered_precisions
from edgemp.targets import registered_targets
from edgemp.targets.coreml.convert import COREML_PRECISIONS

from edgemp.cli.app import EXIT_GATE_FAILED, main
from edgemp.cli.common import (INPUT_LAYOUT, IO_DTYPE, MAX_FLOAT_LAYERS, NON_NEGATIVE_INT, NUM_CALIBRATION_SAMPLES,
                               POSITIVE_INT, THREADS, UNSAFE_LOAD, VALIDATION, FiniteFloat, _console, _delegates,
                               _labels, _preprocessing, _print_report, candidate_executor, preprocessing_options,
                               runtime_options)


@main.command()
@click.argument("model", type=click.Path())
@click.option("-p", "--precision", type=click.Choice([p.value for p in registered_precisions()]), default="int8",
              show_default=True,
              help="Target precision; mixed keeps the most INT8-sensitive layers in float.")
@click.option("-c", "--calibration", type=click.Path(), help="Folder of images, .npy or .npz.")
@VALIDATION
@click.option("-o", "--output-dir", type=click.Path(), default="dist", show_default=True,
              help="Where the artifacts and reports are written.")
@UNSAFE_LOAD
@IO_DTYPE
@INPUT_LAYOUT
@NUM_CALIBRATION_SAMPLES
@click.option("--seed", type=NON_NEGATIVE_INT, default=0, show_default=True,
              help="Seed of the calibration sample draw.")
@click.option("--max-validation-samples", type=POSITIVE_INT, help="Validate on at most this many samples (default: all).")
@click.option("--name", help="Base name of the output files (default: the model's).")
@click.option("--force", is_flag=True, help="Overwrite existing outputs.")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON report instead of the table.")
@MAX_FLOAT_LAYERS
@click.option("--keep-float", multiple=True, help="mixed: a layer name or regex always kept in float (repeatable).")
@click.option("--never-float", multiple=True, help="mixed: a layer name or regex never kept in float (repeatable).")
@click.option("--min-sqnr-db", type=FiniteFloat(), help="mixed: output-fidelity budget (without labels), e.g. 30.")
@click.option("--min-cosine", type=FiniteFloat(min=-1, max=1),
              help="mixed: output-fidelity budget (without labels), e.g. 0.999.")
@click.option("-t", "--target", "targets", multiple=True, type=click.Choice(registered_targets()),
              help="Artifact format to build (repeatable; default tflite): e.g. -t coreml alone for an iOS app.")
@click.option("--coreml", "with_coreml", is_flag=True, help="Also write a Core ML .mlpackage (same as adding -t coreml).")
@click.option("--coreml-precision", type=click.Choice(list(COREML_PRECISIONS)),
              help="Default: the counterpart of --precision.")
@click.option("--coreml-fp32-op", "coreml_fp32_ops", multiple=True,
              help="Core ML mixed: a layer name kept fp32, or type:OP for every Core ML op of that type.")
@click.option("--coreml-image-input", is_flag=True, help="Core ML input as an image with the preprocessing folded in.")
@click.option("--deployment-target", default="iOS16", show_default=True, help="Core ML minimum deployment target.")
@click.option("--onnx-opset", type=int, default=18, show_default=True, help="ONNX target (-t onnx): the opset.")
@click.option("--onnx-fp16-io", is_flag=True, help="ONNX target at fp16: float16 inputs and outputs (default float32).")
@preprocessing_options
@runtime_options
@candidate_executor
def convert(model: str, precision: str, calibration: str | None, validation: str | None, output_dir: str,
            unsafe_load: bool, io_dtype: str, input_layout: str | None, num_calibration_samples: int, seed: int, max_validation_samples: int | None,
            name: str | None, force: bool, as_json: bool, max_float_layers: int | float, keep_float: tuple[str, ...],
            never_float: tuple[str, ...], min_sqnr_db: float | None, min_cosine: float | None,
            targets: tuple[str, ...], with_coreml: bool,
            coreml_precision: str | None, coreml_fp32_ops: tuple[str, ...], coreml_image_input: bool,
            deployment_target: str, onnx_opset: int, onnx_fp16_io: bool,
            size: tuple[int, int] | None, resize: str, color: str, scale: float,
            mean: tuple[float, ...] | None, std: tuple[float, ...] | None, layout: str, threads: int, no_xnnpack: bool,
            delegates: tuple[str, ...], delegate_options: tuple[str, ...], latency_runs: int,
            max_accuracy_drop: float, progress: bool | None, labels_file: str | None, executor: str,
            ray_address: str | None, num_workers: int | None) -> None:
    """Convert MODEL (.keras, .h5, SavedModel dir or torch.export .pt2) to validated artifacts (.tflite by default).

    Data for a .pt2 model is given in the layout of its example input (NCHW for images). With
    `--precision mixed` the most INT8-sensitive layers stay in float until the budget holds."""
    from edgemp.config import CoreMLOptions, DataOptions, GateOptions, MixedOptions, OnnxOptions, RuntimeOptions
    from edgemp.pipeline import convert as do_convert

    chosen = list(targets) or ["tflite"]
    if with_coreml and "coreml" not in chosen:
        chosen.append("coreml")
    result = do_convert(
        model, precision, calibration, validation, output_dir, io_dtype=io_dtype, input_layout=input_layout,
        targets=chosen, preprocessing=_preprocessing(size, resize, color, scale, mean, std, layout),
        data=DataOptions.from_dict({"num_calibration_samples": num_calibration_samples, "seed": seed,
                                    "max_validation_samples": max_validation_samples, "class_names": _labels(labels_file)}),
        gate=GateOptions.from_dict({"max_accuracy_drop": max_accuracy_drop, "min_sqnr_db": min_sqnr_db,
                                    "min_cosine": min_cosine}),
        mixed=MixedOptions.from_dict({"max_float_layers": max_float_layers, "keep_float": keep_float,
                                      "never_float": never_float, "executor": executor, "ray_address": ray_address,
                                      "num_workers": num_workers}),
        runtime=RuntimeOptions.from_dict({"num_threads": threads, "xnnpack": not no_xnnpack,
                                          "delegates": _delegates(delegates, delegate_options),
                                          "latency_runs": latency_runs}),
        coreml=CoreMLOptions.from_dict({"precision": coreml_precision, "fp32_ops": coreml_fp32_ops,
                                        "image_input": coreml_image_input,
                                        "minimum_deployment_target": deployment_target}),
        onnx=OnnxOptions(opset=onnx_opset, fp16_io=onnx_fp16_io),
        name=name, force=force, progress=progress, unsafe_load=unsafe_load,
    )
    _print_report(result.report, as_json)
    if not as_json:
        click.echo(f"wrote {', '.join(str(p) for p in result.artifacts.values())}")
    sys.exit(0 if result.passed else EXIT_GATE_FAILED)


@main.command()
@click.argument("model", type=click.Path())
@click.option("-c", "--calibration", type=click.Path(), required=True, help="Folder of images, .npy or .npz.")
@VALIDATION
@click.option("-o", "--output-dir", type=click.Path(), default="dist", show_default=True,
              help="Where the table, plot and HTML page are written.")
@UNSAFE_LOAD
@INPUT_LAYOUT
@NUM_CALIBRATION_SAMPLES
@click.option("--max-validation-samples", type=POSITIVE_INT, default=1000, show_default=True,
              help="Score each layer on at most this many validation samples.")
@click.option("--tensor-samples", type=POSITIVE_INT, default=32, show_default=True,
              help="Samples for the tensor-by-tensor comparison.")
@click.option("--top", type=POSITIVE_INT, default=15, show_default=True, help="Rows of the table to print.")
@click.option("--name", help="Base name of the output files (default: the model's).")
@click.option("--force", is_flag=True, help="Overwrite existing outputs.")
@click.option("--labels", "labels_file", type=click.Path(exists=True), help="Class names in output order, one per line.")
@click.option("--progress/--no-progress", default=None, help="Progress bars (default: on a terminal).")
@THREADS
@candidate_executor
def analyze(model: str, calibration: str, validation: str | None, output_dir: str, unsafe_load: bool,
            input_layout: str | None,
            num_calibration_samples: int, max_validation_samples: int, tensor_samples: int, top: int, name: str | None,
            force: bool, labels_file: str | None, progress: bool | None, threads: int, executor: str,
            ray_address: str | None, num_workers: int | None) -> None:
    """Rank MODEL's layers by INT8 sensitivity; write the table (JSON, Markdown), a plot and an HTML page."""
    from edgemp.analysis import analyze as do_analyze

    result = do_analyze(model, calibration, validation, output_dir, input_layout=input_layout,
                        num_calibration_samples=num_calibration_samples, max_validation_samples=max_validation_samples,
                        tensor_samples=tensor_samples, class_names=_labels(labels_file), num_threads=threads,
                        name=name, force=force, progress=progress, unsafe_load=unsafe_load, executor=executor,
                        ray_address=ray_address, num_workers=num_workers)
    lines = result.to_markdown().splitlines()
    table = [ln for ln in lines if ln.startswith("|")]
    click.echo("\n".join([ln for ln in lines if ln and not ln.startswith("|")][:3] + table[: top + 2]))
    click.echo(f"wrote {', '.join(str(p) for p in result.artifacts.values())}")


@main.command()
@click.argument("model", type=click.Path())
@click.option("-r", "--reference", type=click.Path(), help="Float reference: .keras/.h5/SavedModel or a .tflite.")
@UNSAFE_LOAD
@click.option("-d", "--data", type=click.Path(), help="Validation data: class folders, images, .npy or .npz (x/y).")
@click.option("--max-samples", type=POSITIVE_INT, help="Validate on at most this many samples (default: all).")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON report instead of the table.")
@click.option("--report", "report_path", type=click.Path(), help="Also write the JSON report here.")
@preprocessing_options
@runtime_options
def validate(model: str, reference: str | None, unsafe_load: bool, data: str | None, max_samples: int | None,
             as_json: bool, report_path: str | None, size: tuple[int, int] | None, resize: str, color: str, scale: float,
             mean: tuple[float, ...] | None,
             std: tuple[float, ...] | None, layout: str, threads: int, no_xnnpack: bool, delegates: tuple[str, ...],
             delegate_options: tuple[str, ...], latency_runs: int, max_accuracy_drop: float,
             progress: bool | None, labels_file: str | None) -> None:
    """Validate MODEL.tflite on the host against a reference model."""
    from edgemp.api import validate as do_validate

    report = do_validate(model, reference, data, preprocessing=_preprocessing(size, resize, color, scale, mean, std, layout),
                         max_accuracy_drop=max_accuracy_drop, max_samples=max_samples, num_threads=threads,
                         xnnpack=not no_xnnpack, delegates=_delegates(delegates, delegate_options),
                         latency_runs=latency_runs, progress=progress, class_names=_labels(labels_file),
                         unsafe_load=unsafe_load)
    if report_path:
        report.to_json(Path(report_path))
    _print_report(report, as_json)
    sys.exit(0 if report.passed else EXIT_GATE_FAILED)


@main.command()
@click.argument("model", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print the census as JSON.")
@click.option("--ops", "show_ops", is_flag=True, help="List every op with its dtypes.")
def inspect(model: str, as_json: bool, show_ops: bool) -> None:
    """Print the op census of MODEL.tflite (or MODEL.mlpackage): what each op computes in, weights, I/O, size."""
    from rich.table import Table

    from edgemp.api import inspect_model

    c = inspect_model(model)
    if as_json:
        click.echo(json.dumps(c.to_dict(), indent=2))
        return
    console = _console()
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
@click.option("-o", "--output-dir", type=click.Path(), default="dist/demo", show_default=True,
              help="Where the demo writes its artifacts and reports (overwritten on every run).")
@click.option("-p", "--precision", "precisions", multiple=True, default=("fp16", "int8"), show_default=True,
              type=click.Choice([p.value for p in registered_precisions()]), help="Precision to convert to; repeatable.")
def demo(output_dir: str, precisions: tuple[str, ...]) -> None:
    """Main job on shipped defaults: the example Fashion-MNIST CNN, calibration_data/, validated on 10k test images.

    Trains the example model once (cached) and overwrites its own outputs in OUTPUT_DIR on every run.
    """
    from edgemp import demo as demo_data
    from edgemp.config import DataOptions
    from edgemp.pipeline import convert as do_convert

    console = _console()
    calibration = demo_data.calibration_folder()
    # the file example_model_path() caches (its default epochs=1): there, it loads; else it trains first
    cached = demo_data.cache_dir() / "models" / f"fashion_cnn_{demo_data.MODEL_VERSION}_e1.keras"
    if cached.exists():
        console.print(f"[bold]edgemp demo[/]: loading the cached example model ({cached})")
    else:
        console.print("[bold]edgemp demo[/]: training the example model (first run, ~2 min; cached afterwards) ...")
    model = demo_data.example_model_path()
    test = demo_data.fashion_mnist("test")
    failed = False
    for precision in precisions:
        console.rule(f"{precision}")
        result = do_convert(model, precision, calibration, test, output_dir, force=True, progress=None,
                            data=DataOptions(class_names=demo_data.CLASSES))
        result.report.render(console)
        console.print(f"wrote {', '.join(str(p) for p in result.artifacts.values())}")
        failed |= not result.passed
    sys.exit(EXIT_GATE_FAILED if failed else 0)


