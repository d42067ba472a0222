"""The experiments behind the causes in benchmarks/results/zoo.md ("Where edgemp falls short, and why").

Each subcommand rebuilds one zoo model exactly as benchmarks/zoo.py does and shows where the gap comes from:
  fp16             DenseNet121 / ResNet50 (Keras) fp16: constant bytes by dtype, edgemp against TFLiteConverter
  dynamic          MobileNetV2 / keras_vit / keras_lstm dynamic-int8: edgemp's recipe, the same with
                   min_weight_elements=1024 and with DEPTHWISE_CONV_2D kept float, against TFLiteConverter
  transformer      vit_tiny / torch_transformer int8: ops XNNPACK does not take, edgemp int8 and mixed vs PT2E
  vit-class-token  vit_tiny int8 fidelity with torchvision's zero class token and with a trained-like one
  lraspp           LR-ASPP int8: HARD_SWISH placement, edgemp vs PT2E
  anchor-crash     TFLiteConverter int8 PTQ of the Keras LSTM / GRU, each in a child process: its exit code (SIGSEGV)

    source scripts/env.sh && python benchmarks/zoo_findings.py {fp16,dynamic,transformer,vit-class-token,lraspp}
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import _common  # noqa: E402
import zoo  # noqa: E402

import edgemp  # noqa: E402
from edgemp.targets.tflite.census import census  # noqa: E402
from edgemp.targets.tflite.compat import compact  # noqa: E402
from edgemp.bench.harness import delegated_node_indices  # noqa: E402
from edgemp.config import Precision, RuntimeOptions  # noqa: E402
from edgemp.quantize import apply_recipe, recipe_for  # noqa: E402
from edgemp.quantize.recipes import float_rule  # noqa: E402
from edgemp.sources import load_source  # noqa: E402
from edgemp.sources.keras import _with_batch  # noqa: E402
from edgemp.validation.runtime import make_interpreter  # noqa: E402


def case_of(name: str) -> tuple[zoo.Spec, zoo.Case]:
    spec = next(s for s in zoo.ZOO if s.name == name)
    case = spec.build()
    case.ref = zoo.reference(spec, case)
    return spec, case


def outside_xnnpack(art: bytes) -> tuple[int, int, dict[str, int]]:
    """(nodes XNNPACK takes, nodes, {op:compute: count} of the nodes it leaves to TFLite's builtin kernels)."""
    itp = make_interpreter(art, RuntimeOptions(num_threads=1))
    taken, original = delegated_node_indices(itp)
    rest = collections.Counter(f"{o.op}:{o.compute}" for o in census(art).ops if o.index not in taken)
    return len(taken), len(original), dict(rest.most_common())


def compare(case: zoo.Case, arts: dict[str, bytes], anchor: str, rounds: int = 7, per_round: int = 100) -> None:
    ms, per = _common.interleaved_latency(arts, zoo.first_sample(case, next(iter(arts.values()))), rounds, per_round)
    for k, a in arts.items():
        f = zoo.fidelity(case, a)
        took, total, rest = outside_xnnpack(a)
        print(f"  {k:40s} {len(a):>10,} B  {ms[k]:.4f} ms ×{_common.round_ratio(per, k, anchor):.3f} vs {anchor}  "
              f"SQNR {f['sqnr_db']:.2f} dB top-1 {f['top1_agreement']}  XNNPACK {took}/{total}"
              + (f", outside: {rest}" if rest else ""))


def convert(case: zoo.Case, precision: str, **kw: Any) -> bytes:
    r = edgemp.convert(case.model, precision, case.calib, validation=case.evalx,
                       output_dir=_common.work_dir("edgemp-findings-"),
                       example_input=case.example, max_accuracy_drop=None, progress=False,
                       num_calibration_samples=zoo.N_CALIB, **kw)
    return r.artifacts["tflite"].read_bytes()


def fp16() -> None:
    from ai_edge_litert import schema_py_generated as schema

    types = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}

    def constants(model: bytes) -> dict[str, Any]:
        m = schema.ModelT.InitFromPackedBuf(model, 0)
        sg = m.subgraphs[0]
        by: collections.Counter[str] = collections.Counter()
        n: collections.Counter[str] = collections.Counter()
        for t in sg.tensors:
            b = m.buffers[t.buffer]
            if b.data is not None and len(b.data):
                key = f"{types[t.type].lower()} rank {len(t.shape)}"
                by[key] += len(b.data)
                n[key] += 1
        return {"bytes": len(model), "ops": len(sg.operators), "tensors": len(sg.tensors),
                "name bytes": sum(len(t.name or b"") for t in sg.tensors),
                "constants (count, bytes)": {k: (n[k], by[k]) for k in sorted(by)}}

    for name in ("resnet50", "densenet121"):
        _, case = case_of(name)
        ours = compact(apply_recipe(load_source(case.model).to_float_tflite(1), recipe_for(Precision.FP16)))
        ref = _common.tf_converter(_with_batch(case.model, 1), "fp16")
        a, b = constants(ours), constants(ref)
        print(f"{name} fp16: edgemp {a['bytes']:,} B, TFLiteConverter {b['bytes']:,} B ({a['bytes'] - b['bytes']:+,})")
        for k in a:
            print(f"  {k}: edgemp {a[k]}\n  {'':{len(k)}}  TF     {b[k]}")


