"""Analysis and mixed precision at scale (edgemp.mixed.executor, the two-pass ranking, the recipe-keyed score cache):
fewer candidates on one machine with the same result, and Ray tasks giving the same layers and bytes."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

import edgemp
from edgemp import errors

from .models import N_TRAIN, digits


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("EDGEMP_SCORE_CACHE_DIR", str(tmp_path / "scores"))
    monkeypatch.delenv("EDGEMP_SCORE_CACHE", raising=False)
    monkeypatch.setenv("EDGEMP_CACHE", str(tmp_path / "cache"))  # float model and statistics reused too
    monkeypatch.setenv("EDGEMP_ARTIFACT_CACHE", "1")
    return tmp_path / "scores"


def deep_mlp() -> object:
    """30 dense layers (random weights, seeded): more layers than analysis scores at all."""
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 1), name="image")
    t = keras.layers.Flatten(name="flat")(inp)
    for i in range(30):
        t = keras.layers.Dense(24, activation="relu", name=f"d{i}")(t)
    return keras.Model(inp, keras.layers.Dense(10, name="logits")(t), name="deep_mlp")


@pytest.mark.slow
def test_two_pass_ranking_and_mixed_after_analyze_builds_little(cache: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from edgemp.mixed import search

    plans: list[list[frozenset[str]]] = []  # per search step: the regions scored side by side
    ahead = search._ahead
    monkeypatch.setattr(search, "_ahead", lambda *a: plans.append(ahead(*a)) or plans[-1])
    x, _ = digits()
    model = deep_mlp()
    val = x[N_TRAIN:]
    assert len(val) > 64
    a = edgemp.analyze(model, x[:100], val, tmp_path / "a", progress=False)
    s = a.summary
    ranked = s["num_ranked_layers"]
    # 24 layers adding the most noise go to a first pass on 32 samples, the 12 most damaging on all samples
    assert ranked > 24 and s["measured_on_all_samples"] == 12 and s["not_scored"] == ranked - 24
    assert s["first_pass"] == {"samples": 16, "layers": 24 - 12}
    rows = [r for r in a.layers if r["ranked"]]
    head, rest = [r for r in rows if r["damage"] is not None], [r for r in rows if r["first_pass"] is not None]
    assert len(head) == 12 and len(rest) == 12 and all(r["gain"] is not None for r in head)
    assert [r["rank"] for r in head] == list(range(1, 13))  # the measured head ranks first
    assert all(r["rmse"] is not None for r in rows)  # the tensor errors cover every layer
    # int8 (for the preserved tensors, then scored in the head's batch), all-float (twice), first pass, head, gains
    assert s["quantize_runs"] <= 2 + 2 + 24 + 12 + 12
    sqnr = a.summary["int8"]["sqnr_db"]
    r = edgemp.convert(model, "mixed", x[:100], val, tmp_path / "m", progress=False,
                       gate=edgemp.GateOptions(min_sqnr_db=sqnr + 1.0),
                       mixed=edgemp.MixedOptions(max_float_layers=6, num_workers=2),
                       runtime=edgemp.RuntimeOptions(latency_runs=1))
    m = r.report["mixed"]
    assert m["met"] and m["float_layers"]
    # on 2 workers a step's first try was scored beside the step before it (a guess that it would be accepted): that
    # try then launched no batch of its own, and no batch was launched for a try already scored
    tries = [st for st in m["steps"] if st["action"].startswith(("keep float", "no gain"))]
    assert len(tries) >= 2 and all(len(p) == 2 for p in plans)
    assert len(plans) < len(tries), (plans, tries)
    scored: set[frozenset[str]] = set()
    for p in plans:
        assert p[0] not in scored, plans
        scored |= set(p)
    # the ranking came from the analysis' scores (keyed by recipe): only the search's own steps were built
    assert m["scores_from_cache"] >= 24 and m["quantize_runs"] <= len(m["steps"]) + 8 + 2


def test_local_threads_give_the_same_scores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Candidates on several threads (the default on a multi-core machine) score exactly as one after another."""
    monkeypatch.setenv("EDGEMP_SCORE_CACHE", "0")  # every candidate built and run both times
    x, _ = digits()
    model = deep_mlp()
    out, err = sys.stdout, sys.stderr
    runs = {n: edgemp.analyze(model, x[:100], x[N_TRAIN:], tmp_path / f"w{n}", progress=False, num_workers=n)
            for n in (1, 3)}
    assert sys.stdout is out and sys.stderr is err  # the quantizer's output is silenced without swapping them on threads
    one, three = runs[1].layers, runs[3].layers
    assert [r["label"] for r in one] == [r["label"] for r in three]
    assert [(r["damage"], r["gain"], r["first_pass"]) for r in one] == [(r["damage"], r["gain"], r["first_pass"])
                                                                         for r in three]
    assert runs[1].summary["quantize_runs"] == runs[3].summary["quantize_runs"] > 24


