"""manifest.json: what an app or a device script needs to use a bundle without guessing, checked against a schema.

The schema (manifest.schema.json, shipped in the package) is the contract with app code: android_demo reads only
fields it defines, and every manifest edgemp writes or reads is validated against it.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

from edgemp.errors import BundleIntegrityError

SCHEMA_VERSION = "1.0"


@cache
def schema() -> dict[str, Any]:
    """The published JSON Schema of manifest.json (also `edgemp package --schema`)."""
    return json.loads(resources.files("edgemp.bundle").joinpath("manifest.schema.json").read_text())


def validate_manifest(manifest: dict[str, Any]) -> None:
    """Raise BundleIntegrityError listing every place the manifest breaks the schema."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema())
    errors = sorted(validator.iter_errors(manifest), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}" for e in errors[:10]]
        raise BundleIntegrityError("manifest.json does not follow the bundle schema " f"{SCHEMA_VERSION}: " + "; ".join(lines))


def tflite_tensors(census: Any, layout: str | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Inputs/outputs of a .tflite as the manifest lists them, read from the artifact itself."""
    def one(s: Any, is_input: bool) -> dict[str, Any]:
        quant = {"scale": s.scale, "zero_point": s.zero_point} if s.scale else None
        return {"name": s.name, "shape": list(s.shape), "dtype": s.dtype, "kind": "tensor",
                "layout": layout if is_input and len(s.shape) == 4 else None, "quantization": quant}

    return [one(s, True) for s in census.inputs], [one(s, False) for s in census.outputs]


def coreml_tensors(census: dict[str, Any], layout: str | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    def one(s: dict[str, Any], is_input: bool) -> dict[str, Any]:
        image = s.get("kind") == "image"
        return {"name": s["name"], "shape": [int(d) for d in s.get("shape") or []], "dtype": s["dtype"],
                "kind": "image" if image else "tensor",
                "layout": layout if is_input and not image and len(s.get("shape") or []) == 4 else None,
                "quantization": None}

    return [one(s, True) for s in census["inputs"]], [one(s, False) for s in census["outputs"]]


def app_preprocessing(pre: dict[str, Any] | None, first_input: dict[str, Any] | None) -> dict[str, Any] | None:
    """The calibration preprocessing made explicit (no 'auto', no missing size): what app code must reproduce."""
    if pre is None or first_input is None:
        return None
    shape = first_input["shape"]
    layout = first_input.get("layout") or pre.get("layout", "NHWC")  # the shipped model's layout (ONNX: NCHW)
    h, w, c = (shape[1], shape[2], shape[3]) if layout == "NHWC" else (shape[2], shape[3], shape[1])
    color = pre.get("color", "auto")
    if color == "auto":
        color = "grayscale" if c == 1 else "rgb"
    size = pre.get("size") or [h, w]
    return {"size": [int(size[0]), int(size[1])], "resize": pre.get("resize", "stretch"), "color": color,
            "scale": float(pre.get("scale", 1 / 255)), "mean": [float(v) for v in pre.get("mean", [0.0])],
            "std": [float(v) for v in pre.get("std", [1.0])], "layout": layout}


def validation_summary(report: dict[str, Any], fmt: str = "tflite") -> dict[str, Any]:
    """The host validation of the artifact the bundle ships (`fmt`: the ONNX target validates its own graph)."""
    v = ((report.get("onnx") or {}).get("validation") if fmt == "onnx" else report.get("validation")) or {}
    acc = v.get("accuracy")
    lat = v.get("latency") or {}
    return {
        "passed": bool(report.get("passed")),
        "data": str((v.get("data") or {}).get("source", "none")),
        "num_samples": (v.get("data") or {}).get("num_samples"),
        "accuracy": {k: acc.get(k) for k in ("top1", "float_top1", "drop", "top5", "float_top5") if k in acc} if acc else None,
        "outputs": [{k: o.get(k) for k in ("name", "cosine", "sqnr_db", "max_abs_error", "top1_agreement")}
                    for o in v.get("outputs", [])],
        "host_latency_ms": lat.get("median_ms"),
        "failures": [f"{c['name']}: {c['detail']}" for c in report.get("checks", []) if not c.get("passed")],
    }


def calibration_summary(report: dict[str, Any]) -> dict[str, Any] | None:
    cal = report.get("calibration")
    if not cal:
        return None
    return {"sha256": cal["sha256"], "num_samples": int(cal["num_samples"]),
            "num_files_skipped": int(cal.get("num_files_skipped", 0)), "source": cal.get("source"), "seed": cal.get("seed")}
