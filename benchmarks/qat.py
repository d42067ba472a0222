"""Quantization-aware training against post-training quantization, on PyTorch models full-INT8 PTQ hurts.

Models (trained here, 3 epochs, on Fashion-MNIST as raw 0..255 pixels, cached under <EDGEMP_CACHE>/models):
  - sensitive_twin: the PyTorch twin of edgemp.demo's sensitive model (a CNN without batch norm whose head
    L2-normalises its pooled 64-d features, v * rsqrt(sum(v^2) + 1e-6), and joins them with the raw mean brightness
    before the logits): an int8 concatenation has one scale for both, set by the brightness.
  - efficientnet: EfficientNet's MBConv blocks (expand, depthwise, squeeze-excite, project; SiLU; residuals).
  - mobilenetv1: MobileNetV1's depthwise-separable blocks with batch norm and ReLU6 (the architecture the
    quantization white paper reports PTQ hurting most).
  - vit: a tiny pre-norm ViT (7x7 patches, LayerNorm, 4-head attention written out, GELU MLP).
  - pixel_std_mlp: an MLP on inputs standardised per pixel inside the model ((x - mean) / std): the PTQ .tflite
    stores 1/std (0.01 to 10.7) as one int8 tensor with one scale, so most pixels' factors round to 0; QAT folds
    the standardisation into the first Linear's weights.
Float vs PTQ int8 vs mixed (top-1 drop <= 0.3 points, at most 10% of the layers in float) vs QAT int8
(edgemp.prepare_qat + edgemp.finetune_qat on 20,000 training images, then convert at int8): top-1 on the 8,000
held-out test images (the search and the gate see test images 0..1999), float layers, size, host latency (side by
side, 1 thread, medians), training time. A model whose QAT does not complete is reported with edgemp's error.

    source scripts/env.sh && python benchmarks/qat.py     # ~5 min on 2 cores the first time (training)
Writes benchmarks/results/qat.{json,md}.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import write_results, cpu_description, side_by_side_latency, work_dir  # noqa: E402

SEARCH, HELD_OUT = slice(0, 2000), slice(2000, None)
VERSION = "v1"
KINDS = ("sensitive_twin", "sensitive_twin_clamped", "efficientnet", "mobilenetv1", "vit", "pixel_std_mlp")
TUNED = "fp32 + QAT's fine-tuning"  # the float model trained as much as QAT trains it, without quantization
QAT_ROWS: dict[str, dict[str, Any]] = {  # row -> prepare_qat's options
    "qat int8": {},  # the defaults: output-error weight ranges (calibration is given), observed activation ranges
    "qat int8 (moving-average weight ranges)": {"weight_ranges": "moving_average"},  # PT2E's own weight observers
    "qat int8 (learned ranges)": {"learn_ranges": True, "weight_ranges": "moving_average"},
}


def build(kind: str) -> Any:
    import torch
    from torch import nn

    class JoinCNN(nn.Module):
        """The sensitive model's architecture: conv features on x/255, a bounded embedding, raw brightness."""

        def __init__(self, floor: float = 1e-6, clamped: bool = False) -> None:
            super().__init__()
            self.floor, self.clamped = floor, clamped
            layers: list[nn.Module] = [nn.Conv2d(1, 32, 3, stride=2, padding=1), nn.ReLU(),
                                       nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            for cin in (32, 64, 64):
                layers += [nn.Conv2d(cin, 64, 3, padding=1), nn.ReLU()]
            layers.append(nn.MaxPool2d(2))
            for _ in range(4):
                layers += [nn.Conv2d(64, 64, 3, padding=1), nn.ReLU()]
            self.features = nn.Sequential(*layers)
            self.logits = nn.Linear(65, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            f = self.features(x / 255.0).mean(dim=(2, 3))
            sq = (f * f).sum(dim=1, keepdim=True)
            f = f * torch.rsqrt(torch.clamp(sq, min=self.floor) if self.clamped else sq + self.floor)
            return self.logits(torch.cat([f, x.mean(dim=(2, 3))], dim=1))

    class SE(nn.Module):
        def __init__(self, c: int, r: int = 4) -> None:
            super().__init__()
            self.reduce, self.expand = nn.Conv2d(c, max(8, c // r), 1), nn.Conv2d(max(8, c // r), c, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            s = x.mean(dim=(2, 3), keepdim=True)
            return x * torch.sigmoid(self.expand(nn.functional.silu(self.reduce(s))))

    class MBConv(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int, expand: int = 4) -> None:
            super().__init__()
            mid = cin * expand
            self.body = nn.Sequential(nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.SiLU(),
                                      nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False), nn.BatchNorm2d(mid),
                                      nn.SiLU(), SE(mid), nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))
            self.skip = stride == 1 and cin == cout

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.body(x) if self.skip else self.body(x)

    class TinyEfficientNet(nn.Module):
        """EfficientNet's block (MBConv: expand, depthwise, squeeze-excite, project; SiLU; residuals)."""

        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.SiLU())
            self.blocks = nn.Sequential(MBConv(16, 16, 1), MBConv(16, 24, 2), MBConv(24, 24, 1), MBConv(24, 40, 1),
                                        MBConv(40, 40, 1))
            self.head = nn.Sequential(nn.Conv2d(40, 128, 1, bias=False), nn.BatchNorm2d(128), nn.SiLU())
            self.logits = nn.Linear(128, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.logits(self.head(self.blocks(self.stem(x / 255.0))).mean(dim=(2, 3)))

    class TinyMobileNetV1(nn.Module):
        """MobileNetV1's depthwise-separable blocks (depthwise 3x3 + BN + ReLU6, pointwise 1x1 + BN + ReLU6)."""

        def __init__(self) -> None:
            super().__init__()
            def dws(cin: int, cout: int, stride: int) -> list[nn.Module]:
                return [nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin), nn.ReLU6(),
                        nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU6()]
            self.features = nn.Sequential(nn.Conv2d(1, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6(),
                                          *dws(32, 64, 1), *dws(64, 128, 2), *dws(128, 128, 1), *dws(128, 256, 1),
                                          *dws(256, 256, 1))
            self.logits = nn.Linear(256, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.logits(self.features(x / 255.0).mean(dim=(2, 3)))

    class Attention(nn.Module):
        def __init__(self, dim: int, heads: int) -> None:
            super().__init__()
            self.h, self.d = heads, dim // heads
            self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b, n, c = x.shape
            q, k, v = self.qkv(x).reshape(b, n, 3, self.h, self.d).permute(2, 0, 3, 1, 4)
            att = torch.softmax(torch.matmul(q, k.transpose(-2, -1)) * self.d ** -0.5, dim=-1)
            return self.proj(torch.matmul(att, v).transpose(1, 2).reshape(b, n, c))

    class Block(nn.Module):
        def __init__(self, dim: int, heads: int, mlp: int) -> None:
            super().__init__()
            self.n1, self.n2, self.attn = nn.LayerNorm(dim), nn.LayerNorm(dim), Attention(dim, heads)
            self.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.GELU(), nn.Linear(mlp, dim))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x + self.attn(self.n1(x))
            return x + self.mlp(self.n2(x))

    class TinyViT(nn.Module):
        """A pre-norm ViT: 7x7 patches (16 tokens), learned positions, 2 blocks of 4-head attention + GELU MLP."""

        def __init__(self, dim: int = 64) -> None:
            super().__init__()
            self.embed = nn.Conv2d(1, dim, 7, stride=7)
            self.pos = nn.Parameter(torch.randn(1, 16, dim) * 0.02)
            self.blocks = nn.Sequential(Block(dim, 4, 2 * dim), Block(dim, 4, 2 * dim))
            self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            t = self.embed(x / 255.0).flatten(2).transpose(1, 2) + self.pos
            return self.head(self.norm(self.blocks(t)).mean(dim=1))

    class PixelStdMLP(nn.Module):
        """An MLP on per-pixel standardised inputs, the standardisation inside the model ((x - mean) / std with the
        training set's per-pixel statistics, as sklearn's StandardScaler gives them)."""

        def __init__(self) -> None:
            super().__init__()
            from edgemp.demo import fashion_mnist

            pixels = fashion_mnist("train")[0].reshape(-1, 784) * 255.0
            self.register_buffer("mean", torch.from_numpy(pixels.mean(0, keepdims=True)))
            self.register_buffer("std", torch.from_numpy(pixels.std(0, keepdims=True) + 1e-3))
            self.net = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net((x.flatten(1) - self.mean) / self.std)

    return {"sensitive_twin": JoinCNN, "sensitive_twin_clamped": lambda: JoinCNN(floor=1.0, clamped=True),
            "efficientnet": TinyEfficientNet, "mobilenetv1": TinyMobileNetV1, "vit": TinyViT,
            "pixel_std_mlp": PixelStdMLP}[kind]()


def trained(kind: str, x: np.ndarray, y: np.ndarray, epochs: int = 3) -> tuple[Any, float | None]:
    """Adam 1e-3, batch 128, `epochs` over the 60,000 training images, once (cached); (model, seconds or None)."""
    import torch

    from edgemp.demo import cache_dir, trained_torch

    torch.manual_seed(0)  # the same initial weights every time
    path = cache_dir() / "models" / f"qat_bench_{kind}_{VERSION}_e{epochs}.pt"
    fresh = not path.exists()
    t0 = time.perf_counter()
    model = trained_torch(build(kind), path, lambda: (x, y), epochs)
    return model, round(time.perf_counter() - t0, 1) if fresh else None


def float_finetuned(model: Any, x: np.ndarray, y: np.ndarray, epochs: int = 2) -> Any:
    """A copy of `model` given the fine-tuning QAT gets (finetune_qat's optimizer and schedule, same data and batch
    size), without quantization: what the extra training alone is worth."""
    import copy

    import torch

    m = copy.deepcopy(model).train()
    torch.manual_seed(0)
    xt, yt = torch.from_numpy(np.ascontiguousarray(x, np.float32)), torch.from_numpy(y).long()
    steps = epochs * ((len(xt) + 63) // 64)
    opt = torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    for _ in range(epochs):
        order = torch.randperm(len(xt))
        for i in range(0, len(xt), 64):
            idx = order[i : i + 64]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(m(xt[idx]), yt[idx]).backward()
            opt.step()
            sched.step()
    return m.eval()


def top1(tflite: bytes, x: np.ndarray, y: np.ndarray) -> float:
    from edgemp.validation.metrics import topk
    from edgemp.validation.runtime import Runner

    runner = Runner(tflite)
    name = runner.inputs[0].name
    return float(topk(runner.run({name: np.ascontiguousarray(x.transpose(0, 2, 3, 1))})[0], y, 1))


def one(kind: str, data: dict[str, Any], work: Path) -> dict[str, Any]:
    import torch

    import edgemp
    from edgemp.targets.tflite.census import census

    model, train_s = trained(kind, data["x_train"], data["y_train"])
    x0 = torch.zeros(1, 1, 28, 28)
    common: dict[str, Any] = {"progress": False, "preprocessing": {"scale": 1.0},
                              "runtime": edgemp.RuntimeOptions(latency_runs=0)}
    search = (data["x_test"][SEARCH], data["y_test"][SEARCH])
    xh, yh = data["x_test"][HELD_OUT], data["y_test"][HELD_OUT]
    cal = data["x_train"][:200]
    rows: dict[str, dict[str, Any]] = {}
    arts: dict[str, bytes] = {}
    for precision in ("fp32", "int8", "mixed"):
        try:
            r = edgemp.convert(model, precision, cal, search, work / f"{kind}-{precision}", example_input=x0,
                               gate=edgemp.GateOptions(max_accuracy_drop=0.003), **common)
            path = r.artifacts["tflite"]
            extra = {"float_layers": r.report["mixed"]["float_layers"]} if precision == "mixed" else {}
        except edgemp.errors.MixedPrecisionError as exc:
            path, extra = Path(exc.result.artifacts["tflite"]), {"float_layers": exc.report["mixed"]["float_layers"],
                                                                 "note": "budget not met"}
        arts[precision] = path.read_bytes()
        rows[precision] = extra
    tuned = float_finetuned(model, data["x_train"][:20000], data["y_train"][:20000])
    r = edgemp.convert(tuned, "fp32", cal, search, work / f"{kind}-fp32-tuned", example_input=x0, **common)
    arts[TUNED] = r.artifacts["tflite"].read_bytes()
    rows[TUNED] = {}
    for i, (row, options) in enumerate(QAT_ROWS.items()):
        t0 = time.perf_counter()
        try:
            torch.manual_seed(0)
            qat = edgemp.prepare_qat(model, x0, cal, preprocessing={"scale": 1.0}, progress=False, **options)
            edgemp.finetune_qat(qat, (data["x_train"][:20000], data["y_train"][:20000]), epochs=2, lr=1e-3,
                                progress=False)
            q = edgemp.convert(qat, "int8", None, search, work / f"{kind}-qat-{i}", **common)
            arts[row] = q.artifacts["tflite"].read_bytes()
            rows[row] = {"training_s": round(time.perf_counter() - t0, 1), "float_layers": []}
        except edgemp.errors.EdgempError as exc:
            rows[row] = {"error": f"{type(exc).__name__}: {exc}", "training_s": round(time.perf_counter() - t0, 1)}
    lat = side_by_side_latency(arts, np.zeros((1, 28, 28, 1), np.float32), rounds=15)
    for name, art in arts.items():
        c = census(art)
        rows[name] |= {"top1": round(top1(art, xh, yh), 4), "bytes": len(art), "latency_ms": round(lat[name], 4),
                       "compute": dict(c.compute_counts)}
    fl = rows["fp32"]["top1"]
    for r in rows.values():
        if "top1" in r:
            r["drop_points"] = round(100 * (fl - r["top1"]), 2)
    return {"model": kind, "float_training_s": train_s, "rows": rows}


def main() -> None:
    from edgemp.demo import fashion_mnist

    warnings.simplefilter("ignore")
    xtr, ytr = fashion_mnist("train")
    xte, yte = fashion_mnist("test")
    nchw = lambda a: np.ascontiguousarray(a.transpose(0, 3, 1, 2)) * 255.0  # noqa: E731 - raw 0..255 pixels
    data = {"x_train": nchw(xtr), "y_train": ytr, "x_test": nchw(xte), "y_test": yte}
    work = work_dir("edgemp-qat-bench-")
    run = sys.argv[1:] or list(KINDS)
    # models not run this time keep their rows from the last run (each model's rows are one side-by-side run, dated)
    old = Path(__file__).parent / "results" / "qat.json"
    kept = {m["model"]: m for m in (json.loads(old.read_text())["models"] if old.exists() else [])}
    for k in run:
        kept[k] = one(k, data, work) | {"date": time.strftime("%Y-%m-%d")}
    out = {"host": cpu_description(), "models": [kept[k] for k in KINDS if k in kept]}
    write_results("qat", out, to_markdown(out))


def to_markdown(d: dict[str, Any]) -> str:
    lines = ["# QAT vs PTQ vs mixed (top-1 on 8,000 held-out Fashion-MNIST test images)", "",
             "| model | artifact | top-1 | drop (points) | layers in float | ops by compute | bytes | latency ms | "
             "training s | note |", "|---|---|---|---|---|---|---|---|---|---|"]
    for m in d["models"]:
        for name, r in m["rows"].items():
            if "top1" not in r:
                lines.append(f"| {m['model']} | {name} | – | – | – | – | – | – | {r.get('training_s', '')} | "
                             f"{r.get('error', '')} |")
                continue
            fl = "all" if name.startswith("fp32") else (", ".join(r.get("float_layers", [])) or "none")
            comp = ", ".join(f"{k} {v}" for k, v in r["compute"].items())
            lines.append(f"| {m['model']} | {name} | {r['top1']:.4f} | {r['drop_points']:+.2f} | {fl} | {comp} | "
                         f"{r['bytes']:,} | {r['latency_ms']} | {r.get('training_s', '')} | {r.get('note', '')} |")
    lines += ["", f"Host: {d['host']}. Latency: 15 interleaved rounds of 50 invokes, batch 1, 1 thread, XNNPACK"
              + (f" ({d['latency_note']})" if d.get("latency_note") else "") + ". "
              "Drops are against `fp32` (the model as trained); each model's rows are one run: "
              + ", ".join(f"{m['model']} {m.get('date', 'before 2026-12-02')}" for m in d["models"]) + ".",
              "", "## Target", "",
              "Where PTQ loses more than 5 points, QAT int8 within 0.3 points of float with zero float layers."]
    for m in d["models"]:
        rows, p = m["rows"], m["rows"]["int8"]
        for row in (r for r in QAT_ROWS if r in rows):
            q = rows[row]
            if "top1" not in q:
                lines.append(f"- {m['model']}, {row}: PTQ loses {p['drop_points']:.2f} points; QAT did not complete: "
                             f"{q['error']}")
                continue
            tuned = rows.get(TUNED, {}).get("top1")
            vs = (f" ({100 * (q['top1'] - tuned):+.2f} against the float model given the same fine-tuning)"
                  if tuned is not None else "")
            if p["drop_points"] <= 5:
                lines.append(f"- {m['model']}, {row}: PTQ loses {p['drop_points']:.2f} points (not PTQ-hostile: the "
                             f"target does not apply); QAT {-q['drop_points']:+.2f} points{vs}, fully integer.")
                continue
            ok = q["drop_points"] <= 0.3 and set(q["compute"]) <= {"int8"}
            lines.append(f"- {m['model']}, {row}: PTQ loses {p['drop_points']:.2f} points; QAT {-q['drop_points']:+.2f} "
                         f"points{vs}, no float layer: **{'met' if ok else 'not met'}**.")
    lines += ["", "QAT's fine-tuning is 2 more epochs (on 20,000 training images) for models the float run trained for 3; "
              f"the `{TUNED}` row gives the float model exactly that training without quantization, so QAT's own "
              "effect is its distance to that row.", "",
              "sensitive_twin computes v * rsqrt(sum(v^2) + 1e-6) in its head. Fake-quantized as the int8 model computes "
              "it, the sum of squares gets one int8 scale for the whole range of sums, so a short embedding's sum rounds "
              "to 0, where TFLite's int8 RSQRT gives its largest value; edgemp's QAT graph does the same (a floor on "
              "rsqrt's quantized input, dropped at export), where plain fake quantization gives rsqrt(0) = inf and a NaN "
              "loss at step 0. sensitive_twin_clamped is the same model with the denominator written "
              "max(sum(v^2), 1) (embeddings shorter than 1 are left as they are), trained the same way. On both, PTQ "
              "loses about 5 points or more because the concatenation's one int8 scale is set by the raw brightness it "
              "joins. prepare_qat splits a concatenation that feeds a Linear into one Linear per part, added (exact "
              "in float), so each part keeps its own scale: converted before any training, sensitive_twin's QAT module "
              "gives 0.8495 (float 0.8501, PTQ 0.6733). Fine-tuning then needs weight ranges that follow the weights: "
              "with PT2E's moving-average weight observers (the `moving-average weight ranges` row) the brightness's "
              "one-weight channels drift out of their lagging ranges and the model falls to 0.63 (its trained float "
              "weights too: 0.57 on 2,000 test images); the default ranges (output error, from the current weights) "
              "keep it, as min/max of the current weights does (0.8696, measured once). `learned ranges` trains the "
              "activation scales too (prepare_qat(learn_ranges=True), LSQ), here with the moving-average weight "
              "ranges.", "",
              "pixel_std_mlp standardises each pixel inside the model; the PTQ .tflite stores 1/std (0.01 to 10.7) "
              "as one int8 tensor with one scale, which rounds most pixels' factors to 0, and mixed keeps that one "
              "MUL in float. QAT folds the standardisation into the first Linear (W * 1/std, b - W @ (mean/std), "
              "computed from the trainable W) so it is in per-channel int8 weights that training adjusts: 4 int8 "
              "ops, no MUL or SUB. The last points are lost to the weight ranges (benchmarks/results/"
              "qat_weight_ranges.md): pixels that rarely vary (1/std up to 10.7) fold into columns that set each "
              "output channel's min/max weight scale, and 75% of the first Linear's int8 weights round to 0; ranges "
              "chosen for the layer's output error (the default) keep the float accuracy. Before the fold QAT "
              "gave 0.5397. LayerNorm's weight and bias are trainable parameters and are not folded (the ViT rows are "
              "the same as before the fold; folding them too gave 0.8650 and, with learned ranges, 0.8403).", "",
              "Trained honestly on this data, the EfficientNet and MobileNetV1 blocks and the tiny ViT lose under "
              "0.1 point with PTQ "
              "(per-channel weights); so did a batch-normalised CNN joined with the raw brightness (0.27 points), a "
              "tanh-bounded join and a ReZero residual net: on those QAT shows it works, not that it wins."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
