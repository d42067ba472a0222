"""Helpers shared by the benchmark scripts: side-by-side latency, a description of the host CPU, real photos for
batch-norm statistics and calibration, and the official converters' own paths (the anchors edgemp is judged by)."""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import io
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgemp.config import RuntimeOptions
from edgemp.validation.runtime import make_interpreter


def work_dir(prefix: str) -> Path:
    """A temporary folder for one benchmark run's artifacts, removed when the run ends (the figures are kept)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def side_by_side_latency(models: dict[str, bytes], sample: np.ndarray, rounds: int, per_round: int = 50) -> dict[str, float]:
    """Interleave the models round by round so machine noise hits all of them alike; median per-invoke ms."""
    opts = RuntimeOptions(num_threads=1)
    itps = {}
    for name, m in models.items():
        itp = make_interpreter(m, opts)
        d = itp.get_input_details()[0]
        x = sample
        if d["dtype"] != np.float32:
            scale, zp = d["quantization"]
            x = np.clip(np.round(sample / scale + zp), -128, 127).astype(d["dtype"])
        itp.set_tensor(d["index"], x)
        for _ in range(20):
            itp.invoke()
        itps[name] = itp
    times: dict[str, list[float]] = {n: [] for n in models}
    for _ in range(rounds):
        for name, itp in itps.items():
            t0 = time.perf_counter()
            for _ in range(per_round):
                itp.invoke()
            times[name].append((time.perf_counter() - t0) * 1e3 / per_round)
    return {n: float(np.median(t)) for n, t in times.items()}


def cpu_description() -> str:
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    name = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")), "unknown")
    flags = set(next((ln.split(":", 1)[1].split() for ln in info.splitlines() if ln.startswith("flags")), []))
    wanted = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni") if f in flags]
    return f"{name}, {len(info.split('processor')) - 1} logical cores, flags {' '.join(wanted)}"


class CpuSteal:
    """The share of this VM's CPU time the hypervisor gave to others (/proc/stat's steal) while the block ran: on a
    shared host, the figure that says a slow run was the machine's doing. None where /proc/stat has no steal."""

    def __enter__(self) -> CpuSteal:
        self._start, self.share = _cpu_times(), None
        return self

    def __exit__(self, *exc: object) -> None:
        end = _cpu_times()
        if self._start and end:
            total = sum(end) - sum(self._start)
            self.share = round((end[7] - self._start[7]) / total, 3) if total > 0 else None


def _cpu_times() -> list[int] | None:
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return None
    return [int(f) for f in fields[:8]] if len(fields) >= 8 else None


