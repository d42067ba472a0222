"""Image files -> model inputs, following a Preprocessing spec (the same spec the app must reproduce)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgemp.config import ColorMode, Layout, Preprocessing, ResizePolicy
from edgemp.errors import CalibrationError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")


def resolve(pre: Preprocessing, shape: tuple[int | None, ...]) -> Preprocessing:
    """Fill `size` and `color` from the model input shape, and check they fit it."""
    if len(shape) != 4:
        raise CalibrationError(
            f"an image folder needs a 4-D image input, but the model input has shape {_fmt(shape)}; "
            "pass arrays (.npy/.npz or numpy) instead."
        )
    if pre.layout is Layout.NHWC:
        h, w, c = shape[1], shape[2], shape[3]
    else:
        c, h, w = shape[1], shape[2], shape[3]
    if c not in (1, 3):
        raise CalibrationError(
            f"model input {_fmt(shape)} read as {pre.layout.value} has {c} channels; image folders give 1 or 3. "
            "Set the preprocessing layout (NHWC/NCHW) to match the model, or pass arrays."
        )
    color = pre.color
    if color is ColorMode.AUTO:
        color = ColorMode.GRAYSCALE if c == 1 else ColorMode.RGB
    elif (color is ColorMode.GRAYSCALE) != (c == 1):
        raise CalibrationError(
            f"color mode {color.value!r} gives {1 if color is ColorMode.GRAYSCALE else 3} channel(s) but the model "
            f"input {_fmt(shape)} has {c}; use color='auto' or the matching mode."
        )
    size = pre.size
    if size is None:
        if h is None or w is None:
            raise CalibrationError(
                f"the model input {_fmt(shape)} has a dynamic height/width: give the preprocessing size (H, W)."
            )
        size = (int(h), int(w))
    elif h is not None and w is not None and tuple(size) != (h, w):
        raise CalibrationError(f"preprocessing size {tuple(size)} does not match the model input {_fmt(shape)}.")
    for name, vals in (("mean", pre.mean), ("std", pre.std)):
        if len(vals) not in (1, c):
            raise CalibrationError(f"preprocessing {name} has {len(vals)} values but the input has {c} channels.")
    return Preprocessing(size=size, resize=pre.resize, color=color, scale=pre.scale, mean=pre.mean, std=pre.std,
                         layout=pre.layout)


def load_image(path: Path, pre: Preprocessing) -> np.ndarray:
    """Decode, convert color, resize, normalise. `pre` must be resolved. Raises OSError/ValueError if unreadable."""
    from PIL import Image

    assert pre.size is not None  # resolved by resolve()
    h, w = pre.size
    with Image.open(path) as im:
        im.load()
        gray = pre.color is ColorMode.GRAYSCALE
        im = im.convert("L" if gray else "RGB")
        im = _resize(im, (w, h), pre.resize)
        arr = np.asarray(im, dtype=np.float32)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if pre.color is ColorMode.BGR:
        arr = arr[:, :, ::-1]
    arr = (arr * np.float32(pre.scale) - np.asarray(pre.mean, np.float32)) / np.asarray(pre.std, np.float32)
    if pre.layout is Layout.NCHW:
        arr = arr.transpose(2, 0, 1)
    return np.ascontiguousarray(arr, dtype=np.float32)


def _resize(im, size: tuple[int, int], policy: ResizePolicy):  # type: ignore[no-untyped-def]
    from PIL import Image, ImageOps

    resample = Image.Resampling.BILINEAR
    if im.size == size:
        return im
    if policy is ResizePolicy.STRETCH:
        return im.resize(size, resample)
    if policy is ResizePolicy.CENTER_CROP:
        return ImageOps.fit(im, size, resample)
    return ImageOps.pad(im, size, resample, color=0)


def list_images(root: Path) -> tuple[list[Path], list[tuple[str, str]]]:
    """Image files under root (recursive, sorted) and the other files, each with why it was skipped."""
    images, skipped = [], []
    for p in sorted(root.rglob("*")):
        if not p.is_file():
            continue
        if p.suffix.lower() in IMAGE_SUFFIXES:
            images.append(p)
        else:
            skipped.append((str(p), f"not an image file ({p.suffix or 'no extension'})"))
    return images, skipped


def _fmt(shape: tuple[int | None, ...]) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"
