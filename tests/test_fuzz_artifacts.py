"""Property-based tests on what edgemp reads from disk: .tflite flatbuffers (truncated, bit-flipped) and device
bundles (random members and manifests). Every outcome is a result or an EdgempError — never another exception,
never a crash of the interpreter process, never a partial file."""

from __future__ import annotations

import io
import json
import zipfile
from functools import cache
from pathlib import Path
from typing import Any

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import edgemp  # noqa: E402
from edgemp import errors  # noqa: E402

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@cache
def _real_artifacts() -> tuple[bytes, bytes]:
    """A float and an int8 .tflite of a small real model (built once per process)."""
    import keras
    import numpy as np

    from edgemp.quantize import apply_recipe, calibrate, recipe_for
    from edgemp.config import Precision
    from edgemp.sources import load_source

    inp = keras.Input((8, 8, 1), name="image")
    x = keras.layers.Conv2D(4, 3, activation="relu")(inp)
    model = keras.Model(inp, keras.layers.Dense(3)(keras.layers.Flatten()(x)), name="fuzzed")
    src = load_source(model)
    fp32 = src.to_float_tflite(1)
    cal = [{"image": np.random.default_rng(i).random((1, 8, 8, 1), dtype=np.float32)} for i in range(8)]
    int8 = apply_recipe(fp32, recipe_for(Precision.INT8), calibrate(fp32, cal))
    return fp32, int8


def _census_or_typed(data: bytes) -> None:
    from edgemp.targets.tflite.census import census

    try:
        c = census(data)
    except errors.EdgempError:
        return
    assert c.size_bytes == len(data)


@SETTINGS
@given(which=st.sampled_from([0, 1]), cut=st.floats(0.0, 1.0))
def test_truncated_tflite_gives_a_census_or_a_typed_error(which: int, cut: float) -> None:
    model = _real_artifacts()[which]
    _census_or_typed(model[: int(len(model) * cut)])


@SETTINGS
@given(which=st.sampled_from([0, 1]), flips=st.lists(st.tuples(st.floats(0.0, 0.999), st.integers(0, 7)),
                                                     min_size=1, max_size=12))
def test_bit_flipped_tflite_gives_a_census_or_a_typed_error(which: int, flips: list[tuple[float, int]]) -> None:
    data = bytearray(_real_artifacts()[which])
    for where, bit in flips:
        data[int(where * len(data))] ^= 1 << bit
    _census_or_typed(bytes(data))


@SETTINGS
@given(junk=st.binary(min_size=0, max_size=256))
def test_random_bytes_are_not_a_tflite(junk: bytes, tmp_path_factory: pytest.TempPathFactory) -> None:
    path = tmp_path_factory.mktemp("junk") / "m.tflite"
    path.write_bytes(junk)
    try:
        edgemp.inspect_model(path)
    except errors.EdgempError:
        pass


@cache
def _real_bundle(root: str) -> Path:
    import keras

    inp = keras.Input((6,), name="x")
    model = keras.Model(inp, keras.layers.Dense(3)(inp), name="bundled")
    r = edgemp.convert(model, "fp32", output_dir=Path(root) / "conv", latency_runs=0)
    return edgemp.package(r, "linux-arm64", Path(root) / "bundles").path


def _members(bundle: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(bundle) as z:
        return {n: z.read(n) for n in z.namelist()}


def _zip(members: dict[str, bytes]) -> bytes:
    from hypothesis import assume

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members.items():
            try:
                z.writestr(name, data)
            except (IndexError, ValueError):
                assume(False)  # a name zipfile itself cannot write: not a bundle anyone can make
    return buf.getvalue()


def _read_or_typed(path: Path, dest: Path) -> None:
    try:
        b = edgemp.read_bundle(path)
    except errors.EdgempError:
        assert not dest.exists()
        return
    assert b.manifest["files"]
    try:
        edgemp.unpack_bundle(path, dest)
    except errors.EdgempError:
        assert not dest.exists() or not any(dest.iterdir())  # nothing half-written


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
                    max_leaves=20)


@SETTINGS
@given(manifest=JSON)
def test_random_manifest_is_refused_with_a_typed_error(manifest: Any, tmp_path_factory: pytest.TempPathFactory) -> None:
    root = tmp_path_factory.mktemp("b")
    members = _members(_real_bundle(str(tmp_path_factory.getbasetemp() / "real")))
    members["manifest.json"] = json.dumps(manifest, allow_nan=True).encode()
    path = root / "bundle.zip"
    path.write_bytes(_zip(members))
    _read_or_typed(path, root / "out")


@SETTINGS
@given(key=st.sampled_from(["schema_version", "device", "files", "models", "default_model", "validation"]),
       value=JSON)
def test_one_manifest_field_changed_is_read_or_refused(key: str, value: Any,
                                                       tmp_path_factory: pytest.TempPathFactory) -> None:
    root = tmp_path_factory.mktemp("b")
    members = _members(_real_bundle(str(tmp_path_factory.getbasetemp() / "real")))
    manifest = json.loads(members["manifest.json"])
    manifest[key] = value
    members["manifest.json"] = json.dumps(manifest, allow_nan=True).encode()
    path = root / "bundle.zip"
    path.write_bytes(_zip(members))
    _read_or_typed(path, root / "out")


@SETTINGS
@given(name=st.text(min_size=1, max_size=40), data=st.binary(max_size=64), drop=st.booleans())
def test_random_members_are_read_or_refused(name: str, data: bytes, drop: bool,
                                            tmp_path_factory: pytest.TempPathFactory) -> None:
    root = tmp_path_factory.mktemp("b")
    members = _members(_real_bundle(str(tmp_path_factory.getbasetemp() / "real")))
    if drop:
        members.pop(sorted(n for n in members if n != "manifest.json")[0])
    members[name] = data
    path = root / "bundle.zip"
    path.write_bytes(_zip(members))
    _read_or_typed(path, root / "out")


@SETTINGS
@given(cut=st.floats(0.0, 0.999))
def test_truncated_bundle_is_refused(cut: float, tmp_path_factory: pytest.TempPathFactory) -> None:
    root = tmp_path_factory.mktemp("b")
    data = _real_bundle(str(tmp_path_factory.getbasetemp() / "real")).read_bytes()
    path = root / "bundle.zip"
    path.write_bytes(data[: int(len(data) * cut)])
    _read_or_typed(path, root / "out")