def cpu_flags() -> list[str]:
    """The SIMD flags that decide XNNPACK's int8 and fp32 speed on this host (read from /proc/cpuinfo)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = set(next((ln.split(":", 1)[1].split() for ln in info.splitlines() if ln.startswith("flags")), []))
    return sorted(f for f in flags if f.startswith(("avx", "fma", "f16c", "amx", "sse4")) or "vnni" in f)


# -- real photos ------------------------------------------------------------------------------------------
MEAN, STD = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)


def photos() -> list[Path]:
    """The photos that ship with matplotlib and scikit-learn (grace_hopper, china, flower)."""
    import matplotlib

    paths = [Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"]
    with contextlib.suppress(ImportError):
        import sklearn.datasets

        paths += [Path(sklearn.datasets.__file__).parent / "images" / f for f in ("china.jpg", "flower.jpg")]
    return [p for p in paths if p.exists()]


SKIMAGE_HINT = ("python -m pip install --no-deps --target $EDGEMP_CACHE/photos/scikit-image scikit-image==0.26.0 "
                "(only its bundled photos are read; nothing is imported)")


def skimage_data_dir() -> Path | None:
    """The folder of photos bundled in the scikit-image wheel: an installed skimage, or the wheel unpacked with
    SKIMAGE_HINT (no import, no dependencies: only the .png/.jpg files are read)."""
    spec = importlib.util.find_spec("skimage")
    roots = [Path(p) / "data" for p in (spec.submodule_search_locations or [])] if spec else []
    cache = Path(os.environ.get("EDGEMP_CACHE", Path.home() / ".cache" / "edgemp"))
    roots.append(cache / "photos" / "scikit-image" / "skimage" / "data")
    return next((r for r in roots if (r / "astronaut.png").exists()), None)


def named_photos(names: Sequence[str]) -> list[Path]:
    """Photos by name: scikit-image's (astronaut, coffee, ...), 'grace_hopper' (matplotlib), 'china'/'flower'
    (scikit-learn). Names that are not on this machine are left out."""
    bundled = {p.stem: p for p in photos()}
    sk = skimage_data_dir()
    out = []
    for n in names:
        if n in bundled:
            out.append(bundled[n])
        elif sk is not None:
            out += [p for p in (sk / f"{n}.png", sk / f"{n}.jpg") if p.exists()][:1]
    return out


def photo_crops(n: int, size: int, seed: int, paths: Sequence[Path] | None = None) -> np.ndarray:
    """n random square crops (20-100 % of the short side, random flips) of `paths` (default photos()), NHWC
    float32 RGB in 0..255 (grayscale photos are replicated to three channels)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    ims = [Image.open(p).convert("RGB") for p in (paths if paths is not None else photos())]
    out = []
    for _ in range(n):
        im = ims[rng.integers(len(ims))]
        w, h = im.size
        s = rng.uniform(0.2, 1.0) * min(w, h)
        x0, y0 = rng.uniform(0, w - s), rng.uniform(0, h - s)
        a = np.asarray(im.crop((int(x0), int(y0), int(x0 + s), int(y0 + s))).resize((size, size), Image.BILINEAR),
                       np.float32)
        out.append(a[:, ::-1] if rng.random() < 0.5 else a)
    return np.stack(out)


def imagenet(x: np.ndarray) -> np.ndarray:
    return ((x / 255.0 - MEAN) / STD).astype(np.float32)


# -- the official converters' own paths (anchors) ---------------------------------------------------------
def _model_content(edge: Any) -> bytes:
    content = edge.model_content
    return bytes(content() if callable(content) else content)


def pt2e_int8(model: Any, example: Any, calib_nchw: np.ndarray, channel_last: bool = True) -> bytes:
    """litert-torch's documented static INT8 path: PT2E observers, calibration in PyTorch, convert, NHWC I/O (for a
    4-D image input; `channel_last=False` keeps the input as given, e.g. token sequences)."""
    import litert_torch
    import torch
    from litert_torch.quantize import pt2e_quantizer
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e import quantize_pt2e

    quantizer = pt2e_quantizer.PT2EQuantizer().set_global(
        pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False))
    m = torch.export.export(model, (example,)).module()
    m = quantize_pt2e.prepare_pt2e(m, quantizer)
    with torch.no_grad():
        for s in calib_nchw:
            m(torch.from_numpy(s[None]))
    m = quantize_pt2e.convert_pt2e(m, fold_quantize=False)
    if channel_last:
        m = litert_torch.to_channel_last_io(m, args=[0])
        example = example.permute(0, 2, 3, 1).contiguous()
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        edge = litert_torch.convert(m, (example,), quant_config=QuantConfig(pt2e_quantizer=quantizer))
    return _model_content(edge)


def litert_torch_convert(model: Any, example: Any, channel_last: bool = True, quant_config: Any = None) -> bytes:
    """litert-torch's float conversion (NHWC input for a 4-D image input), optionally with a QuantConfig."""
    import litert_torch

    if channel_last:
        model = litert_torch.to_channel_last_io(model, args=[0])
        example = example.permute(0, 2, 3, 1).contiguous()
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        edge = litert_torch.convert(model, (example,), quant_config=quant_config)
    return _model_content(edge)


