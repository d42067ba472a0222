"""android_demo cannot be built here (no Android SDK offline), so its contract with edgemp is tested instead:

- every manifest field the app reads (ManifestReader.kt, one parse function per schema object) exists in the
  published schema and in a real bundle of the trained test model;
- the app's own Kotlin (ManifestReader.kt + InputEncoder.kt, plain Kotlin over Android's org.json) compiled and run
  on the JVM turns a bundle's manifest and a picture into exactly the input bytes edgemp calibrated and validated with.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import edgemp
from edgemp.bundle import schema
from edgemp.calibration.images import load_image, resolve
from edgemp.config import Preprocessing
from edgemp.validation.runtime import IODetail

pytestmark = pytest.mark.slow  # compiles and runs the app's Kotlin on the JVM against real bundles

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "android_demo" / "app"
KOTLIN = APP / "src" / "main" / "kotlin" / "dev" / "edgemp" / "demo"
VAL = REPO / "examples" / "data" / "fashion_mnist_val"
ANDROID_JSON = Path("/usr/share/java/com.android.json.jar")  # Debian libandroid-json-java: Android's org.json


@pytest.fixture(scope="module")
def bundle(conversions, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    out = tmp_path_factory.mktemp("android_bundles")
    return {p: edgemp.package(conversions(p), "android", out, class_names=edgemp.demo.CLASSES) for p in ("int8", "fp16")}


def _functions(source: str) -> dict[str, str]:
    """name -> body of every `fun name(o: JSONObject)` / `fun parse(text: String)` in the reader."""
    starts = [(m.group(1), m.start()) for m in re.finditer(r"\n    (?:private )?fun (\w+)\(", source)]
    bodies = {name: source[s:e] for (name, s), (_, e) in zip(starts, starts[1:] + [("", len(source))])}
    return {n: b for n, b in bodies.items() if re.search(r"fun \w+\((?:o: JSONObject|text: String)\)", b)}


def _keys(body: str) -> set[str]:
    return set(re.findall(r"\b(?:o|root)\.(?:get\w*|opt\w*|isNull|has)\(\"([a-z_0-9]+)\"\)", body))


def test_every_field_the_app_reads_is_in_the_schema_and_a_real_bundle(bundle: dict[str, Any]) -> None:
    s = schema()
    d = s["$defs"]
    m = bundle["int8"].manifest
    tensors = [t for model in m["models"] for t in model["inputs"] + model["outputs"]]
    where: dict[str, tuple[dict[str, Any], list[dict[str, Any]]]] = {
        "parse": (s, [m]),
        "parseModel": (d["model"], m["models"]),
        "parseTensor": (d["tensor"], tensors),
        "parseQuantization": (d["tensor"]["properties"]["quantization"]["oneOf"][1],
                              [t["quantization"] for t in tensors if t["quantization"]]),
        "parsePreprocessing": (d["preprocessing"], [m["preprocessing"]]),
        "parseLabels": (s["properties"]["labels"]["oneOf"][1], [m["labels"]]),
        "parseValidation": (d["validation"], [m["validation"]]),
        "parseAccuracy": (d["validation"]["properties"]["accuracy"]["oneOf"][1], [m["validation"]["accuracy"]]),
    }
    functions = _functions((KOTLIN / "ManifestReader.kt").read_text())
    assert set(functions) == set(where), "map every parse function of ManifestReader.kt to its schema object"
    read = 0
    for name, body in functions.items():
        node, objects = where[name]
        assert objects and all(objects), f"the real bundle has no object for {name}"
        for key in _keys(body):
            declared = key in node.get("properties", {}) or node.get("additionalProperties") not in (False, None)
            assert declared, f"{name} reads {key!r}, which the schema does not define"
            assert all(key in o for o in objects), f"{name} reads {key!r}, missing from the real bundle"
            read += 1
    assert read >= 25  # the reader really reads the manifest (not a parser that matches nothing)
    # what the app opens is where the bundle and the README put it
    main = (KOTLIN / "MainActivity.kt").read_text() + (KOTLIN / "Classifier.kt").read_text()
    assert '"edgemp/manifest.json"' in main and '"edgemp/" + manifest.model.file' in main
    gradle = (APP / "build.gradle.kts").read_text()
    assert 'noCompress += "tflite"' in gradle and "com.google.ai.edge.litert:litert:" in gradle
    readme = (REPO / "android_demo" / "README.md").read_text()
    assert "edgemp unpack" in readme and "app/src/main/assets/edgemp" in readme


def _kotlin_check_jar() -> Path:
    """Compile the app's plain-Kotlin files with the JVM driver once per source version (cached)."""
    kotlinc = shutil.which("kotlinc")
    if kotlinc is None or not ANDROID_JSON.exists():
        pytest.skip("kotlinc and Android's org.json (Debian packages kotlin, libandroid-json-java) are not installed; "
                    "scripts/env.sh installs them when it can use apt-get")
    sources = [KOTLIN / "ManifestReader.kt", KOTLIN / "InputEncoder.kt", REPO / "android_demo" / "jvm-check" / "BundleCheck.kt"]
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sources)).hexdigest()[:16]
    jar = Path(os.environ.get("EDGEMP_CACHE", Path.home() / ".cache" / "edgemp")) / "kotlin-check" / f"{digest}.jar"
    if not jar.exists():
        jar.parent.mkdir(parents=True, exist_ok=True)
        tmp = jar.with_suffix(".tmp.jar")
        proc = subprocess.run([kotlinc, *map(str, sources), "-cp", str(ANDROID_JSON), "-d", str(tmp)],
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        tmp.replace(jar)
    return jar


def _run_app_code(jar: Path, manifest: Path, image: Path, out: Path) -> str:
    cp = os.pathsep.join([str(jar), str(ANDROID_JSON), "/usr/share/java/kotlin-stdlib.jar"])
    proc = subprocess.run(["java", "-cp", cp, "BundleCheckKt", str(manifest), str(image), str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _python_input(image: Path, pre: dict[str, Any], tensor: dict[str, Any]) -> bytes:
    """What edgemp fed the model for this picture: calibration preprocessing, then the Runner's quantization."""
    spec = Preprocessing(size=tuple(pre["size"]), resize=pre["resize"], color=pre["color"], scale=pre["scale"],
                         mean=tuple(pre["mean"]), std=tuple(pre["std"]), layout=pre["layout"])
    x = load_image(image, resolve(spec, tuple(tensor["shape"])))[None]
    q = tensor["quantization"]
    detail = IODetail(tensor["name"], np.dtype(tensor["dtype"]), q["scale"] if q else 0.0, q["zero_point"] if q else 0)
    return detail.quantize(x).astype(np.dtype(tensor["dtype"]).newbyteorder("=")).tobytes()


@pytest.mark.parametrize("precision", ["int8", "fp16"])
def test_app_code_encodes_the_input_edgemp_validated(bundle: dict[str, Any], precision: str, tmp_path: Path) -> None:
    jar = _kotlin_check_jar()
    with zipfile.ZipFile(bundle[precision].path) as zf:
        (tmp_path / "manifest.json").write_bytes(zf.read("manifest.json"))
    m = json.loads((tmp_path / "manifest.json").read_text())
    tensor = m["models"][0]["inputs"][0]
    images = sorted(VAL.rglob("*.png"))[::97][:6]
    for image in images:
        out = _run_app_code(jar, tmp_path / "manifest.json", image, tmp_path / "input.bin")
        assert f"precision={precision}" in out and "labels=10" in out and "passed=true" in out
        assert (tmp_path / "input.bin").read_bytes() == _python_input(image, m["preprocessing"], tensor), image
    if precision == "int8":
        assert tensor["dtype"] == "int8" and len((tmp_path / "input.bin").read_bytes()) == 28 * 28


@pytest.mark.parametrize("layout,dtype", [("NHWC", "float32"), ("NCHW", "int8")])
def test_app_code_rgb_mean_std_layouts(bundle: dict[str, Any], layout: str, dtype: str, tmp_path: Path) -> None:
    """Color models: RGB/BGR order, per-channel mean/std, both layouts, quantized input (a manifest variant)."""
    from PIL import Image

    jar = _kotlin_check_jar()
    rng = np.random.default_rng(7)
    image = tmp_path / "photo.png"
    Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8), "RGB").save(image)
    m = json.loads(json.dumps(bundle["int8"].manifest))
    shape = [1, 24, 32, 3] if layout == "NHWC" else [1, 3, 24, 32]
    tensor = m["models"][0]["inputs"][0] | {"shape": shape, "dtype": dtype,
                                            "quantization": {"scale": 0.0173, "zero_point": -3} if dtype == "int8" else None}
    m["models"][0]["inputs"][0] = tensor
    for color in ("rgb", "bgr"):
        m["preprocessing"] = {"size": [24, 32], "resize": "stretch", "color": color, "scale": 1 / 255,
                              "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "layout": layout}
        (tmp_path / "manifest.json").write_text(json.dumps(m))
        _run_app_code(jar, tmp_path / "manifest.json", image, tmp_path / "input.bin")
        assert (tmp_path / "input.bin").read_bytes() == _python_input(image, m["preprocessing"], tensor), color
