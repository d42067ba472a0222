"""edgemp.package: the converted artifacts, laid out for one device, with a manifest the app can trust.

Layouts (paths relative to the bundle root, where manifest.json always is):
- android:  <model>.tflite, labels.txt, manifest.json — the contents of an app's `assets/edgemp/` folder.
- ios:      <model>.mlpackage/ (the package tree), labels.txt, manifest.json.
- jetson: <model>.onnx (when the result has an ONNX artifact), build_engine.sh (TensorRT via trtexec), harness_trt.py +
  harness.py, requirements.txt (pinned), run.sh, labels.txt, manifest.json; else as linux-arm64.
- linux-arm64: <model>.tflite, labels.txt, harness.py, requirements.txt (pinned), run.sh, manifest.json.
A zip is written deterministically (sorted entries, fixed timestamps): the same inputs give the same bytes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import stat
import zipfile
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from edgemp import __version__
from edgemp._io import check_overwrite, lstat_or_none, prepare_output_dir, write_atomic
from edgemp.bundle.install import place_tree
from edgemp.bundle.manifest import (SCHEMA_VERSION, app_preprocessing, calibration_summary, validate_manifest,
                                    validation_summary)
from edgemp import _params as P
from edgemp.errors import (BundleIntegrityError, InputError, MissingArtifactError, ModelLoadError, OutputExistsError,
                           public)
DEVICES = ("android", "ios", "jetson", "linux-arm64")
# the artifact each device takes, in order of preference (jetson: the TensorRT-ready ONNX, else the .tflite on the CPU)
_TARGETS = {"android": ("tflite",), "ios": ("coreml",), "jetson": ("onnx", "tflite"), "linux-arm64": ("tflite",)}
_EXECUTABLE = {"run.sh", "harness.py", "harness_trt.py", "build_engine.sh"}
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)
_NOTES = {
    "android": ["Unzip into app/src/main/assets/edgemp/ and keep .tflite uncompressed in the APK "
                "(androidResources { noCompress += \"tflite\" }) so LiteRT can memory-map it.",
                "Benchmark on the phone: edgemp bench MODEL.tflite --adb --benchmark-binary android_aarch64_benchmark_model"],
    "ios": ["Drag the .mlpackage into Xcode; it compiles it to .mlmodelc and generates a Swift class.",
            "Core ML numeric validation runs on macOS only: see validation in this manifest for what was checked on the host."],
    "jetson": ["sh run.sh benchmarks on the CPU with LiteRT (XNNPACK). For stable numbers first: sudo nvpmodel -m 0 && "
               "sudo jetson_clocks.", "JetPack 6 (Python 3.10) installs ai-edge-litert; JetPack 5 (Python 3.8) the "
               "legacy tflite-runtime 2.13 (see requirements.txt)."],
    "linux-arm64": ["sh run.sh benchmarks with LiteRT (XNNPACK). On a Raspberry Pi, watch for thermal throttling "
                    "(vcgencmd measure_temp) and use --cpus to pin cores."],
}


@dataclasses.dataclass(frozen=True)
class Bundle:
    """A written (or verified) bundle: its path (a .zip or a directory), device and manifest. `kept`: what a bundle
    folder written with force kept because the bundle it replaced did not list it (your files, run.sh's .venv)."""

    path: Path
    device: str
    manifest: dict[str, Any]
    kept: tuple[str, ...] = ()

    @property
    def default_model(self) -> dict[str, Any]:
        return next(m for m in self.manifest["models"] if m["file"] == self.manifest["default_model"])


def _report_of(result: Any) -> tuple[dict[str, Any], Path | None]:
    """A ConvertResult, a Report, a report dict or the path of a *.report.json; and the folder of the report file
    (where convert wrote the artifacts beside it), if known."""
    if hasattr(result, "report") and hasattr(result.report, "to_dict"):
        written = (getattr(result, "artifacts", None) or {}).get("report_json")
        return result.report.to_dict(), Path(written).absolute().parent if written else None
    if hasattr(result, "to_dict"):
        return result.to_dict(), None
    if isinstance(result, dict):
        return result, None
    if isinstance(result, str | os.PathLike):
        p = Path(result)
        if not p.is_file():
            raise ModelLoadError(f"report {p} does not exist; pass a ConvertResult or the *.report.json convert wrote")
        try:
            data = json.loads(p.read_bytes())
        except (OSError, ValueError, RecursionError) as exc:
            why = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
            raise InputError(f"{p} is not a readable edgemp report ({why}); pass the *.report.json convert wrote") from None
        if not isinstance(data, dict) or not isinstance(data.get("artifacts"), list):
            raise InputError(f"{p} is not an edgemp conversion report (no 'artifacts'); pass the *.report.json convert wrote")
        if not all(isinstance(a, dict) and all(isinstance(a.get(k), str) for k in ("target", "path", "sha256"))
                   for a in data["artifacts"]) or not isinstance(data.get("model"), dict):
            raise InputError(f"{p} is not a complete edgemp conversion report (its 'artifacts' lack target, path or "
                             "sha256); pass the *.report.json convert wrote, unedited")
        return data, p.absolute().parent
    raise InputError(f"package() takes a ConvertResult, a Report or a report JSON path, got {type(result).__name__}")


def _tree_sha256(path: Path) -> str:
    from edgemp.targets.coreml.census import package_sha256

    return package_sha256(path)


def _candidates(stored: Path, folder: Path | None) -> list[Path]:
    """Where an artifact the report names may be: the stored path (absolute since reports store absolute paths;
    older reports stored it relative to where convert ran), else beside the report (convert writes it there; the
    folder may have been moved or copied), else relative to the current directory."""
    found = [stored] if stored.is_absolute() else []
    if folder is not None:
        found += [folder / stored.name] + ([] if stored.is_absolute() else [folder / stored])
    if not stored.is_absolute():
        found.append(stored.absolute())
    return list(dict.fromkeys(found))


def _artifact(report: dict[str, Any], device: str,
              folder: Path | None = None) -> tuple[dict[str, Any], bytes | None, Path]:
    """The report's artifact for the device, checked against its sha256; a file's bytes are read once, here."""
    wanted = _TARGETS[device]
    art = next((a for t in wanted for a in report["artifacts"] if a["target"] == t), None)
    if art is None:
        how = {"coreml": "convert with targets=(\"tflite\", \"coreml\") (CLI: edgemp convert ... --coreml)",
               "onnx": "convert with targets including \"onnx\" (CLI: -t onnx) for TensorRT, or \"tflite\" for the CPU",
               "tflite": "convert the model to TFLite first (edgemp convert)"}[wanted[0]]
        kind = {"coreml": "Core ML", "onnx": "ONNX or TFLite", "tflite": "TFLite"}[wanted[0]]
        raise MissingArtifactError(f"the {report['precision']} result of {report['model']['name']!r} has no "
                                   f"{kind} artifact for {device}: {how}")
    stored = Path(art["path"])
    candidates = _candidates(stored, folder)
    existing = [p for p in candidates if os.path.lexists(p)]
    if not existing:
        raise ModelLoadError(f"artifact {stored} named in the report does not exist any more (looked at "
                             f"{', '.join(map(str, candidates))}); convert again, or keep the artifact beside its "
                             "report")
    mismatch = None
    for path in existing:
        try:
            data = None if path.is_dir() else path.read_bytes()
        except OSError as exc:
            raise ModelLoadError(f"cannot read artifact {path} ({exc.strerror}); check its permissions") from exc
        digest = _tree_sha256(path) if data is None else hashlib.sha256(data).hexdigest()
        if digest == art["sha256"]:
            return art, data, path
        mismatch = mismatch or (path, digest)
    path, digest = mismatch  # type: ignore[misc]
    raise BundleIntegrityError(f"{path} changed after conversion (sha256 {digest[:12]}… is not the report's "
                               f"{art['sha256'][:12]}…); convert again so the manifest describes what ships")


def _model_entry(report: dict[str, Any], art: dict[str, Any], data: bytes | None, path: Path) -> dict[str, Any]:
    from edgemp.targets import get_target

    target = get_target(art["target"])
    described = target.bundle_entry(report, data, path)
    entry = {"file": path.name, "format": target.format, "precision": described["precision"],
             "precision_meaning": described["precision_meaning"], "layout": described["layout"],
             "bytes": int(art["bytes"]), "sha256": art["sha256"], "ratio_to_fp32": art.get("ratio_to_fp32"),
             "inputs": described["inputs"], "outputs": described["outputs"]}
    if described.get("io_dtype"):
        entry["io_dtype"] = described["io_dtype"]
    if report.get("mixed"):
        entry["float_layers"] = list(report["mixed"].get("float_layers", []))
    return entry


def _runtime(device: str, files: list[str]) -> dict[str, Any]:
    if device == "ios":
        return {"engine": "Core ML", "notes": _NOTES[device]}
    if "build_engine.sh" in files:
        from edgemp.bundle import jetson

        return {"engine": "TensorRT (engines built on the device by build_engine.sh); onnxruntime otherwise",
                "harness": "harness_trt.py", "requirements": "requirements.txt", "run": "sh run.sh",
                "build": "sh build_engine.sh", "notes": jetson.NOTES}
    out: dict[str, Any] = {"engine": "LiteRT (ai_edge_litert / org.tensorflow.lite)", "notes": _NOTES[device]}
    if device in ("jetson", "linux-arm64"):
        out |= {"harness": "harness.py", "requirements": "requirements.txt", "run": "sh run.sh"}
    return out


def harness_python(venv_flags: str = "") -> str:
    """run.sh's first lines after the header: `py` is HARNESS_PYTHON, else a venv beside the bundle with the pinned
    runtime (requirements.txt), made on the first run."""
    return f"""set -eu
cd "$(dirname "$0")"
if [ -n "${{HARNESS_PYTHON:-}}" ]; then
    py="$HARNESS_PYTHON"
else
    if [ ! -x .venv/bin/python ]; then
        "${{PYTHON:-python3}}" -m venv {venv_flags + " " if venv_flags else ""}.venv
        .venv/bin/python -m pip install --quiet -r requirements.txt
    fi
    py=.venv/bin/python
fi
"""


def _run_sh(models: Sequence[str]) -> str:
    names = " ".join(models)
    return f"""#!/bin/sh
# Benchmark this bundle's model(s) on this device with edgemp's harness (numpy + LiteRT only).
# First run: a virtual environment beside the bundle with the pinned runtime (requirements.txt).
# HARNESS_PYTHON=/path/to/python uses an interpreter that already has the runtime instead.
# Extra arguments go to the harness (python3 harness.py --help): e.g. sh run.sh --threads 4 --time-budget 20
{harness_python()}exec "$py" harness.py {names} --threads "${{THREADS:-1}}" --json bench.json "$@"
"""


def _collect(device: str, reports: list[tuple[dict[str, Any], Path | None]],
             classes: Sequence[str] | None) -> tuple[dict[str, Path | bytes], list[dict[str, Any]]]:
    """Bundle-relative path -> source file (or bytes), and the manifest's model entries."""
    files: dict[str, Path | bytes] = {}
    models = []
    for rep, folder in reports:
        art, data, src = _artifact(rep, device, folder)
        entry = _model_entry(rep, art, data, src)
        if entry["file"] in files:
            raise InputError(f"two results would both ship as {entry['file']}; convert them with different --name")
        if data is None:  # an .mlpackage directory
            for f in sorted(p for p in src.rglob("*") if p.is_file()):
                files[f"{src.name}/{f.relative_to(src).as_posix()}"] = f
        else:
            files[src.name] = data
        models.append(entry)
    if classes:
        files["labels.txt"] = ("\n".join(classes) + "\n").encode()
    formats = {m["format"] for m in models}
    if "onnx" in formats:
        if formats != {"onnx"}:
            raise InputError("a jetson bundle holds ONNX models (TensorRT) or .tflite models (LiteRT on the CPU), not "
                             "both: convert every result with targets including 'onnx', or package them separately")
        from edgemp.bundle import jetson

        files |= jetson.files(models)
    elif device in ("jetson", "linux-arm64"):
        bench = resources.files("edgemp.bench")
        files["harness.py"] = bench.joinpath("harness.py").read_bytes()
        files["requirements.txt"] = resources.files("edgemp.bundle").joinpath("device_requirements.txt").read_bytes()
        files["run.sh"] = _run_sh([m["file"] for m in models]).encode()
    return files, models


def _digest(src: Path | bytes) -> tuple[str, int]:
    data = src if isinstance(src, bytes) else src.read_bytes()
    return hashlib.sha256(data).hexdigest(), len(data)


def build_manifest(device: str, reports: list[dict[str, Any]], models: list[dict[str, Any]],
                   files: dict[str, Path | bytes], classes: Sequence[str] | None) -> dict[str, Any]:
    first = reports[0]
    manifest = {
        "schema_version": SCHEMA_VERSION, "edgemp_version": __version__, "device": device,
        "default_model": models[0]["file"], "models": models,
        "preprocessing": app_preprocessing(first.get("preprocessing"), models[0]["inputs"][0]
                                           if models[0]["inputs"][0]["kind"] == "tensor" else None),
        "labels": {"file": "labels.txt", "classes": list(classes)} if classes else None,
        "validation": validation_summary(first, models[0]["format"]), "calibration": calibration_summary(first),
        "versions": {k: str(v) for k, v in (first.get("versions") or {}).items()},
        "runtime": _runtime(device, list(files)),
        "files": [{"path": p, "sha256": d, "bytes": n} for p in sorted(files) for d, n in [_digest(files[p])]],
    }
    validate_manifest(manifest)
    return manifest


@public
def package(results: Any, device: str, output_dir: str | Path = "dist/bundles", *, name: str | None = None,
            class_names: Sequence[str] | None = None, as_zip: bool = True, force: bool = False) -> Bundle:
    """Write one bundle for `device` from one or more conversion results (the first is the default model).

    Example:
        >>> r = edgemp.convert("model.keras", "int8", calibration="calibration_data/", output_dir="dist/")
        >>> b = edgemp.package(r, device="android")    # dist/bundles/model_int8_android.zip
        >>> b.manifest["models"][0]["inputs"][0]["quantization"]

    `results`: a ConvertResult, a Report, a *.report.json path, or a list of them. ios needs a Core ML artifact
    (convert with targets=("tflite", "coreml")); the others a .tflite. `class_names` (output order) default to the
    ones the first result recorded; they become labels.txt.
    """
    if device not in DEVICES:
        raise InputError(f"unknown device {device!r}; valid devices: {', '.join(DEVICES)}")
    P.path("output_dir", output_dir)
    P.text("name", name, none_ok=True)
    P.strings("class_names", class_names, none_ok=True)
    P.flag("as_zip", as_zip)
    P.flag("force", force)
    items = list(results) if isinstance(results, list | tuple) else [results]
    if not items:
        raise InputError("package() needs at least one conversion result")
    located = [_report_of(r) for r in items]
    reports = [r for r, _ in located]
    classes = list(class_names) if class_names is not None else reports[0].get("class_names")
    files, models = _collect(device, located, classes)
    if class_names is not None:
        _check_labels(list(class_names), models[0])
    manifest = build_manifest(device, reports, models, files, classes)
    out_dir = prepare_output_dir(output_dir)
    base = name or f"{Path(models[0]['file']).stem.removesuffix('.mlpackage')}_{device}"
    path = out_dir / (f"{base}.zip" if as_zip else base)
    if not as_zip:
        kept = place_tree(path, lambda p: _write_dir(p, files, manifest), force=force)
        return Bundle(path, device, manifest, kept)
    check_overwrite([path], force)
    if force and lstat_or_none(path) is not None:
        _check_replaceable_zip(path)
    write_atomic(path, _zip_bytes(files, manifest), overwrite=force)
    return Bundle(path, device, manifest)


def _check_labels(classes: list[str], model: dict[str, Any]) -> None:
    """Labels must name every class of the default model: as many as its class dimension (read from the artifact's
    output shapes: the last axis, or axis 1 of a channels-first 4-D output), one per line."""
    bad = [c for c in classes if not isinstance(c, str) or "\n" in c or "\r" in c or not c.strip()]
    if bad:
        raise InputError(f"class names must be non-empty single-line strings; got {bad[:3]!r}")
    counts: dict[int, str] = {}
    for o in model["outputs"]:
        shape = [int(d) for d in o.get("shape") or []]
        if len(shape) < 2:
            continue
        axes = [shape[-1]] + ([shape[1]] if len(shape) == 4 and model.get("layout") == "NCHW" else [])
        for n in axes:
            if n > 0:
                counts.setdefault(n, f"{o['name']!r} {shape}")
    if counts and len(classes) not in counts:
        found = " or ".join(f"{n} classes (output {where})" for n, where in counts.items())
        raise InputError(f"{len(classes)} label(s) given, but {model['file']} has {found}: give one class name per "
                         "class, in the model's output order (--labels: one per line).")


def _check_replaceable_zip(path: Path) -> None:
    """force replaces a .zip only if it is an edgemp bundle (a zip with a manifest.json following the schema)."""
    why = None
    try:
        with zipfile.ZipFile(path) as zf:
            validate_manifest(json.loads(zf.read("manifest.json")))
    except KeyError:
        why = "it has no manifest.json"
    except (zipfile.BadZipFile, OSError, ValueError, RecursionError, BundleIntegrityError) as exc:
        why = f"it is not an edgemp bundle archive ({str(exc)[:160]})"
    if why:
        raise OutputExistsError(f"refusing to replace {path}: {why}, and --force only replaces bundles edgemp wrote. "
                                "Choose another --name or output directory, or move the file away yourself.")


def _manifest_bytes(manifest: dict[str, Any]) -> bytes:
    return (json.dumps(manifest, indent=2) + "\n").encode()


def _zip_bytes(files: dict[str, Path | bytes], manifest: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for rel, src in [("manifest.json", _manifest_bytes(manifest))] + sorted(files.items()):
            info = zipfile.ZipInfo(rel, date_time=_ZIP_DATE)
            info.external_attr = ((0o755 if rel in _EXECUTABLE else 0o644) | stat.S_IFREG) << 16
            # models stay uncompressed: they are already dense, and Android memory-maps stored entries
            info.compress_type = zipfile.ZIP_STORED if rel.endswith(".tflite") else zipfile.ZIP_DEFLATED
            zf.writestr(info, src if isinstance(src, bytes) else src.read_bytes())
    return buf.getvalue()


def _write_dir(root: Path, files: dict[str, Path | bytes], manifest: dict[str, Any]) -> None:
    root.mkdir(parents=True)
    for rel, src in [("manifest.json", _manifest_bytes(manifest))] + sorted(files.items()):
        dest = root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(src if isinstance(src, bytes) else src.read_bytes())
        dest.chmod(0o755 if rel in _EXECUTABLE else 0o644)