def test_a_recipe_never_sees_another_recipes_statistics() -> None:
    """The quantizer aligns shared-scale ops' statistics in the dict it is given: each recipe quantizes from its own
    copy, so candidates (on threads, in any order) never see each other's alignment."""
    import copy

    import tensorflow as tf

    from edgemp.quantize import engine
    from edgemp.quantize.recipes import float_rule, static_rule

    x, _ = digits()
    float_tflite = tf.lite.TFLiteConverter.from_keras_model(deep_mlp()).convert()
    stats = engine.calibrate(float_tflite, [{"image": x[i : i + 1]} for i in range(32)])
    before = copy.deepcopy(stats)
    alone = engine.apply_recipe(float_tflite, [static_rule(8), float_rule(regex=".*d3/.*")], stats, candidate=True)
    engine.apply_recipe(float_tflite, [static_rule(8), float_rule(regex=".*d9/.*")], stats, candidate=True)
    after = engine.apply_recipe(float_tflite, [static_rule(8), float_rule(regex=".*d3/.*")], stats, candidate=True)
    assert alone == after
    assert stats.keys() == before.keys() and all(
        np.array_equal(np.asarray(stats[k][q]), np.asarray(before[k][q])) and
        np.asarray(stats[k][q]).shape == np.asarray(before[k][q]).shape for k in stats for q in stats[k])


def test_calibration_shards_merge_to_the_statistics_of_one_pass() -> None:
    """What a Ray run's sharded calibration relies on: consecutive shards, merged, are one pass bit for bit (same
    tensors in the same order, same min/max arrays), so the artifact does not depend on the executor."""
    import tensorflow as tf

    from edgemp.quantize import calibrate, merge_statistics

    x, _ = digits()
    float_tflite = tf.lite.TFLiteConverter.from_keras_model(deep_mlp()).convert()
    samples = [{"image": x[i : i + 1]} for i in range(40)]
    whole = calibrate(float_tflite, samples)
    merged = merge_statistics([calibrate(float_tflite, samples[a:b]) for a, b in ((0, 13), (13, 29), (29, 40))])
    assert list(merged) == list(whole)
    assert all(merged[k].keys() == whole[k].keys() and all(
        np.array_equal(np.asarray(merged[k][q]), np.asarray(whole[k][q])) for q in whole[k]) for k in whole)
    assert any(not np.array_equal(np.asarray(merged[k]["max"]), np.asarray(calibrate(float_tflite, samples[:13])[k]["max"]))
               for k in whole)  # the shards do differ: the merge is doing the work


def test_calibration_on_threads_gives_the_statistics_of_one_pass(capfd: pytest.CaptureFixture[str]) -> None:
    """The in-process executor calibrates one shard of consecutive samples per worker thread: the same tensors and
    arrays as one pass, and the quantizer's own progress bar (drawn from the threads) never reaches the terminal."""
    import tensorflow as tf

    from edgemp.mixed.executor import Executor

    x, _ = digits()
    float_tflite = tf.lite.TFLiteConverter.from_keras_model(deep_mlp()).convert()
    samples = [{"image": x[i : i + 1]} for i in range(40)]
    capfd.readouterr()
    one, two = Executor(1), Executor(2)
    whole, sharded = one.calibrate(float_tflite, samples), two.calibrate(float_tflite, samples)
    assert (one.calibration_shards, two.calibration_shards) == (1, 2)
    assert list(sharded) == list(whole) and all(
        np.array_equal(np.asarray(sharded[k][q]), np.asarray(whole[k][q])) for k in whole for q in whole[k])
    assert "Running Calibration" not in capfd.readouterr().err
    few = Executor(2)
    few.calibrate(float_tflite, samples[:20])  # under 16 samples a shard: one pass
    assert few.calibration_shards == 1


