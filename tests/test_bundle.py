"""Device bundles for the trained test model: every device, manifests against the schema, safe reading, bad inputs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import jsonschema
import pytest

import edgemp
from edgemp import errors
from edgemp.targets.tflite.census import census
from edgemp.bundle import schema

from .conftest import CALIBRATION

REPO = Path(__file__).resolve().parents[1]
TFLITE_DEVICES = ["android", "jetson", "linux-arm64"]


@pytest.fixture(scope="module")
def coreml_result(model_path: Path, small_heldout, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    pytest.importorskip("coremltools")
    x, y = small_heldout
    return edgemp.convert(model_path, "int8", CALIBRATION, (x[:300], y[:300]), tmp_path_factory.mktemp("cm"),
                          targets=("tflite", "coreml"), class_names=list(edgemp.demo.CLASSES), latency_runs=2,
                          progress=False)


def _check_manifest(m: dict, report: dict) -> None:  # type: ignore[type-arg]
    jsonschema.Draft202012Validator(schema()).validate(m)  # the published schema, independently of edgemp's checks
    assert m["schema_version"] == "1.0" and m["edgemp_version"] == edgemp.__version__
    assert m["calibration"]["sha256"] == report["calibration"]["sha256"] and m["calibration"]["num_samples"] == 200
    assert m["validation"]["passed"] is report["passed"] and m["validation"]["outputs"][0]["cosine"] > 0.99
    assert m["versions"]["ai-edge-litert"] and m["versions"]["python"]
    assert m["preprocessing"] == {"size": [28, 28], "resize": "stretch", "color": "grayscale", "scale": 1 / 255,
                                  "mean": [0.0], "std": [1.0], "layout": "NHWC"}


@pytest.mark.parametrize("device", TFLITE_DEVICES)
def test_tflite_device_bundles(conversions, device: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    int8, fp16 = conversions("int8"), conversions("fp16")
    b = edgemp.package([int8, fp16.artifacts["report_json"]], device, tmp_path, class_names=edgemp.demo.CLASSES)
    assert b.path == tmp_path / f"{int8.artifacts['tflite'].stem}_{device}.zip"
    v = edgemp.read_bundle(b.path)  # verified: schema, checksums, nothing unlisted
    m = v.manifest
    _check_manifest(m, int8.report.to_dict())
    assert m["device"] == device and m["default_model"] == int8.artifacts["tflite"].name
    assert [x["precision"] for x in m["models"]] == ["int8", "fp16"]
    model = v.default_model
    c = census(int8.artifacts["tflite"].read_bytes())
    assert model["inputs"][0] == {"name": c.inputs[0].name, "shape": [1, 28, 28, 1], "dtype": "int8", "kind": "tensor",
                                  "layout": "NHWC", "quantization": {"scale": c.inputs[0].scale,
                                                                     "zero_point": c.inputs[0].zero_point}}
    assert model["outputs"][0]["quantization"]["scale"] == c.outputs[0].scale and model["io_dtype"] == "int8"
    assert m["models"][1]["inputs"][0]["quantization"] is None and m["models"][1]["inputs"][0]["dtype"] == "float32"
    assert m["labels"]["classes"] == list(edgemp.demo.CLASSES)
    with zipfile.ZipFile(b.path) as zf:
        names = set(zf.namelist())
        assert zf.getinfo(model["file"]).compress_type == zipfile.ZIP_STORED  # memory-mappable in an APK
        assert zf.read("labels.txt").decode().splitlines() == list(edgemp.demo.CLASSES)
        common = {"manifest.json", "labels.txt", int8.artifacts["tflite"].name, fp16.artifacts["tflite"].name}
        if device == "android":
            assert names == common
        else:
            assert names == common | {"harness.py", "requirements.txt", "run.sh"}
            assert zf.read("harness.py") == (REPO / "edgemp" / "bench" / "harness.py").read_bytes()
            assert (zf.getinfo("run.sh").external_attr >> 16) & 0o111
            reqs = [ln for ln in zf.read("requirements.txt").decode().splitlines() if ln and not ln.startswith("#")]
            assert reqs and all("==" in ln for ln in reqs) and any(ln.startswith("ai-edge-litert==2.3.0") for ln in reqs)
            assert m["runtime"]["run"] == "sh run.sh"


def test_ios_bundle_holds_the_mlpackage(coreml_result, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    b = edgemp.package(coreml_result, "ios", tmp_path)
    m = edgemp.read_bundle(b.path).manifest
    _check_manifest(m, coreml_result.report.to_dict())
    model = m["models"][0]
    pkg = Path(coreml_result.artifacts["coreml"])
    assert model["format"] == "mlpackage" and model["file"] == pkg.name and model["precision"] == "int8-weights"
    assert "not TFLite's fully-integer int8" in model["precision_meaning"]
    assert model["inputs"][0]["shape"] == [1, 28, 28, 1] and model["inputs"][0]["quantization"] is None
    with zipfile.ZipFile(b.path) as zf:
        inside = {n for n in zf.namelist() if n.startswith(pkg.name + "/")}
    assert inside == {f"{pkg.name}/{p.relative_to(pkg).as_posix()}" for p in pkg.rglob("*") if p.is_file()}
    assert f"{pkg.name}/Manifest.json" in inside and not any(n.endswith(".tflite") for n in inside)
    d = edgemp.package(coreml_result, "ios", tmp_path, as_zip=False)  # a directory bundle verifies the same way
    assert edgemp.read_bundle(d.path).manifest == m and (d.path / pkg.name / "Manifest.json").exists()


def test_bundles_are_deterministic_and_not_overwritten_without_force(conversions, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    r = conversions("int8")
    first = edgemp.package(r, "android", tmp_path).path.read_bytes()
    with pytest.raises(errors.OutputExistsError, match="--force"):
        edgemp.package(r, "android", tmp_path)
    assert edgemp.package(r, "android", tmp_path, force=True).path.read_bytes() == first


def test_run_sh_benchmarks_the_unpacked_bundle(conversions, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    b = edgemp.package(conversions("int8"), "linux-arm64", tmp_path)
    root = edgemp.unpack_bundle(b.path, tmp_path / "device").path
    proc = subprocess.run(["sh", str(root / "run.sh"), "--runs", "3", "--warmup", "1"], capture_output=True, text=True,
                          env={"HARNESS_PYTHON": sys.executable, "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    bench = json.loads((root / "bench.json").read_text())
    assert bench["results"][0]["model"] == conversions("int8").artifacts["tflite"].name
    assert bench["results"][0]["latency_ms"]["count"] == 3


def _rewrite(src: Path, dest: Path, change: dict) -> Path:  # type: ignore[type-arg]
    """Copy a bundle zip, replacing (bytes), dropping (None) or adding members."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dest, "w") as zout:
        for info in zin.infolist():
            if info.filename in change:
                if change[info.filename] is not None:
                    zout.writestr(info, change[info.filename])
                continue
            zout.writestr(info, zin.read(info))
        for name, data in change.items():
            if name not in zin.namelist() and data is not None:
                zout.writestr(name, data)
    return dest


