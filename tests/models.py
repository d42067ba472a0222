"""Small models of the families teams ship, trained on real offline data (sklearn digits) and cached.

Each is tiny (seconds to train on 2 cores) but real: trained to well above chance, so fidelity and accuracy
figures mean something. Cached under $EDGEMP_CACHE/models/tests/ (git-ignored); bump VERSION to retrain.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import numpy as np

from edgemp._compat import prepare_torch_import
from edgemp.demo import cache_dir

prepare_torch_import()  # Triton before TensorFlow (edgemp._compat): these models import both

VERSION = "v2"
N_TRAIN = 1400  # the rest of the 1797 digits is held out


def _cache(name: str) -> Path:
    p = cache_dir() / "models" / "tests" / f"{name}_{VERSION}"
    p.parent.mkdir(parents=True, exist_ok=True)
    return p


def _atomic_save(save: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.stem}.{os.getpid()}{path.suffix}")
    save(tmp)
    os.replace(tmp, path)


@functools.cache
def digits() -> tuple[np.ndarray, np.ndarray]:
    """(x (1797, 8, 8, 1) float32 in [0, 1], y int64)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images / 16.0).astype(np.float32)[..., None], d.target.astype(np.int64)


def digit_tokens() -> tuple[np.ndarray, np.ndarray]:
    """Each image as a sequence of 8 row tokens of 8 features: (N, 8, 8)."""
    x, y = digits()
    return x[..., 0], y


def split(x: np.ndarray, y: Any) -> tuple[tuple[np.ndarray, Any], tuple[np.ndarray, Any]]:
    return (x[:N_TRAIN], y[:N_TRAIN]), (x[N_TRAIN:], y[N_TRAIN:])


