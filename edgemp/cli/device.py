"""`edgemp package`, `edgemp verify`, `edgemp unpack`, `edgemp bench`: what users carry out of edgemp (thin, like cli.py)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from edgemp.cli.app import main
from edgemp.bundle.writer import DEVICES
from edgemp.cli.common import NON_NEGATIVE_INT, POSITIVE_FLOAT, POSITIVE_INT, THREADS, _delegates, _labels

DEVICE_CHOICES = list(DEVICES)


@main.command()
@click.argument("reports", nargs=-1, type=click.Path())
@click.option("-d", "--device", "devices", multiple=True, type=click.Choice(DEVICE_CHOICES),
              help="Target device; repeatable (one bundle each).")
@click.option("-o", "--output-dir", type=click.Path(), default="dist/bundles", show_default=True,
              help="Where the bundles are written.")
@click.option("--name", help="Bundle file name without extension (default: <model>_<precision>_<device>).")
@click.option("--labels", "labels_file", type=click.Path(), help="Class names in output order, one per line "
              "(default: those the conversion recorded).")
@click.option("--dir", "as_dir", is_flag=True, help="Write a directory instead of a .zip.")
@click.option("--force", is_flag=True, help="Replace a bundle edgemp wrote before (a --dir bundle: only the files its "
              "manifest lists; other files are kept). Anything else is never replaced.")
@click.option("--schema", "print_schema", is_flag=True, help="Print the manifest's JSON Schema and exit.")
def package(reports: tuple[str, ...], devices: tuple[str, ...], output_dir: str, name: str | None,
            labels_file: str | None, as_dir: bool, force: bool, print_schema: bool) -> None:
    """Bundle converted models (the *.report.json files `edgemp convert` wrote; the first is the default model)."""
    from edgemp.bundle import package as do_package, schema

    if print_schema:
        click.echo(json.dumps(schema(), indent=2))
        return
    if not reports or not devices:
        raise click.UsageError("give at least one REPORT.json and one --device")
    for device in devices:
        b = do_package(list(reports), device, output_dir, name=f"{name}_{device}" if name and len(devices) > 1 else name,
                       class_names=_labels(labels_file), as_zip=not as_dir, force=force)
        files = b.manifest["files"]
        click.echo(f"{device}: {b.path} ({len(files)} files, {sum(f['bytes'] for f in files):,} bytes, "
                   f"default model {b.manifest['default_model']})")
        _echo_kept(b)


@main.command()
@click.argument("bundle", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print the verified manifest.")
def verify(bundle: str, as_json: bool) -> None:
    """Check a bundle: safe paths, schema, every file's checksum and size, nothing unlisted. Exit 2 if not."""
    from edgemp.bundle import read_bundle

    b = read_bundle(bundle)
    if as_json:
        click.echo(json.dumps(b.manifest, indent=2))
        return
    m = b.default_model
    click.echo(f"OK {b.path}: {b.device} bundle, {len(b.manifest['files'])} files verified; default model {m['file']} "
               f"({m['precision']}, {m['bytes']:,} bytes); validation "
               f"{'passed' if b.manifest['validation']['passed'] else 'FAILED'}")


@main.command()
@click.argument("bundle", type=click.Path())
@click.option("-o", "--output-dir", type=click.Path(), required=True,
              help="Folder to create (or an empty one).")
@click.option("--force", is_flag=True, help="Replace a bundle edgemp unpacked there before: only the files its "
              "manifest lists; other files (run.sh's .venv, yours) are kept. Anything else is never replaced.")
def unpack(bundle: str, output_dir: str, force: bool) -> None:
    """Verify BUNDLE, then extract it into OUTPUT_DIR (nothing is written if any check fails)."""
    from edgemp.bundle import unpack_bundle

    b = unpack_bundle(bundle, output_dir, force=force)
    click.echo(f"unpacked {len(b.manifest['files']) + 1} files into {b.path}")
    _echo_kept(b)


def _echo_kept(b: object) -> None:
    kept = getattr(b, "kept", ())
    if kept:
        click.echo(f"kept {len(kept)} entr{'y' if len(kept) == 1 else 'ies'} the previous bundle did not list: "
                   f"{', '.join(kept[:8])}{' ...' if len(kept) > 8 else ''}")


