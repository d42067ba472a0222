"""`edgemp sweep`: parse, call edgemp.sweep, print the table. Nothing more."""

from __future__ import annotations

import sys

import click

from edgemp.precisions import registered_precisions
from edgemp.targets import registered_targets

from edgemp.cli.app import EXIT_GATE_FAILED, main
from edgemp.cli.common import (INPUT_LAYOUT, IO_DTYPE, MAX_FLOAT_LAYERS, NON_NEGATIVE_INT, NUM_CALIBRATION_SAMPLES,
                               POSITIVE_FLOAT, POSITIVE_INT, UNSAFE_LOAD, VALIDATION, ChoiceList, _delegates, _labels,
                               _preprocessing, preprocessing_options, runtime_options)


@main.command()
@click.argument("models", nargs=-1, required=True, type=click.Path())
@click.option("-p", "--precisions", type=ChoiceList([p.value for p in registered_precisions()]),
              default="fp16,int8,mixed", show_default=True, help="Precisions of the grid, comma-separated.")
@click.option("-t", "--targets", type=ChoiceList(registered_targets()), default="tflite", show_default=True,
              help="Targets every cell builds, comma-separated (e.g. tflite,coreml).")
@click.option("-c", "--calibration", type=click.Path(), help="Folder of images, .npy or .npz (shared by every model).")
@VALIDATION
@click.option("-o", "--output-dir", type=click.Path(), default="dist/sweep", show_default=True,
              help="OUT/<model>/<precision>/ per cell, and OUT/sweep.md + OUT/sweep.json.")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: one cell after the other in this process; ray: each cell a Ray task (edgemp[ray]).")
@click.option("--ray-address", help="Ray cluster to use (ray://<head>:10001, or auto); default: a local Ray started "
              "for this run.")
@click.option("--workers", "num_workers", type=POSITIVE_INT,
              help="ray: cells at once (and the local Ray's CPUs); default: every CPU.")
@click.option("--retries", type=NON_NEGATIVE_INT, default=2, show_default=True,
              help="ray: times a cell whose worker died is tried again.")
@click.option("--timeout", type=POSITIVE_FLOAT, help="ray: seconds a cell may take before it is cancelled and failed.")
@UNSAFE_LOAD
@IO_DTYPE
@INPUT_LAYOUT
@NUM_CALIBRATION_SAMPLES
@click.option("--max-validation-samples", type=POSITIVE_INT,
              help="Validate on at most this many samples (default: all).")
@MAX_FLOAT_LAYERS
@click.option("--force", is_flag=True, help="Overwrite an existing sweep table and the cells' outputs.")
@click.option("--json", "as_json", is_flag=True, help="Print sweep.json instead of the table.")
@preprocessing_options
@runtime_options
def sweep(models: tuple[str, ...], precisions: tuple[str, ...], targets: tuple[str, ...], calibration: str | None,
          validation: str | None, output_dir: str, executor: str, ray_address: str | None, num_workers: int | None,
          retries: int, timeout: float | None, unsafe_load: bool, io_dtype: str, input_layout: str | None,
          num_calibration_samples: int, max_validation_samples: int | None, max_float_layers: int | float,
          force: bool, as_json: bool, size: tuple[int, int] | None, resize: str, color: str, scale: float,
          mean: tuple[float, ...] | None, std: tuple[float, ...] | None, layout: str, threads: int, no_xnnpack: bool,
          delegates: tuple[str, ...], delegate_options: tuple[str, ...], latency_runs: int, max_accuracy_drop: float,
          progress: bool | None, labels_file: str | None) -> None:
    """Convert every MODEL (.keras, .h5, SavedModel dir or .pt2) to every precision; one report per cell, one table.

    Exit code 3 when any cell failed (its reason is in the table; the other cells still ran)."""
    from edgemp.config import DataOptions, GateOptions, MixedOptions, RuntimeOptions
    from edgemp.grid import sweep as do_sweep

    result = do_sweep(
        list(models), precisions, targets, calibration, validation, output_dir, executor=executor,
        ray_address=ray_address, num_workers=num_workers, retries=retries, timeout=timeout, force=force,
        progress=progress, unsafe_load=unsafe_load, io_dtype=io_dtype, input_layout=input_layout,
        preprocessing=_preprocessing(size, resize, color, scale, mean, std, layout),
        data=DataOptions.from_dict({"num_calibration_samples": num_calibration_samples,
                                    "max_validation_samples": max_validation_samples,
                                    "class_names": _labels(labels_file)}),
        gate=GateOptions.from_dict({"max_accuracy_drop": max_accuracy_drop}),
        mixed=MixedOptions.from_dict({"max_float_layers": max_float_layers}),
        runtime=RuntimeOptions.from_dict({"num_threads": threads, "xnnpack": not no_xnnpack,
                                          "delegates": _delegates(delegates, delegate_options),
                                          "latency_runs": latency_runs}),
    )
    click.echo(result.to_json() if as_json else result.to_markdown())
    if not as_json:
        click.echo(f"wrote {', '.join(str(p) for p in result.artifacts.values())}")
    sys.exit(0 if result.passed else EXIT_GATE_FAILED)
