"""compact(): shorter names and shared constants, same model. Artifacts come from edgemp's own engine
(source -> float .tflite -> calibrate -> apply_recipe): fp32 and int8 of a litert-torch and a Keras model, and
the Keras model in fp16, dynamic-int8, int16x8 and a mixed recipe (float islands)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest
from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.interpreter import Interpreter, OpResolverType

from edgemp.targets.tflite.census import census
from edgemp.targets.tflite.compat import compact, has_external_buffers
from edgemp.config import Precision
from edgemp.quantize import apply_recipe, calibrate, float_rule, recipe_for
from edgemp.sources import load_source

RESOLVERS = [OpResolverType.AUTO, OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES]  # XNNPACK on / off


def _artifacts(source, calib: np.ndarray, more: bool = False) -> dict[str, bytes]:  # type: ignore[no-untyped-def]
    """fp32 and int8 as convert() makes them; with `more`, every other precision and a mixed recipe too."""
    float_tflite = source.to_float_tflite(1)
    name = source.input_specs()[0].name
    samples = [source.artifact_inputs({name: calib[i : i + 1]}) for i in range(len(calib))]
    stats = calibrate(float_tflite, samples)
    out = {"fp32": float_tflite, "int8": apply_recipe(float_tflite, recipe_for(Precision.INT8), stats)}
    if more:
        for p in (Precision.FP16, Precision.DYNAMIC_INT8, Precision.INT16X8):
            out[p.value] = apply_recipe(float_tflite, recipe_for(p), stats)
        mixed = recipe_for(Precision.INT8) + [float_rule(operation="FULLY_CONNECTED")]  # float islands
        out["mixed"] = apply_recipe(float_tflite, mixed, stats)
    return out


@pytest.fixture(scope="module")
def torch_artifacts() -> dict[str, bytes]:
    """mobilenet_v3_small at 64x64: litert-torch writes module paths of up to ~1 KB per tensor name."""
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.mobilenet_v3_small(weights=None)
    for mod in model.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.momentum = None  # cumulative average over the passes below
    g = torch.Generator().manual_seed(0)
    model.train()
    with torch.no_grad():  # random-init nets give ~1e-10 outputs until batch norm has statistics
        for _ in range(3):
            model(torch.rand(8, 3, 64, 64, generator=g))
    model.eval()
    source = load_source(model, example_input=torch.zeros(1, 3, 64, 64))
    return _artifacts(source, torch.rand(16, 3, 64, 64, generator=g).numpy())


@pytest.fixture(scope="module")
def keras_artifacts(model_path) -> dict[str, bytes]:  # type: ignore[no-untyped-def]
    from edgemp.demo import fashion_mnist

    x, _ = fashion_mnist("test")
    return _artifacts(load_source(model_path), x[:32], more=True)


@pytest.fixture(params=[pytest.param("torch-fp32", marks=pytest.mark.slow),  # a real torchvision architecture
                        pytest.param("torch-int8", marks=pytest.mark.slow),
                        "keras-fp32", "keras-int8", "keras-fp16", "keras-dynamic-int8", "keras-int16x8", "keras-mixed"])
def artifact(request) -> bytes:  # type: ignore[no-untyped-def]
    kind, prec = request.param.split("-", 1)
    return request.getfixturevalue(f"{kind}_artifacts")[prec]


def _inputs(model: bytes, n: int = 4) -> list[dict[str, np.ndarray]]:
    runner = Interpreter(model_content=model).get_signature_runner()
    rng = np.random.default_rng(0)
    feeds = []
    for _ in range(n):
        feed = {}
        for name, d in runner.get_input_details().items():
            if d["dtype"] == np.float32:
                feed[name] = rng.standard_normal(d["shape"]).astype(np.float32)
            else:
                info = np.iinfo(d["dtype"])
                feed[name] = rng.integers(info.min, info.max + 1, d["shape"]).astype(d["dtype"])
        feeds.append(feed)
    return feeds


def _run(model: bytes, feeds: list[dict[str, np.ndarray]], resolver: OpResolverType) -> list[dict[str, np.ndarray]]:
    itp = Interpreter(model_content=model, num_threads=1, experimental_op_resolver_type=resolver)
    runner = itp.get_signature_runner()
    return [{k: v.copy() for k, v in runner(**feed).items()} for feed in feeds]


def _signatures(model: bytes) -> dict[str, tuple[dict[str, int], dict[str, int]]]:
    """signature key -> (input name -> tensor index, output name -> tensor index)."""
    itp = Interpreter(model_content=model)
    out = {}
    for key in itp.get_signature_list():
        r = itp.get_signature_runner(key)
        out[key] = ({n: d["index"] for n, d in r.get_input_details().items()},
                    {n: d["index"] for n, d in r.get_output_details().items()})
    return out


@pytest.mark.parametrize("resolver", RESOLVERS, ids=["xnnpack", "builtin"])
def test_outputs_bit_identical(artifact: bytes, resolver: OpResolverType) -> None:
    small = compact(artifact)
    feeds = _inputs(artifact)
    for a, b in zip(_run(artifact, feeds, resolver), _run(small, feeds, resolver), strict=True):
        assert a.keys() == b.keys()
        for k in a:
            assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k


def test_smaller_same_signatures_same_census(artifact: bytes) -> None:
    small = compact(artifact)
    assert len(small) < len(artifact)
    assert _signatures(small) == _signatures(artifact)
    before, after = census(artifact), census(small)
    assert after.op_counts == before.op_counts and after.compute_counts == before.compute_counts
    assert after.inputs == before.inputs and after.outputs == before.outputs  # I/O tensor names kept
    assert after.weight_dtypes == before.weight_dtypes and after.tensor_dtypes == before.tensor_dtypes


def test_deterministic_and_idempotent(artifact: bytes) -> None:
    small = compact(artifact)
    assert compact(bytes(bytearray(artifact))) == small
    assert compact(small) == small


def test_same_bytes_in_another_process(keras_artifacts: dict[str, bytes], tmp_path) -> None:  # type: ignore[no-untyped-def]
    """No dependence on hash seeds or object identity: another interpreter process writes the same bytes."""
    src = tmp_path / "int8.tflite"
    src.write_bytes(keras_artifacts["int8"])
    code = ("import sys, hashlib; from edgemp.targets.tflite.compat import compact; "
            "print(hashlib.sha256(compact(open(sys.argv[1], 'rb').read())).hexdigest())")
    env = dict(os.environ, PYTHONHASHSEED="12345", PYTHONPATH=os.pathsep.join(sys.path))
    out = subprocess.run([sys.executable, "-c", code, str(src)], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == hashlib.sha256(compact(keras_artifacts["int8"])).hexdigest()


def test_names_short_unique_readable_and_buffers_aligned(artifact: bytes) -> None:
    small = compact(artifact)
    m = schema.ModelT.InitFromPackedBuf(small, 0)
    for sg in m.subgraphs:
        names = [t.name for t in sg.tensors]
        assert len(set(names)) == len(names)
        io = set(sg.inputs.tolist()) | set(sg.outputs.tolist())
        assert all(len(n) <= 64 for i, n in enumerate(names) if i not in io)
    root = schema.Model.GetRootAs(small, 0)
    for i in range(root.BuffersLength()):
        b = root.Buffers(i)
        if b.DataLength():
            assert b._tab.Vector(b._tab.Offset(4)) % 16 == 0, i  # noqa: SLF001 - the data vector's position


@pytest.mark.slow  # torch_artifacts (a torchvision net, ~30 s) is built for the slow params anyway
def test_torch_names_keep_the_module_path(torch_artifacts: dict[str, bytes]) -> None:
    for art in torch_artifacts.values():
        names = [t.name.decode() for t in schema.ModelT.InitFromPackedBuf(compact(art), 0).subgraphs[0].tensors]
        assert any(n.startswith("features.") for n in names), names[:20]
        assert not any("litert_torch." in n for n in names)


def test_keras_names_drop_the_doubled_scope(keras_artifacts: dict[str, bytes]) -> None:
    m = schema.ModelT.InitFromPackedBuf(compact(keras_artifacts["int8"]), 0)
    names = [t.name.decode() for t in m.subgraphs[0].tensors]
    assert any("/convolution#" in n for n in names), names


@pytest.mark.slow  # torch_artifacts (a torchvision net, ~30 s) is built for the slow params anyway
def test_identical_int8_constants_stored_once(torch_artifacts: dict[str, bytes]) -> None:
    """The quantizer writes one buffer per tensor; torchvision's zero conv biases become equal int32 buffers."""

    def distinct_and_total(model: bytes) -> tuple[int, int]:
        m = schema.ModelT.InitFromPackedBuf(model, 0)
        datas = [bytes(b.data) for b in m.buffers if b.data is not None and len(b.data)]
        return len(set(datas)), len(datas)

    distinct, total = distinct_and_total(torch_artifacts["int8"])
    assert distinct < total
    assert distinct_and_total(compact(torch_artifacts["int8"])) == (distinct, distinct)