# -- Keras ------------------------------------------------------------------------------------------------
def _keras_fit(build: Any, x: np.ndarray, y: np.ndarray, name: str, epochs: int) -> Any:
    from edgemp.sources.keras import import_tf

    import_tf()
    import keras

    path = _cache(name).with_suffix(".keras")
    if path.exists():
        return keras.saving.load_model(path, compile=False)
    keras.utils.set_random_seed(0)
    model = build()
    model.compile(optimizer=keras.optimizers.Adam(3e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    model.fit(x[:N_TRAIN], y[:N_TRAIN], batch_size=64, epochs=epochs, verbose=0)
    _atomic_save(model.save, path)
    return model


def keras_vit() -> Any:
    """A ViT-style encoder block on row tokens: Dense embedding, LayerNormalization, MultiHeadAttention, GELU MLP."""
    import keras
    from keras import layers

    def build() -> Any:
        inp = keras.Input((8, 8), name="tokens")
        x = layers.Dense(32, name="embed")(inp)
        h = layers.LayerNormalization(name="ln1")(x)
        h = layers.MultiHeadAttention(num_heads=2, key_dim=16, name="attn")(h, h)
        x = layers.Add(name="res1")([x, h])
        h = layers.LayerNormalization(name="ln2")(x)
        h = layers.Dense(64, activation="gelu", name="mlp1")(h)
        h = layers.Dense(32, name="mlp2")(h)
        x = layers.Add(name="res2")([x, h])
        x = layers.GlobalAveragePooling1D(name="pool")(x)
        return keras.Model(inp, layers.Dense(10, name="logits")(x), name="tiny_vit")

    x, y = digit_tokens()
    return _keras_fit(build, x, y, "keras_vit", epochs=30)


def keras_rnn(kind: str = "LSTM", unroll: bool = False) -> Any:
    """A recurrent classifier over row tokens (Keras lowers it to a WHILE loop unless unrolled)."""
    import keras
    from keras import layers

    def build() -> Any:
        inp = keras.Input((8, 8), name="tokens")
        rnn = getattr(layers, kind)(32, unroll=unroll, name=kind.lower())(inp)
        return keras.Model(inp, layers.Dense(10, name="logits")(rnn), name=f"{kind.lower()}_classifier")

    x, y = digit_tokens()
    return _keras_fit(build, x, y, f"keras_{kind.lower()}{'_unrolled' if unroll else ''}", epochs=25)


# -- PyTorch ----------------------------------------------------------------------------------------------
def keras_twin_of_torch_example(torch_model: Any) -> Any:
    """The PyTorch example rebuilt in Keras with the same weights (NHWC): same numbers, native TFLite layout.

    Converting both and comparing op census and latency is how the benchmarks show that a PyTorch-sourced
    artifact pays no layout tax.
    """
    from edgemp.sources.keras import import_tf

    import_tf()
    import keras
    from keras import layers
    from torch import nn

    mods = list(torch_model)
    inp = keras.Input((28, 28, 1), name="image")
    x, weights = inp, []
    for m in mods:
        if isinstance(m, nn.Conv2d):
            conv = layers.Conv2D(m.out_channels, m.kernel_size, padding="same", use_bias=m.bias is not None)
            x = conv(x)
            weights.append((conv, [m.weight.detach().numpy().transpose(2, 3, 1, 0)]
                            + ([m.bias.detach().numpy()] if m.bias is not None else [])))
        elif isinstance(m, nn.BatchNorm2d):
            bn = layers.BatchNormalization(epsilon=m.eps)
            x = bn(x)
            weights.append((bn, [t.detach().numpy() for t in (m.weight, m.bias, m.running_mean, m.running_var)]))
        elif isinstance(m, nn.ReLU):
            x = layers.ReLU()(x)
        elif isinstance(m, nn.MaxPool2d):
            x = layers.MaxPooling2D(m.kernel_size)(x)
        elif isinstance(m, nn.AdaptiveAvgPool2d):
            x = layers.GlobalAveragePooling2D()(x)
        elif isinstance(m, nn.Flatten):
            continue
        elif isinstance(m, nn.Linear):
            dense = layers.Dense(m.out_features)
            x = dense(x)
            weights.append((dense, [m.weight.detach().numpy().T, m.bias.detach().numpy()]))
        else:
            raise TypeError(f"no Keras twin for {type(m).__name__}")
    model = keras.Model(inp, x, name="fashion_cnn_torch_twin")
    for layer, w in weights:
        layer.set_weights(w)
    return model



def _torch_fit(model: Any, name: str, batches: Any, loss_fn: Any, steps: int, lr: float = 3e-3,
               train: Any = None) -> Any:
    """Train `model` (through `train(model)`, a module sharing its parameters, when given) once; cache its weights."""
    import torch

    path = _cache(name).with_suffix(".pt")
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    torch.manual_seed(0)
    net = train(model) if train is not None else model
    opt = torch.optim.Adam(net.parameters(), lr)
    net.train()
    for step in range(steps):
        xb, yb = batches(step)
        opt.zero_grad()
        loss_fn(net(xb), yb).backward()
        opt.step()
    model.eval()
    _atomic_save(lambda p: torch.save(model.state_dict(), p), path)
    return model


def _sampler(x: np.ndarray, y: Any, batch: int = 64) -> Any:
    import torch

    rng = np.random.default_rng(0)
    xs = torch.from_numpy(np.ascontiguousarray(x[:N_TRAIN]))
    ys = y[:N_TRAIN] if isinstance(y, torch.Tensor) else torch.from_numpy(np.asarray(y[:N_TRAIN]))

    def batches(_: int) -> tuple[Any, Any]:
        idx = torch.from_numpy(rng.integers(0, len(xs), batch))
        return xs[idx], ys[idx]

    return batches


def torch_transformer() -> Any:
    """nn.TransformerEncoder (pre-norm, batch_first) over row tokens, mean-pooled, linear head."""
    import torch
    from torch import nn

    class TokenClassifier(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Linear(8, 32)
            layer = nn.TransformerEncoderLayer(32, 2, 64, dropout=0.0, batch_first=True, norm_first=True)
            self.encoder = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
            self.head = nn.Linear(32, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.encoder(self.embed(x)).mean(dim=1))

    x, y = digit_tokens()
    return _torch_fit(TokenClassifier(), "torch_transformer", _sampler(x, y), nn.CrossEntropyLoss(), 2000)


def segmentation_data() -> tuple[np.ndarray, np.ndarray]:
    """Digits upsampled to 16x16 (NCHW) with label maps: the digit's class where ink is, background (10) elsewhere."""
    x, y = digits()
    img = np.repeat(np.repeat(x[..., 0], 2, axis=1), 2, axis=2)  # (N, 16, 16)
    labels = np.where(img > 0.3, y[:, None, None], 10).astype(np.int64)
    return np.ascontiguousarray(img[:, None]), labels


def torch_segmenter() -> Any:
    """A tiny FCN whose forward returns {"out": ..., "aux": ...} as torchvision's segmentation models do."""
    import torch
    from torch import nn

    class TinyFCN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=2,
                                                                                                  dilation=2), nn.ReLU())
            self.classifier = nn.Conv2d(32, 11, 1)
            self.aux_classifier = nn.Conv2d(16, 11, 1)

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            f1 = self.backbone[1](self.backbone[0](x))
            f2 = self.backbone[3](self.backbone[2](f1))
            return {"out": self.classifier(f2), "aux": self.aux_classifier(f1)}

    x, labels = segmentation_data()

    def loss(out: dict[str, Any], yb: Any) -> Any:
        ce = nn.CrossEntropyLoss()
        return ce(out["out"], yb) + 0.4 * ce(out["aux"], yb)

    return _torch_fit(TinyFCN(), "torch_segmenter", _sampler(x, labels), loss, 1500)


# Detection scenes: one digit on a 32x32 canvas, a 4x4 grid of anchors (8 px cells). Boxes are given in the pixels
# of the original 320x320 photo the canvas was downscaled from (as detectors report them), scores in [0, 1].
CANVAS, CELL, ORIGINAL = 32, 8, 10


def detection_data(n: int = 1797, seed: int = 0) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Scenes (N, 1, 32, 32) with one digit (8 or 16 px) each, and targets [{"box": [x0, y0, x1, y1], "label": k}]."""
    x, y = digits()
    rng = np.random.default_rng(seed)
    scenes = np.zeros((n, 1, CANVAS, CANVAS), np.float32)
    targets = []
    for i in range(n):
        d = x[i % len(x), ..., 0]
        scale = int(rng.integers(1, 3))
        d = np.repeat(np.repeat(d, scale, 0), scale, 1)
        s = d.shape[0]
        x0, y0 = (int(v) for v in rng.integers(0, CANVAS - s + 1, 2))
        scenes[i, 0, y0 : y0 + s, x0 : x0 + s] = d
        box = [float(v) * ORIGINAL for v in (x0, y0, x0 + s, y0 + s)]
        targets.append({"box": box, "label": int(y[i % len(x)])})
    return scenes, targets


def _anchor_targets(targets: list[dict[str, Any]]) -> tuple[Any, Any]:
    """Per anchor: class (10 = background) and box (cx, cy, w, h) in canvas pixels for the anchor holding the center."""
    import torch

    g = CANVAS // CELL
    cls = torch.full((len(targets), g * g), 10, dtype=torch.long)
    box = torch.zeros((len(targets), g * g, 4))
    for i, t in enumerate(targets):
        x0, y0, x1, y1 = (v / ORIGINAL for v in t["box"])
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        a = int(min(cy // CELL, g - 1)) * g + int(min(cx // CELL, g - 1))
        cls[i, a] = t["label"]
        box[i, a] = torch.tensor([cx, cy, x1 - x0, y1 - y0])
    return cls, box


class _Detector:  # namespace for the torch classes (torch is imported lazily)
    @staticmethod
    def classes() -> tuple[type, type, type]:
        import torch
        from torch import nn

        class TinySSD(nn.Module):
            """SSD-style head: per anchor of a 4x4 grid, box (cx, cy, w, h) and 11 class scores."""

            def __init__(self) -> None:
                super().__init__()
                self.features = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                              nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                              nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
                self.box_head = nn.Conv2d(32, 4, 3, padding=1)
                self.cls_head = nn.Conv2d(32, 11, 3, padding=1)
                g = CANVAS // CELL
                ys, xs = torch.meshgrid(torch.arange(g), torch.arange(g), indexing="ij")
                centers = torch.stack([xs, ys], -1).reshape(1, g * g, 2).float() * CELL + CELL / 2
                self.register_buffer("centers", centers)

            def raw(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                """Boxes in canvas pixels and class logits (what training sees)."""
                f = self.features(x)
                n = x.shape[0]
                d = self.box_head(f).flatten(2).transpose(1, 2)  # (N, 16, 4): center offsets and sizes
                boxes = torch.cat([self.centers + d[..., :2] * CELL, torch.sigmoid(d[..., 2:]) * 3 * CELL], -1)
                return boxes, self.cls_head(f).flatten(2).transpose(1, 2).reshape(n, -1, 11)

            def decoded(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                boxes, logits = self.raw(x)
                return boxes * ORIGINAL, torch.softmax(logits, -1)

            def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
                boxes, scores = self.decoded(x)
                return {"boxes": boxes, "scores": scores}

        class ConcatSSD(nn.Module):
            """The same network with one output holding boxes (pixels) and scores (probabilities) side by side."""

            def __init__(self, ssd: Any) -> None:
                super().__init__()
                self.ssd = ssd

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return torch.cat(self.ssd.decoded(x), -1)

        class NMSSSD(nn.Module):
            """The same network with NMS inside forward(): data-dependent output size."""

            def __init__(self, ssd: Any) -> None:
                super().__init__()
                self.ssd = ssd

            def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                import torchvision

                boxes, probs = self.ssd.decoded(x)
                scores = probs[0, :, :10].max(-1).values
                xyxy = torch.cat([boxes[0, :, :2] - boxes[0, :, 2:] / 2, boxes[0, :, :2] + boxes[0, :, 2:] / 2], -1)
                keep = torchvision.ops.nms(xyxy, scores, 0.5)
                return xyxy[keep], scores[keep]

        return TinySSD, ConcatSSD, NMSSSD


def torch_detector() -> Any:
    import torch
    from torch import nn

    tiny_ssd, _, _ = _Detector.classes()
    x, targets = detection_data()
    cls, box = _anchor_targets(targets)
    xs = torch.from_numpy(x[:N_TRAIN])
    rng = np.random.default_rng(1)

    def batches(_: int) -> tuple[Any, Any]:
        idx = torch.from_numpy(rng.integers(0, N_TRAIN, 64))
        return xs[idx], (cls[idx], box[idx])

    def loss(out: Any, yb: Any) -> Any:
        c, b = yb
        boxes, logits = out
        pos = c < 10
        box_loss = nn.functional.smooth_l1_loss(boxes[pos], b[pos]) / CELL
        return nn.functional.cross_entropy(logits.reshape(-1, 11), c.reshape(-1)) + box_loss

    class Train(nn.Module):  # trains through raw() (logits) and shares the detector's parameters
        def __init__(self, m: Any) -> None:
            super().__init__()
            self.m = m

        def forward(self, xb: Any) -> Any:
            return self.m.raw(xb)

    torch.manual_seed(0)
    return _torch_fit(tiny_ssd(), "torch_detector", batches, loss, 1500, train=Train)


def torch_concat_detector() -> Any:
    _, concat_ssd, _ = _Detector.classes()
    return concat_ssd(torch_detector()).eval()


def torch_nms_detector() -> Any:
    _, _, nms_ssd = _Detector.classes()
    return nms_ssd(torch_detector()).eval()


def detection_accuracy(outputs: dict[str, np.ndarray], targets: list[dict[str, Any]]) -> float:
    """The user's metric of the detection example: the share of scenes whose most confident anchor has the right
    class and a box with IoU >= 0.5 (one object per scene). Works on {"boxes", "scores"} or one concatenated output."""
    if "boxes" in outputs:
        boxes, scores = outputs["boxes"], outputs["scores"]
    else:
        both = next(iter(outputs.values()))
        boxes, scores = both[..., :4], both[..., 4:]
    hits = 0
    for b, s, t in zip(boxes, scores, targets, strict=True):
        fg = s[:, :10]
        a = int(np.argmax(fg.max(-1)))
        cx, cy, w, h = b[a]
        box = np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
        gt = np.asarray(t["box"])
        iw = max(0.0, min(box[2], gt[2]) - max(box[0], gt[0]))
        ih = max(0.0, min(box[3], gt[3]) - max(box[1], gt[1]))
        inter = iw * ih
        iou = inter / ((box[2] - box[0]) * (box[3] - box[1]) + (gt[2] - gt[0]) * (gt[3] - gt[1]) - inter + 1e-9)
        hits += int(np.argmax(fg[a]) == t["label"] and iou >= 0.5)
    return hits / len(targets)


def torch_digits_cnn() -> Any:
    """A small CNN (two convolutions with batch norm, a linear head) on 8x8 digits, NCHW: trains in seconds."""
    import torch
    from torch import nn

    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(32, 10))
    x, y = digits()
    return _torch_fit(model, "torch_digits_cnn", _sampler(np.ascontiguousarray(x.transpose(0, 3, 1, 2)), y),
                      nn.CrossEntropyLoss(), 1500)


def torch_digits_join(clamped: bool = True) -> Any:
    """A PTQ-hostile model (edgemp.demo's sensitive model, small): conv features L2-normalised, joined with the raw
    brightness of 0..255 pixels; int8's one scale for the concatenation is set by the brightness and leaves the
    features a few levels. Full-INT8 PTQ loses about 6 points on digits. `clamped`: the denominator is max(sum, 1)
    (else sum + 1e-6, which int8 rounds to 0 for short vectors: TFLite's RSQRT saturates there)."""
    import torch
    from torch import nn

    class Join(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1),
                                          nn.ReLU())
            self.logits = nn.Linear(33, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            f = self.features(x / 255.0).mean(dim=(2, 3))
            sq = (f * f).sum(dim=1, keepdim=True)
            f = f * torch.rsqrt(torch.clamp(sq, min=1.0) if clamped else sq + 1e-6)
            return self.logits(torch.cat([f, x.mean(dim=(2, 3))], dim=1))

    x, y = digits()
    return _torch_fit(Join(), "torch_digits_join" if clamped else "torch_digits_join_eps", _sampler(np.ascontiguousarray(x.transpose(0, 3, 1, 2)) * 255.0, y),
                      nn.CrossEntropyLoss(), 1500)


def keras_digits_cnn() -> Any:
    def build() -> Any:
        import keras
        from keras import layers

        inp = keras.Input((8, 8, 1), name="image")
        t = layers.Conv2D(16, 3, padding="same", activation="relu", name="c1")(inp)
        t = layers.Conv2D(32, 3, padding="same", activation="relu", name="c2")(t)
        t = layers.GlobalAveragePooling2D(name="gap")(t)
        return keras.Model(inp, layers.Dense(10, name="logits")(t), name="digits_cnn")

    x, y = digits()
    return _keras_fit(build, x, y, "keras_digits_cnn", 40)


def keras_digits_mlp() -> Any:
    """A two-layer perceptron on the flattened 8x8 digits: the second, different model a grid (edgemp.sweep) needs."""
    def build() -> Any:
        import keras
        from keras import layers

        inp = keras.Input((8, 8, 1), name="image")
        t = layers.Dense(32, activation="relu", name="hidden")(layers.Flatten(name="flat")(inp))
        return keras.Model(inp, layers.Dense(10, name="logits")(t), name="digits_mlp")

    x, y = digits()
    return _keras_fit(build, x, y, "keras_digits_mlp", 30)