def test_tampered_bundles_are_refused(conversions, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    b = edgemp.package(conversions("int8"), "android", tmp_path)
    model = b.manifest["default_model"]
    with zipfile.ZipFile(b.path) as zf:
        data, manifest = bytearray(zf.read(model)), json.loads(zf.read("manifest.json"))
    data[len(data) // 2] ^= 0xFF
    cases = {
        "checksum mismatch for " + model: {model: bytes(data)},
        "missing": {model: None},
        "not listed in the manifest": {"extra.bin": b"hello"},
        "does not follow the bundle schema": {"manifest.json": json.dumps({**manifest, "device": "toaster"})},
        "not valid JSON": {"manifest.json": b"{not json"},
    }
    for i, (message, change) in enumerate(cases.items()):
        bad = _rewrite(b.path, tmp_path / f"bad{i}.zip", change)
        with pytest.raises(errors.BundleIntegrityError, match=message):
            edgemp.read_bundle(bad)
        with pytest.raises(errors.BundleIntegrityError):
            edgemp.unpack_bundle(bad, tmp_path / f"out{i}")
        assert not (tmp_path / f"out{i}").exists()
    out = subprocess.run([sys.executable, "-m", "edgemp", "verify", str(tmp_path / "bad0.zip")], capture_output=True, text=True)
    assert out.returncode == 2 and "checksum mismatch" in out.stderr
    d = edgemp.package(conversions("int8"), "android", tmp_path / "dir", as_zip=False)
    (d.path / "labels.txt").write_text("tampered\n")
    with pytest.raises(errors.BundleIntegrityError, match="labels.txt"):
        edgemp.read_bundle(d.path)


def test_unsafe_archives_are_refused(conversions, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    b = edgemp.package(conversions("int8"), "android", tmp_path)
    slip = _rewrite(b.path, tmp_path / "slip.zip", {"../../evil.sh": b"rm -rf ~"})
    absolute = _rewrite(b.path, tmp_path / "abs.zip", {"/etc/evil": b"x"})
    link = tmp_path / "link.zip"
    shutil.copy(b.path, link)
    with zipfile.ZipFile(link, "a") as zf:
        info = zipfile.ZipInfo("labels_link.txt")
        info.external_attr = (0o120777) << 16  # a symlink entry
        zf.writestr(info, "/etc/passwd")
    bomb = tmp_path / "bomb.zip"
    shutil.copy(b.path, bomb)
    with zipfile.ZipFile(bomb, "a", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zeros.bin", b"\0" * (8 * 2**20))
    for path, message in ((slip, "zip-slip"), (absolute, "zip-slip"), (link, "symbolic link"), (bomb, "zip bomb")):
        with pytest.raises(errors.UnsafeBundleError, match=message):
            edgemp.read_bundle(path)
        with pytest.raises(errors.UnsafeBundleError):
            edgemp.unpack_bundle(path, tmp_path / "x" / "out")
    assert not (tmp_path / "x").exists() and not (tmp_path.parent / "evil.sh").exists()
    with pytest.raises(errors.UnsafeBundleError, match="more than"):
        edgemp.read_bundle(b.path, max_bytes=1000)


def test_package_bad_inputs(conversions, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    r = conversions("int8")
    with pytest.raises(errors.MissingArtifactError, match=r"no Core ML artifact for ios.*targets=\(\"tflite\", \"coreml\"\)"):
        edgemp.package(r, "ios", tmp_path)
    with pytest.raises(errors.InputError, match="unknown device 'toaster'.*android, ios, jetson, linux-arm64"):
        edgemp.package(r, "toaster", tmp_path)
    with pytest.raises(errors.ModelLoadError, match="does not exist"):
        edgemp.package(tmp_path / "nope.report.json", "android", tmp_path)
    (tmp_path / "notes.json").write_text('{"hello": 1}')
    with pytest.raises(errors.InputError, match="not an edgemp conversion report"):
        edgemp.package(tmp_path / "notes.json", "android", tmp_path)
    moved = tmp_path / "copy"
    moved.mkdir()
    model = moved / r.artifacts["tflite"].name
    model.write_bytes(r.artifacts["tflite"].read_bytes()[:-8] + b"\0" * 8)
    report = r.report.to_dict()
    report["artifacts"][0]["path"] = str(model)
    with pytest.raises(errors.BundleIntegrityError, match="changed after conversion"):
        edgemp.package(report, "android", tmp_path)
    assert not list(tmp_path.glob("*.zip"))


def test_cli_package_verify_unpack(conversions, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    report = conversions("int8").artifacts["report_json"]
    cli = [sys.executable, "-m", "edgemp"]
    out = subprocess.run(cli + ["package", str(report), "-d", "android", "-d", "jetson", "-o", str(tmp_path)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    zips = sorted(tmp_path.glob("*.zip"))
    assert [z.stem.rsplit("_", 1)[-1] for z in zips] == ["android", "jetson"]
    out = subprocess.run(cli + ["verify", str(zips[0])], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("OK ") and "validation passed" in out.stdout
    out = subprocess.run(cli + ["unpack", str(zips[1]), "-o", str(tmp_path / "jetson")], capture_output=True, text=True)
    assert out.returncode == 0 and (tmp_path / "jetson" / "run.sh").exists()
    out = subprocess.run(cli + ["package", str(report), "-d", "android", "-o", str(tmp_path)], capture_output=True, text=True)
    assert out.returncode == 2 and "--force" in out.stderr
    out = subprocess.run(cli + ["package", str(report), "-d", "ios", "-o", str(tmp_path)], capture_output=True, text=True)
    assert out.returncode == 2 and "Core ML" in out.stderr
    out = subprocess.run(cli + ["package", "--schema"], capture_output=True, text=True)
    assert out.returncode == 0 and json.loads(out.stdout)["title"] == "edgemp device bundle manifest"