def tf_converter(model: Any, precision: str, calib: np.ndarray | Mapping[str, np.ndarray] | None = None) -> bytes:
    """TFLiteConverter.from_keras_model as its documentation shows it: fp32 (plain), fp16 (float16 weights),
    dynamic-int8 (Optimize.DEFAULT alone), int8 (representative dataset, TFLITE_BUILTINS_INT8, int8 I/O).
    `calib`: an array (one input) or {input name: array} in the model's input order."""
    from edgemp.sources.keras import convert_with_tf, import_tf

    tf = import_tf()

    def samples():  # type: ignore[no-untyped-def]
        if isinstance(calib, Mapping):  # by signature input name: the converter's input order is not the model's
            names = list(calib)
            for i in range(len(calib[names[0]])):
                yield {k: calib[k][i : i + 1] for k in names}
        else:
            for s in calib:  # type: ignore[union-attr]
                yield [s[None]]

    def make():  # type: ignore[no-untyped-def]
        conv = tf.lite.TFLiteConverter.from_keras_model(model)
        if precision == "fp32":
            return conv
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        if precision == "fp16":
            conv.target_spec.supported_types = [tf.float16]
        elif precision == "int8":
            conv.representative_dataset = samples
            conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            conv.inference_input_type = tf.int8
            conv.inference_output_type = tf.int8
        elif precision != "dynamic-int8":
            raise ValueError(f"no TFLiteConverter recipe for {precision!r}")
        return conv

    return convert_with_tf(make, f"{precision} reference")


# -- latency ----------------------------------------------------------------------------------------------
def _feeds(itp: Any, sample: np.ndarray | Mapping[str, np.ndarray]) -> list[tuple[int, np.ndarray]]:
    """(tensor index, value) for every input: an array feeds the first input; a dict is matched by signature name,
    else by position. Float values are quantized for int8/int16 inputs."""
    details = itp.get_input_details()
    by_sig: dict[str, int] = {}
    sigs = itp.get_signature_list()
    if sigs:
        by_sig = {n: d["index"] for n, d in itp.get_signature_runner(next(iter(sigs))).get_input_details().items()}
    if not isinstance(sample, Mapping):
        sample = {details[0]["name"]: sample}
    values = list(sample.items())
    out = []
    for pos, d in enumerate(details):
        sig = next((n for n, i in by_sig.items() if i == d["index"]), None)
        x = sample[sig] if sig in sample else values[min(pos, len(values) - 1)][1]
        x = np.asarray(x, np.float32).reshape(d["shape"]) if np.size(x) == np.prod(d["shape"]) else x
        if d["dtype"] != np.float32:
            scale, zp = d["quantization"]
            info = np.iinfo(d["dtype"])
            x = np.clip(np.round(x / scale + zp), info.min, info.max)
        out.append((d["index"], np.asarray(x).astype(d["dtype"])))
    return out


def interleaved_latency(models: dict[str, bytes], sample: np.ndarray | Mapping[str, np.ndarray], rounds: int,
                        per_round: int) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Invoke by invoke, the models take turns (order rotated every step), so a burst of load from other jobs
    on this shared machine hits all of them alike (1 thread, XNNPACK on). Returns the median ms per model over all
    invokes, and each model's per-round medians (ratios are taken round by round)."""
    itps = {}
    for name, m in models.items():
        itp = make_interpreter(m, RuntimeOptions(num_threads=1))
        for index, x in _feeds(itp, sample):
            itp.set_tensor(index, x)
        for _ in range(10):
            itp.invoke()
        itps[name] = itp
    names = list(itps)
    ts = np.zeros((rounds, len(names), per_round))
    for r in range(rounds):
        for i in range(per_round):
            for k in np.roll(np.arange(len(names)), i):
                t0 = time.perf_counter()
                itps[names[k]].invoke()
                ts[r, k, i] = time.perf_counter() - t0
    per_round_ms = np.median(ts, axis=2) * 1e3
    return ({n: float(np.median(ts[:, k]) * 1e3) for k, n in enumerate(names)},
            {n: per_round_ms[:, k].tolist() for k, n in enumerate(names)})


def round_ratio(rounds: dict[str, list[float]], a: str, b: str) -> float:
    return float(np.median(np.array(rounds[a]) / np.array(rounds[b])))


def write_results(name: str, data: dict[str, Any], markdown: str) -> None:
    """benchmarks/results/<name>.{json,md}, and the table on stdout."""
    import json

    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
    (out / f"{name}.md").write_text(markdown)
    print(markdown)