def test_executor_options_are_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    x, _ = digits()
    with pytest.raises(errors.InputError, match="executor must be 'local' or 'ray'"):
        edgemp.MixedOptions(executor="dask")
    with pytest.raises(errors.InputError, match="ray_address is for executor='ray'"):
        edgemp.MixedOptions(ray_address="ray://head:10001")
    with pytest.raises(errors.InputError, match="num_workers"):
        edgemp.MixedOptions(executor="ray", num_workers=0)
    monkeypatch.setitem(sys.modules, "ray", None)  # as if the extra were not installed
    with pytest.raises(errors.MissingDependencyError, match=r"edgemp\[ray\]"):
        edgemp.analyze(deep_mlp(), x[:50], x[N_TRAIN:], tmp_path, progress=False, executor="ray")
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_ray_gives_the_same_layers_and_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("ray")
    from edgemp import _ray
    from edgemp.demo import fashion_mnist, sensitive_model_path
    from edgemp.mixed.executor import usable_cpus

    xt, yt = fashion_mnist("test")
    data = (xt[:300] * 255.0, yt[:300])
    cal = xt[1000:1100] * 255.0
    model = sensitive_model_path()
    out = {}
    ran, run_tasks = [], _ray.run_tasks
    monkeypatch.setattr(_ray, "run_tasks", lambda fn, *a, **k: ran.append(fn.__name__) or run_tasks(fn, *a, **k))
    # one after another (the search scores its steps one by one), on threads and on Ray (both score the next steps'
    # likely candidates ahead, side by side): the same analysis, the same steps and scores, the same bytes
    for ex in ("serial", "local", "ray"):
        monkeypatch.setenv("EDGEMP_CACHE", str(tmp_path / f"cache-{ex}"))  # cold: Ray calibrates in shards too
        monkeypatch.setenv("EDGEMP_SCORE_CACHE_DIR", str(tmp_path / f"scores-{ex}"))  # cold: Ray scores everything
        opts = {"executor": "local", "num_workers": 1} if ex == "serial" else \
            {"executor": ex} | ({"num_workers": 2} if ex == "ray" else {})
        a = edgemp.analyze(model, cal, data, tmp_path / f"a-{ex}", progress=False,
                           preprocessing={"scale": 1.0}, **opts)
        monkeypatch.setenv("EDGEMP_SCORE_CACHE_DIR", str(tmp_path / f"scores-{ex}-m"))  # the search on Ray too
        r = edgemp.convert(model, "mixed", cal, data, tmp_path / f"m-{ex}", progress=False,
                           preprocessing={"scale": 1.0}, gate=edgemp.GateOptions(max_accuracy_drop=0.005),
                           mixed=edgemp.MixedOptions(**opts), runtime=edgemp.RuntimeOptions(latency_runs=1))
        assert a.summary["executor"] == opts["executor"] and a.summary["calibration_runs"] == 1
        # shards of the 100 calibration samples: one per Ray worker, one per thread (the usable CPUs, at most 4)
        assert a.summary["calibration_shards"] == {"serial": 1, "ray": 2}.get(ex, min(usable_cpus(), 4))
        steps = [(s["action"], s["score"]) for s in r.report["mixed"]["steps"]]
        out[ex] = (a.layers, r.report["mixed"]["float_layers"], r.artifacts["tflite"].read_bytes(), steps)
    # on Ray: calibration shards, the preserved-tensor pass's shards and the candidates all ran as tasks
    assert {"calibrate_shard", "tensor_sums", "build_and_score_many"} <= set(ran)
    (la, fa, ba, sa) = out["serial"]
    assert len(sa) > 1 and set(fa) <= {"cat", "logits", "embed"} and np.frombuffer(ba, np.uint8).size > 0
    for lb, fb, bb, sb in (out["local"], out["ray"]):
        assert [r["label"] for r in la] == [r["label"] for r in lb]
        assert [(r["damage"], r["gain"]) for r in la] == [(r["damage"], r["gain"]) for r in lb]
        # the preserved-tensor pass: its shards on threads, and as Ray tasks (two processes), summed in one order
        assert [(r["rmse"], r["sqnr_db"], r["cosine"]) for r in la] == [(r["rmse"], r["sqnr_db"], r["cosine"])
                                                                         for r in lb]
        assert fa == fb and ba == bb and sa == sb
    # a mixed run with the float model, the statistics and the scores cached (as analyze leaves them): its few
    # candidates run on this process' threads, and no local Ray is started for them
    monkeypatch.setenv("EDGEMP_ARTIFACT_CACHE", "1")
    monkeypatch.setenv("EDGEMP_CACHE", str(tmp_path / "cache-again"))
    edgemp.convert(model, "int8", cal, data, tmp_path / "int8", progress=False, preprocessing={"scale": 1.0},
                   runtime=edgemp.RuntimeOptions(latency_runs=1))
    monkeypatch.setenv("EDGEMP_SCORE_CACHE_DIR", str(tmp_path / "scores-ray"))
    starts, session = [], _ray.ray_session
    monkeypatch.setattr(_ray, "ray_session", lambda *a, **k: starts.append(a) or session(*a, **k))
    r = edgemp.convert(model, "mixed", cal, data, tmp_path / "m-ray-again", progress=False,
                       preprocessing={"scale": 1.0}, gate=edgemp.GateOptions(max_accuracy_drop=0.005),
                       mixed=edgemp.MixedOptions(executor="ray", num_workers=2),
                       runtime=edgemp.RuntimeOptions(latency_runs=1))
    assert r.report["reused"] == {"float_tflite": True, "statistics": True}
    assert r.report["mixed"]["scores_from_cache"] > 0 and not starts
    assert r.artifacts["tflite"].read_bytes() == ba


