"""Model families beyond CNN classifiers: structured outputs, attention, LayerNorm, recurrent layers, dense and
detection outputs — converted, fully integer where LiteRT can, judged with the right metric."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import edgemp
from edgemp import errors
from edgemp.validation.runtime import Runner

from . import models as M

torch = pytest.importorskip("torch")


def _tokens() -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray]]:
    x, y = M.digit_tokens()
    return x[:200], y, (x[M.N_TRAIN:], y[M.N_TRAIN:])


def _int8_only(report: edgemp.validation.Report) -> bool:  # type: ignore[name-defined]
    return set(report["census"]["compute_counts"]) == {"int8"}


# -- structured outputs -----------------------------------------------------------------------------------
@pytest.mark.slow
def test_torch_dict_outputs_keep_their_names_order_and_get_miou(tmp_path: Path) -> None:
    seg = M.torch_segmenter()
    x, labels = M.segmentation_data()
    r = edgemp.convert(seg, "int8", calibration=x[:200], validation=(x[M.N_TRAIN:], labels[M.N_TRAIN:]),
                       example_input=torch.from_numpy(x[:1]), output_dir=tmp_path, latency_runs=2)
    assert r.passed and _int8_only(r.report)
    runner = Runner(r.artifacts["tflite"].read_bytes())
    assert {d.name for d in runner.outputs} == {"out", "aux"}  # the source's names, not output_0/1
    v = r.report["validation"]
    assert [o["name"] for o in v["outputs"]] == ["out", "aux"]  # the source's order, not sorted
    for o in v["outputs"]:  # agreement per pixel along the 11 classes, not one argmax over H*W*C values
        assert o["task"] == "classification" and o["num_classes"] == 11 and o["shape"] == [16, 16, 11]
        assert o["top1_agreement"] > 0.9
    acc = v["accuracy"]
    assert acc["task"] == "segmentation" and acc["output"] == "out" and acc["ignore_index"] == 255
    assert acc["float_miou"] > 0.15 and abs(acc["drop"]) <= 0.01
    assert v["fidelity_gate"]["outputs"] == ["aux"]  # labels judge "out"; "aux" must keep the fidelity floor
    with torch.no_grad():  # the artifact's "out" is the module's "out" (NHWC), not its "aux"
        ref = seg(torch.from_numpy(x[:4]))
    lite = Runner(r.artifacts["tflite"].read_bytes(), output_order=["out", "aux"]).run(
        {"args_0": np.ascontiguousarray(x[:4].transpose(0, 2, 3, 1))})
    for got, name in zip(lite, ("out", "aux"), strict=True):
        want = ref[name].numpy().transpose(0, 2, 3, 1)
        assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.99


def test_nested_tuple_outputs_are_named_by_position(tmp_path: Path) -> None:
    class Nested(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
            return x * 2, (x.sum(-1), x - 1)

    x = np.random.default_rng(0).random((8, 5), dtype=np.float32)
    r = edgemp.convert(Nested().eval(), "fp32", example_input=torch.from_numpy(x[:1]), validation=x, output_dir=tmp_path,
                       latency_runs=1)
    assert [o["name"] for o in r.report["validation"]["outputs"]] == ["output_0", "output_1_0", "output_1_1"]
    assert r.passed and all(o["max_abs_error"] < 1e-5 for o in r.report["validation"]["outputs"])


def test_keras_dict_outputs_line_up_by_name(tmp_path: Path) -> None:
    import keras

    inp = keras.Input((6,), name="features")
    h = keras.layers.Dense(8, activation="relu")(inp)
    out = {"scores": keras.layers.Dense(3)(h), "boxes": keras.layers.Dense(4)(h)}  # insertion order is not sorted
    model = keras.Model(inp, out)
    x = np.random.default_rng(0).random((16, 6), dtype=np.float32)
    r = edgemp.convert(model, "fp32", validation=x, output_dir=tmp_path, latency_runs=1)
    rows = r.report["validation"]["outputs"]
    assert [o["name"] for o in rows] == ["scores", "boxes"] and [o["shape"] for o in rows] == [[3], [4]]
    assert rows[1]["task"] == "regression" and rows[0]["task"] == "classification"
    assert r.passed and all(o["max_abs_error"] < 1e-5 for o in rows)


def test_keras_nested_outputs_are_refused_with_the_fix(tmp_path: Path) -> None:
    import keras

    inp = keras.Input((6,))
    model = keras.Model(inp, {"det": [keras.layers.Dense(4)(inp), keras.layers.Dense(3)(inp)], "seg": inp})
    with pytest.raises(errors.UnsupportedModelError, match="flat dict"):
        edgemp.convert(model, "fp32", output_dir=tmp_path)
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


# -- attention, LayerNorm, recurrent layers ----------------------------------------------------------------
@pytest.mark.slow
def test_torch_attention_is_fully_integer_and_weights_are_only_constants(tmp_path: Path) -> None:
    cal, _, val = _tokens()
    r = edgemp.convert(M.torch_transformer(), "int8", calibration=cal, validation=val,
                       example_input=torch.from_numpy(cal[:1]), output_dir=tmp_path, latency_runs=2)
    assert r.passed and _int8_only(r.report)
    ops = r.report["census"]["op_counts"]
    assert ops["BATCH_MATMUL"] == 2  # Q·Kᵀ and scores·V: two activations, no weight among their operands
    assert r.report["census"]["per_channel_weights"] == {"per_channel": ops["FULLY_CONNECTED"]}
    assert r.report["validation"]["accuracy"]["drop"] <= 0.01


@pytest.mark.slow
def test_a_fully_connected_bias_of_rank_4_is_flattened_before_quantization() -> None:
    """The converter folds ConvNeXt's LayerScale (gamma * Linear(x)) into the Linear with a bias of shape (1, 1, 1, C)
    (found on a trained tiny ConvNeXt); the quantizer gave that bias C scales along its first dimension, of size 1,
    and LiteRT refused the int8 model ("num_scales must be 1 ... but got C"). Flattened to (C,) first, exactly."""
    import keras
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    from edgemp.quantize import apply_recipe, calibrate, recipe_for
    from edgemp.quantize.rewrites import pack, prepare_for_quantization
    from edgemp.targets.tflite.census import _schema

    keras.utils.set_random_seed(0)
    inp = keras.Input((8,))
    dense = {"bias_initializer": "random_normal"}  # a zero bias is dropped by the converter
    model = keras.Model(inp, keras.layers.Dense(10, **dense)(keras.layers.Dense(16, activation="relu", **dense)(inp)))
    flat = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    schema = _schema()[0]
    m = schema.ModelT.InitFromPackedBuf(flat, 0)
    sg = m.subgraphs[0]
    fc = [op for op in sg.operators if max(m.operatorCodes[op.opcodeIndex].builtinCode,
                                           m.operatorCodes[op.opcodeIndex].deprecatedBuiltinCode) == 9]
    for op in fc:  # what the converter writes for a folded LayerScale
        sg.tensors[op.inputs[2]].shape = np.array([1, 1, 1, sg.tensors[op.inputs[2]].shape[-1]], np.int32)
    rank4 = pack(m, len(flat))
    x = np.random.default_rng(0).random((32, 8), np.float32)
    key = next(iter(Interpreter(model_content=rank4).get_signature_runner().get_input_details()))
    samples = [{key: x[i : i + 1]} for i in range(16)]
    with pytest.raises(ValueError, match="num_scales"):  # the bug, on the model as the converter wrote it
        Interpreter(model_content=apply_recipe(rank4, recipe_for("int8"), calibrate(rank4, samples))).allocate_tensors()
    prepared = prepare_for_quantization(rank4)
    assert prepared.rewrites["FULLY_CONNECTED bias -> 1-D"] == len(fc) == 2
    int8 = apply_recipe(prepared.model, recipe_for("int8"), calibrate(prepared.model, samples))
    runner = Interpreter(model_content=int8).get_signature_runner()  # loads: LiteRT checks the scales here
    out = runner(**{key: np.clip(np.round(x[:1] / runner.get_input_details()[key]["quantization"][0])
                                 + runner.get_input_details()[key]["quantization"][1], -128, 127).astype(np.int8)})
    assert next(iter(out.values())).shape == (1, 10)


@pytest.mark.slow
def test_keras_layernorm_transformer_is_fully_integer(tmp_path: Path) -> None:
    cal, _, val = _tokens()
    r = edgemp.convert(M.keras_vit(), "int8", calibration=cal, validation=val, output_dir=tmp_path, latency_runs=2)
    assert r.passed and _int8_only(r.report)
    assert "NEG" not in r.report["census"]["op_counts"]
    assert any("NEG->MUL" in w for w in r.report["model"]["rewrites"])
    assert r.report["validation"]["accuracy"]["drop"] <= 0.01


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_keras_recurrent_layers_are_unrolled_to_full_int8(kind: str, tmp_path: Path) -> None:
    cal, _, val = _tokens()
    r = edgemp.convert(M.keras_rnn(kind), "int8", calibration=cal, validation=val, output_dir=tmp_path, latency_runs=2)
    assert r.passed and _int8_only(r.report) and "WHILE" not in r.report["census"]["op_counts"]
    assert r.report["model"]["rewrites"] == [f"{kind.lower()}: unrolled over 8 steps for static quantization (same weights)"]
    assert r.report["validation"]["accuracy"]["drop"] <= 0.015


def test_recurrent_layer_with_dynamic_length_names_while_and_the_ways_out(tmp_path: Path) -> None:
    import keras

    inp = keras.Input((None, 8))
    model = keras.Model(inp, keras.layers.Dense(3)(keras.layers.LSTM(4)(inp)))
    x = np.random.default_rng(0).random((20, 8, 8), dtype=np.float32)
    with pytest.raises(errors.UnsupportedOpsError) as info:
        edgemp.convert(model, "int8", calibration=x, output_dir=tmp_path / "int8")
    msg = str(info.value)
    assert "WHILE loop" in msg and "sequence length is dynamic" in msg and "'dynamic-int8'" in msg
    assert info.value.exit_code == 4 and info.value.ops == ["WHILE"]
    r = edgemp.convert(model, "dynamic-int8", validation=x, output_dir=tmp_path / "dyn", latency_runs=1)
    assert r.passed and r.report["census"]["compute_counts"].get("hybrid-int8")


def test_an_op_without_int8_support_is_named_and_mixed_keeps_exactly_it(tmp_path: Path) -> None:
    import keras

    inp = keras.Input((8,), name="x")
    h = keras.layers.Dense(16, name="proj")(inp)
    h = keras.layers.Lambda(lambda t: keras.ops.sin(t), name="periodic")(h)
    model = keras.Model(inp, keras.layers.Dense(4, name="head")(h))
    x = np.random.default_rng(0).normal(size=(64, 8)).astype(np.float32)
    with pytest.raises(errors.PrecisionLabelError) as info:
        edgemp.convert(model, "int8", calibration=x, output_dir=tmp_path / "int8")
    msg = str(info.value)
    assert "SIN" in msg and "layer 'periodic'" in msg and "no int8 SIN" in msg and "precision 'mixed'" in msg
    assert "io_dtype" not in msg  # the float op is inside the graph: I/O types would not help
    r = edgemp.convert(model, "mixed", calibration=x, output_dir=tmp_path / "mixed", min_sqnr_db=20, latency_runs=1)
    forced = r.report["mixed"]["forced_float"]
    assert [f["op"] for f in forced] == ["SIN"] and forced[0]["name"] == "periodic"
    assert r.passed and r.report["census"]["compute_counts"]["float32"] == 1


# -- detection: the concatenated-output pitfall ----------------------------------------------------------------
@pytest.mark.slow
def test_concatenated_boxes_and_scores_are_found_and_fixed_by_mixed(tmp_path: Path) -> None:
    x, targets = M.detection_data()
    kw = dict(calibration=x[:200], validation=(x[M.N_TRAIN:], targets[M.N_TRAIN:]),
              example_input=torch.from_numpy(x[:1]), metric=M.detection_accuracy, max_accuracy_drop=0.02,
              latency_runs=1)
    det = M.torch_concat_detector()
    # EXP-free head, so int8 is fully integer; its one output mixes pixels (0..320) and probabilities (0..1)
    r = edgemp.convert(det, "int8", output_dir=tmp_path / "int8", **kw)
    assert not r.passed and r.report["validation"]["accuracy"]["drop"] > 0.05
    assert any("very different ranges" in w and "channel(s) (4..14)" in w for w in r.report["validation"]["warnings"])
    with pytest.raises(errors.MixedPrecisionError, match="loss is in the I/O quantization.*io_dtype='float'"):
        edgemp.convert(det, "mixed", output_dir=tmp_path / "mixed_int8_io", **kw)
    fixed = edgemp.convert(det, "mixed", io_dtype="float", output_dir=tmp_path / "mixed", **kw)
    assert fixed.passed and fixed.report["mixed"]["met"] and fixed.report["validation"]["accuracy"]["drop"] <= 0.02
    assert 1 <= len(fixed.report["mixed"]["float_layers"]) <= 2


# -- metrics and labels -----------------------------------------------------------------------------------------
def test_dense_agreement_is_per_pixel_and_chance_uses_the_class_count() -> None:
    from edgemp.validation.metrics import collapse_reasons, compare, dense_scores

    rng = np.random.default_rng(0)
    ref = rng.normal(size=(4, 8, 8, 5))
    out = ref.copy()
    out[:, :2] = out[:, :2, :, ::-1]  # a quarter of the pixels get another class
    m = compare(ref, out, class_axis=-1)
    expect = np.mean(ref.argmax(-1) == out.argmax(-1))
    assert m["top1_agreement"] == pytest.approx(expect) and 0.75 <= expect < 0.9
    shuffled = rng.normal(size=ref.shape)
    reasons = collapse_reasons(ref, shuffled, compare(ref, shuffled), class_axis=-1)
    assert any("near chance (1/5)" in r for r in reasons)  # 5 classes, not 8*8*5
    labels = ref.argmax(-1)
    labels[:, 0, 0] = 255
    s = dense_scores(ref, labels, -1, ignore_index=255)
    assert s["miou"] == 1.0 and s["pixel_accuracy"] == 1.0


def test_dead_output_is_caught() -> None:
    from edgemp.validation.metrics import collapse_reasons, compare

    ref = np.random.default_rng(0).normal(size=(16, 10))
    dead = np.full_like(ref, -0.5)
    assert any(r.startswith("dead output") for r in collapse_reasons(ref, dead, compare(ref, dead)))


@pytest.mark.parametrize("bad", [99, -1])
def test_labels_outside_the_classes_are_refused(bad: int, model_path: Path, small_heldout, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    x, y = small_heldout
    y = y[:50].copy()
    y[3] = bad
    with pytest.raises(errors.DataError, match=rf"labels \[{bad}\] are outside the 10 classes"):
        edgemp.convert(model_path, "fp16", validation=(x[:50], y), output_dir=tmp_path)
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def test_a_metric_that_fails_is_a_data_error(model_path: Path, small_heldout, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    x, y = small_heldout

    def broken(outputs: dict, labels: np.ndarray) -> float:  # type: ignore[type-arg]
        return outputs["no_such_output"].mean()

    with pytest.raises(errors.DataError, match=r"metric 'broken' raised KeyError.*\['output_0'\]"):
        edgemp.convert(model_path, "fp16", validation=(x[:50], y[:50]), metric=broken, output_dir=tmp_path)
    with pytest.raises(errors.DataError, match="finite number"):
        edgemp.convert(model_path, "fp16", validation=(x[:50], y[:50]), metric=lambda o, l: float("nan"),
                       output_dir=tmp_path)


def test_output_tasks_override_and_unknown_names(model_path: Path, small_heldout, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    x, _ = small_heldout
    r = edgemp.convert(model_path, "fp16", validation=x[:64], output_tasks={"output_0": "regression"},
                       output_dir=tmp_path, latency_runs=1)
    row = r.report["validation"]["outputs"][0]
    assert row["task"] == "regression" and row["top1_agreement"] is None and row["task_reason"] == "given (output_tasks)"
    with pytest.raises(errors.InputError, match="output_tasks names \\['logits'\\]"):
        edgemp.convert(model_path, "fp16", validation=x[:64], output_tasks={"logits": "regression"},
                       output_dir=tmp_path / "b", force=True)


# -- the user's layer names -------------------------------------------------------------------------------------------
def _keras_models() -> dict[str, object]:
    import keras

    L = keras.layers
    seq = keras.Sequential([keras.Input((12, 12, 3)), L.Conv2D(4, 3), L.BatchNormalization(), L.ReLU(),
                            L.Conv2D(8, 3, activation="relu"), L.Flatten(), L.Dense(10), L.Dense(5)])
    i = keras.Input((12, 12, 3))
    f = L.Conv2D(4, 3, name="stem")(i)
    f = L.Add(name="join")([f, L.Conv2D(4, 1, name="side")(f)])
    func = keras.Model(i, L.Dense(3, name="head")(L.GlobalAveragePooling2D(name="pool")(f)))
    inner = keras.Sequential([keras.Input((12, 12, 3)), L.Conv2D(4, 3, name="conv2d"), L.ReLU(name="act")],
                             name="backbone")
    j = keras.Input((12, 12, 3))
    nested = keras.Model(j, L.Dense(2, name="cls")(L.Flatten(name="flat")(L.Conv2D(6, 3, name="conv2d_1")(inner(j)))))
    return {"sequential": seq, "functional": func, "nested": nested, "cloned": keras.models.clone_model(seq)}


@pytest.mark.parametrize("kind", ["sequential", "functional", "nested", "cloned"])
def test_layer_names_are_the_users_whatever_scopes_the_converter_adds(kind: str) -> None:
    from edgemp.targets.tflite.census import census
    from edgemp.mixed.graph import LayerGraph
    from edgemp.sources import load_source

    model = _keras_models()[kind]
    src = load_source(model)
    g = LayerGraph(census(src.to_float_tflite()), src.layers(), aliases=src.scope_aliases())
    weighted = [lay.name for lay in g.layers if lay.weighted]
    keras_weighted = [lay.name for lay in model._flatten_layers() if lay.weights and "normalization" not in lay.name]  # type: ignore[attr-defined]
    assert weighted == [n for n in keras_weighted if n != model.name and n != "backbone"]
    assert len(set(weighted)) == len(weighted)  # never two ops with the name of one layer


def test_an_infeasible_candidate_is_recorded_and_skipped(model_path: Path, small_heldout, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Every candidate with exactly one layer in float is made unloadable (a truncated flatbuffer, as LiteRT
    refusing to prepare a kernel would be): each is scored infeasible and recorded, and the search goes on."""
    from edgemp.mixed import pipeline

    real_search = pipeline.search

    def search_with_broken_candidates(session, budget, **kw):  # type: ignore[no-untyped-def]
        graph, make = session.graph, session.make
        singles = {graph.close({lay.tensor}) for lay in graph.ranked}

        def make_or_break(region: frozenset[str]) -> bytes:
            art = make(region)
            return art[: len(art) // 2] if region in singles else art

        # the search's own steps and its batched rankings both get the broken candidates
        session.make = make_or_break
        session.score_regions = lambda regions, *a, **k: [session.scorer(make_or_break(r)) for r in regions]
        return real_search(session, budget, **kw)

    monkeypatch.setattr(pipeline, "search", search_with_broken_candidates)
    x, y = small_heldout
    from .conftest import CALIBRATION

    try:
        r = edgemp.convert(model_path, "mixed", CALIBRATION, x[:300], tmp_path, min_sqnr_db=45, max_float_layers=3,
                           latency_runs=1)
    except errors.MixedPrecisionError as exc:
        r = exc.result  # type: ignore[assignment]
    steps = r.report["mixed"]["steps"]
    skipped = [s for s in steps if s["action"].startswith("infeasible, skipped")]
    assert skipped and all("LiteRT refused the candidate" in s["score"]["error"] for s in skipped)
    assert not any(s["accepted"] and s["score"]["error"] for s in steps)