@main.command()
@click.argument("models", nargs=-1, required=True, type=click.Path())
@THREADS
@click.option("--warmup", type=NON_NEGATIVE_INT, default=10, show_default=True,
              help="Untimed runs after the first inference.")
@click.option("--runs", type=POSITIVE_INT, help="Timed runs (default 50 without --time-budget).")
@click.option("--time-budget", type=POSITIVE_FLOAT, help="Seconds of timed runs per model.")
@click.option("--no-xnnpack", is_flag=True, help="Run without the default XNNPACK delegate.")
@click.option("--delegate", "delegates", multiple=True, type=click.Path(), help="External delegate (.so); repeatable.")
@click.option("--delegate-option", "delegate_options", multiple=True, metavar="KEY=VALUE",
              help="Option passed to every --delegate; repeatable.")
@click.option("--inputs", type=click.Path(), help=".npy/.npz of real input samples (default: random in range).")
@click.option("--cpus", help="Host: pin to CPUs, e.g. 0 or 2-3.")
@click.option("--json", "json_path", type=click.Path(), help="Write the JSON result here ('-' for stdout).")
@click.option("--adb", "use_adb", is_flag=True, help="Run on an Android device with LiteRT's benchmark tool.")
@click.option("--benchmark-binary", type=click.Path(), help="--adb: benchmark_model built for the phone's ABI.")
@click.option("--benchmark-apk", type=click.Path(), help="--adb: the LiteRT benchmark APK instead of the binary.")
@click.option("--serial", help="--adb: device serial (when several are connected).")
@click.option("--adb-path", default="adb", show_default=True, help="--adb: the adb executable.")
@click.option("--cpu-mask", help="--adb: hexadecimal taskset mask, e.g. f0 for CPUs 4-7 (big cores on many SoCs).")
@click.option("--use-gpu", is_flag=True, help="--adb: LiteRT GPU delegate.")
@click.option("--use-nnapi", is_flag=True, help="--adb: NNAPI delegate.")
@click.option("--timeout", type=POSITIVE_FLOAT, default=600, show_default=True,
              help="--adb: seconds allowed per model run.")
def bench(models: tuple[str, ...], threads: int, warmup: int, runs: int | None, time_budget: float | None,
          no_xnnpack: bool, delegates: tuple[str, ...], delegate_options: tuple[str, ...], inputs: str | None,
          cpus: str | None, json_path: str | None, use_adb: bool, benchmark_binary: str | None,
          benchmark_apk: str | None, serial: str | None, adb_path: str, cpu_mask: str | None, use_gpu: bool,
          use_nnapi: bool, timeout: float) -> None:
    """Benchmark MODELS (.tflite): on this host with the standalone harness, or on a phone with --adb."""
    if runs is None and time_budget is None:
        runs = 50
    if use_adb:
        from edgemp.bench.android import benchmark_android

        specs = _delegates(delegates, delegate_options)
        if len(specs) > 1:
            raise click.UsageError("--adb takes one --delegate")
        result = benchmark_android(
            list(models), benchmark_binary=benchmark_binary, benchmark_apk=benchmark_apk, serial=serial, adb=adb_path,
            threads=threads, warmup=warmup, runs=runs, time_budget=time_budget, xnnpack=not no_xnnpack,
            use_gpu=use_gpu, use_nnapi=use_nnapi, delegate=specs[0]["path"] if specs else None,
            delegate_options=specs[0]["options"] if specs else None, cpu_mask=cpu_mask, timeout=timeout)
    else:
        if benchmark_binary or benchmark_apk or serial or cpu_mask or use_gpu or use_nnapi:
            raise click.UsageError("--benchmark-binary/--benchmark-apk/--serial/--cpu-mask/--use-gpu/--use-nnapi "
                                   "need --adb")
        from edgemp.bench import benchmark

        result = benchmark(list(models), threads=threads, warmup=warmup, runs=runs, time_budget=time_budget,
                           xnnpack=not no_xnnpack, delegates=_delegates(delegates, delegate_options), inputs=inputs,
                           cpus=cpus)
    if json_path == "-":
        click.echo(result.to_json())
        return
    from edgemp.bench.harness import headline

    click.echo(headline(result.data))
    click.echo(result.table())
    if json_path:
        result.to_json(Path(json_path))
        click.echo(f"wrote {json_path}")