@pytest.mark.slow
def test_a_model_file_is_converted_and_calibrated_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        model_path: Path) -> None:
    """analyze then convert -p mixed (or any second run) on the same file and data: no second float conversion or
    calibration, the same bytes; a damaged entry is a miss; EDGEMP_ARTIFACT_CACHE=0 turns it off."""
    import edgemp.quantize

    monkeypatch.setenv("EDGEMP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("EDGEMP_ARTIFACT_CACHE", "1")
    real, calls = edgemp.quantize.calibrate, []
    monkeypatch.setattr(edgemp.quantize, "calibrate", lambda *a, **k: calls.append(1) or real(*a, **k))
    cal = Path(__file__).resolve().parents[1] / "calibration_data" / "fashion_mnist"
    run = lambda out: edgemp.convert(model_path, "int8", cal, None, tmp_path / out, progress=False,  # noqa: E731
                                     runtime=edgemp.RuntimeOptions(latency_runs=1))
    a = run("a")
    assert a.report["reused"] == {"float_tflite": False, "statistics": False} and len(calls) == 1
    b = run("b")
    assert b.report["reused"] == {"float_tflite": True, "statistics": True} and len(calls) == 1
    assert a.artifacts["tflite"].read_bytes() == b.artifacts["tflite"].read_bytes()
    for f in (tmp_path / "cache" / "statistics").iterdir():
        f.write_bytes(b"not an npz")
    c = run("c")
    assert c.report["reused"]["statistics"] is False and len(calls) == 2
    assert c.artifacts["tflite"].read_bytes() == a.artifacts["tflite"].read_bytes()
    monkeypatch.setenv("EDGEMP_ARTIFACT_CACHE", "0")
    assert run("d").report["reused"] == {"float_tflite": False, "statistics": False} and len(calls) == 3


def test_an_unreachable_ray_address_is_refused_at_once(tmp_path: Path) -> None:
    """Ray retries an address it cannot reach for minutes; edgemp checks the port first and names the fix."""
    pytest.importorskip("ray")
    import socket
    import time

    with socket.socket() as s:  # a port nothing listens on: bound, then closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    x, _ = digits()
    t0 = time.perf_counter()
    with pytest.raises(errors.InputError, match=rf"cannot reach the Ray cluster at 'ray://127.0.0.1:{port}'.*head"):
        edgemp.analyze(deep_mlp(), x[:50], x[N_TRAIN:], tmp_path / "a", progress=False, executor="ray",
                       ray_address=f"ray://127.0.0.1:{port}")
    assert time.perf_counter() - t0 < 60
    assert not (tmp_path / "a").exists() or not any((tmp_path / "a").iterdir())


def test_candidates_on_threads_draw_no_quantizer_progress_bars(capfd: pytest.CaptureFixture[str]) -> None:
    """The quantizer draws a tqdm bar for models of 100+ tensors even when asked not to; on a candidate thread (where
    stderr is not swapped) it reached the user's terminal once per candidate."""
    import threading

    import keras
    import tensorflow as tf

    from edgemp.quantize import engine
    from edgemp.quantize.recipes import float_rule, static_rule

    keras.utils.set_random_seed(0)
    inp = keras.Input((8,))
    t = inp
    for i in range(80):  # 161 tensors to transform: the quantizer's bar shows from 100
        t = keras.layers.Dense(8, activation="relu", name=f"d{i}")(t)
    float_tflite = tf.lite.TFLiteConverter.from_keras_model(keras.Model(inp, t)).convert()
    key = next(iter(__import__("ai_edge_litert.interpreter", fromlist=["Interpreter"]).Interpreter(
        model_content=float_tflite).get_signature_runner().get_input_details()))
    stats = engine.calibrate(float_tflite, [{key: np.random.default_rng(i).random((1, 8), np.float32)} for i in range(8)])
    capfd.readouterr()
    out: list[bytes] = []
    worker = threading.Thread(target=lambda: out.append(engine.apply_recipe(
        float_tflite, [static_rule(8), float_rule(regex=".*d3/.*")], stats, candidate=True)))
    worker.start()
    worker.join()
    assert out and len(out[0]) > 0
    assert "Applying Transformations" not in capfd.readouterr().err


def test_merged_float_rules_give_the_same_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Candidates quantize with their float rules merged per op type (engine.merged_rules: a few alternations instead
    of one regex per op); every kind of candidate gives the bytes the unmerged recipe gives."""
    import keras
    import tensorflow as tf

    from edgemp.mixed.graph import LayerGraph
    from edgemp.quantize import engine
    from edgemp.sources import load_source
    from edgemp.targets.tflite.census import census

    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 1), name="image")
    t = inp
    for i in range(3):
        a = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name=f"c{i}")(t)
        b = keras.layers.DepthwiseConv2D(3, padding="same", name=f"dw{i}")(a)
        t = keras.layers.Add(name=f"res{i}")([a, b])
        t = keras.layers.Concatenate(name=f"join{i}")([t, keras.layers.Conv2D(4, 1, name=f"p{i}")(t)])
    t = keras.layers.GlobalAveragePooling2D(name="pool")(t)
    t = keras.layers.Dense(16, activation="relu", name="d1")(t)
    net = keras.Model(inp, keras.layers.Dense(10, name="logits")(t))
    source = load_source(net)
    float_tflite = tf.lite.TFLiteConverter.from_keras_model(net).convert()
    x, _ = digits()
    stats = engine.calibrate(float_tflite, [{"image": x[i : i + 1]} for i in range(32)])
    graph = LayerGraph(census(float_tflite), source.layers())
    every = frozenset(lay.tensor for lay in graph.layers)
    regions = [every - {lay.tensor} for lay in graph.ranked]  # "only this layer int8", as analysis builds them
    regions += [graph.close({graph.ranked[1].tensor, graph.ranked[-1].tensor}), every]
    recipes = [graph.recipe(r) for r in regions] + [graph.recipe(every - {graph.ranked[2].tensor}, float_io=True)]
    ops = {rule["operation"] for rule in recipes[0][1:]}
    assert len(recipes[0]) > 12 and len(engine.merged_rules(recipes[0])) == 1 + len(ops)  # a rule per op type
    merged = [engine.apply_recipe(float_tflite, r, stats, candidate=True) for r in recipes]
    monkeypatch.setattr(engine, "merged_rules", lambda recipe: recipe)
    assert merged == [engine.apply_recipe(float_tflite, r, stats, candidate=True) for r in recipes]


def test_added_noise_is_what_a_layer_adds() -> None:
    """The first pass picks layers by the SQNR they lose from their inputs to their output: noise inherited from
    upstream (RMSE of several quantization steps deep in a network) does not count; a layer fed by the model's
    input cannot be ruled out; a layer exact on both sides adds nothing."""
    import math
    from types import SimpleNamespace

    from edgemp.mixed.sensitivity import LayerSensitivity, added_noise

    graph = SimpleNamespace(ranked=[SimpleNamespace(tensor=t) for t in "abcde"],
                            producers={"b": ["a"], "c": ["b"], "e": ["d"]})
    sens = {"a": LayerSensitivity(None, sqnr_db=40.0, rmse_over_scale=0.3),  # type: ignore[arg-type]
            "b": LayerSensitivity(None, sqnr_db=30.0, rmse_over_scale=0.4),  # type: ignore[arg-type]
            "c": LayerSensitivity(None, sqnr_db=29.5, rmse_over_scale=2.5),  # type: ignore[arg-type]
            "d": LayerSensitivity(None, sqnr_db=math.inf),  # type: ignore[arg-type]
            "e": LayerSensitivity(None, sqnr_db=math.inf)}  # type: ignore[arg-type]
    assert added_noise(sens, graph) == {"a": math.inf, "b": 10.0, "c": 0.5, "d": math.inf, "e": 0.0}  # type: ignore[arg-type]