def dynamic() -> None:
    for name in ("mobilenetv2_035", "keras_vit", "keras_lstm"):
        _, case = case_of(name)
        flt = load_source(case.model).to_float_tflite(1)
        rec = recipe_for(Precision.DYNAMIC_INT8)
        assert rec is not None
        with_min = [dict(rec[0], op_config=dict(rec[0]["op_config"], min_weight_elements=1024))]
        ref = _common.tf_converter(_with_batch(case.model, 1), "dynamic-int8")
        kept = [(o.op, int(np.prod(w.shape))) for o, w in census(ref).weights() if o.compute == "float32"]
        print(f"{name} dynamic-int8: TFLiteConverter keeps float {dict(collections.Counter(op for op, _ in kept))} "
              f"(weights of at most {max((n for _, n in kept), default=0)} elements)")
        arts = {"edgemp (min_weight_elements=0)": compact(apply_recipe(flt, rec)),
                "edgemp, min_weight_elements=1024": compact(apply_recipe(flt, with_min)),
                "TFLiteConverter dynamic range": ref, "fp32": flt}
        if name == "mobilenetv2_035":
            arts["edgemp, DEPTHWISE_CONV_2D kept float"] = compact(
                apply_recipe(flt, rec + [float_rule(operation="DEPTHWISE_CONV_2D")]))
        compare(case, arts, "TFLiteConverter dynamic range", 5)


def transformer() -> None:
    for name in ("vit_tiny", "torch_transformer"):
        _, case = case_of(name)
        arts = {"edgemp int8": convert(case, "int8"),
                "litert-torch PT2E int8": _common.pt2e_int8(case.model, case.example, case.calib["args_0"],
                                                            case.example.dim() == 4)}
        try:
            arts["edgemp mixed (cosine >= 0.999)"] = convert(case, "mixed", min_cosine=0.999, max_float_layers=0.25)
        except edgemp.errors.MixedPrecisionError as exc:  # budget not met: the artifact is still written
            arts["edgemp mixed (budget not met)"] = exc.result.artifacts["tflite"].read_bytes()
        print(f"{name} int8:")
        compare(case, arts, "litert-torch PT2E int8", 5)


def vit_class_token() -> None:
    import torch

    for init in ("zeros (torchvision's init)", "N(0, 1) (trained-like)"):
        spec, case = case_of("vit_tiny")
        if init.startswith("N"):
            torch.manual_seed(1)
            torch.nn.init.normal_(case.model.class_token, std=1.0)
            case.ref = zoo.reference(spec, case)
        with torch.no_grad():
            m = case.model
            x = m._process_input(torch.from_numpy(case.evalx["args_0"][:16]))
            t = torch.cat([m.class_token.expand(len(x), -1, -1), x], 1) + m.encoder.pos_embedding
        print(f"vit_tiny, class token {init}: |class row| mean {float(t[:, 0].abs().mean()):.4f}, "
              f"|patch rows| max {float(t[:, 1:].abs().max()):.2f}")
        arts = {"edgemp int8": convert(case, "int8"),
                "litert-torch PT2E int8": _common.pt2e_int8(case.model, case.example, case.calib["args_0"], True)}
        for k, a in arts.items():
            f = zoo.fidelity(case, a)
            print(f"  {k:24s} SQNR {f['sqnr_db']:.1f} dB, cosine {f['cosine']:.4f}, top-1 {f['top1_agreement']}")


def lraspp() -> None:
    _, case = case_of("lraspp_mobilenet_v3_large")
    arts = {"edgemp int8": convert(case, "int8"),
            "litert-torch PT2E int8": _common.pt2e_int8(case.model, case.example, case.calib["args_0"], True)}
    for k, a in arts.items():
        c = census(a)
        hs = sorted(((o.compute, o.outputs[0].shape) for o in c.ops if o.op == "HARD_SWISH"),
                    key=lambda t: -int(np.prod(t[1])))
        print(f"  {k}: largest HARD_SWISH {hs[:2]}; float ops "
              f"{[(o.op, o.outputs[0].shape) for o in c.float_compute_ops(True) if o.compute == 'float32'][:6]}")
    compare(case, arts, "litert-torch PT2E int8", 9, 60)


def anchor_crash() -> None:
    import subprocess

    code = ("import sys; sys.path[:0] = {paths!r}; import zoo, _common; from edgemp.sources.keras import _with_batch; "
            "zoo.FIT, zoo.EVAL, _ = zoo.photo_sets(); c = zoo.keras_tokens({kind!r})(); "
            "print(len(_common.tf_converter(_with_batch(c.model, 1), 'int8', c.calib)))")
    paths = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]
    for kind in ("LSTM", "GRU"):
        rc = subprocess.run([sys.executable, "-c", code.format(paths=paths, kind=kind)], capture_output=True).returncode
        print(f"keras_{kind.lower()}: TFLiteConverter int8 PTQ exit code {rc}" + (" (SIGSEGV)" if rc == -11 else ""))


def main() -> None:
    steps = {"anchor-crash": anchor_crash, "fp16": fp16, "dynamic": dynamic, "transformer": transformer, "vit-class-token": vit_class_token,
             "lraspp": lraspp}
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("finding", choices=list(steps))
    args = ap.parse_args()
    zoo.FIT, zoo.EVAL, _ = zoo.photo_sets()
    steps[args.finding]()


if __name__ == "__main__":
    main()