def test_variable_tensors_keep_their_buffers(keras_artifacts: dict[str, bytes]) -> None:
    """Buffers of variable tensors are never shared, even when their bytes equal another constant's."""
    m = schema.ModelT.InitFromPackedBuf(keras_artifacts["int8"], 0)
    sg = m.subgraphs[0]
    # a variable holding a copy of the first constant, in a buffer of its own
    sizes = [0 if m.buffers[t.buffer].data is None else len(m.buffers[t.buffer].data) for t in sg.tensors]
    first = next(i for i, n in enumerate(sizes) if n)
    twin = schema.TensorT()
    twin.name, twin.type, twin.shape = b"twin", sg.tensors[first].type, sg.tensors[first].shape
    extra = schema.BufferT()
    extra.data = m.buffers[sg.tensors[first].buffer].data
    m.buffers.append(extra)
    twin.buffer, twin.isVariable = len(m.buffers) - 1, True
    sg.tensors.append(twin)
    import flatbuffers

    b = flatbuffers.Builder(0)
    b.Finish(m.Pack(b), file_identifier=b"TFL3")
    small = schema.ModelT.InitFromPackedBuf(compact(bytes(b.Output())), 0)
    t = small.subgraphs[0].tensors
    assert t[-1].buffer != t[first].buffer and bytes(small.buffers[t[-1].buffer].data) == bytes(extra.data)


def test_external_buffers_returned_unchanged(keras_artifacts: dict[str, bytes], monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import edgemp.quantize.engine as engine

    monkeypatch.setattr(engine, "inline_buffers", lambda model: model)  # the quantizer's own (offset) output
    raw = apply_recipe(keras_artifacts["fp32"], recipe_for(Precision.DYNAMIC_INT8))
    assert has_external_buffers(raw)
    assert compact(raw) is raw
