"""Image files -> model inputs, following a Preprocessing spec (the same spec the app must reproduce)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from edgemp.config import ColorMode, Layout, Preprocessing, ResizePolicy
from edgemp.errors import CalibrationError, InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")


def resolve(pre: Preprocessing, shape: tuple[int | None, ...], error: type[InputError] = CalibrationError) -> Preprocessing:
    """Fill `size` and `color` from the model input shape, and check they fit it (`error`: the type raised)."""
    if len(shape) != 4:
        raise error(
            f"an image folder needs a 4-D image input, but the model input has shape {_fmt(shape)}; "
            "pass arrays (.npy/.npz or numpy) instead."
        )
    if pre.layout is Layout.NHWC:
        h, w, c = shape[1], shape[2], shape[3]
    else:
        c, h, w = shape[1], shape[2], shape[3]
    if c not in (1, 3):
        raise error(
            f"model input {_fmt(shape)} read as {pre.layout.value} has {c} channels; image folders give 1 or 3. "
            "Set the preprocessing layout (NHWC/NCHW) to match the model, or pass arrays."
        )
    color = pre.color
    if color is ColorMode.AUTO:
        color = ColorMode.GRAYSCALE if c == 1 else ColorMode.RGB
    elif (color is ColorMode.GRAYSCALE) != (c == 1):
        raise error(
            f"color mode {color.value!r} gives {1 if color is ColorMode.GRAYSCALE else 3} channel(s) but the model "
            f"input {_fmt(shape)} has {c}; use color='auto' or the matching mode."
        )
    size = pre.size
    if size is None:
        if h is None or w is None:
            raise error(
                f"the model input {_fmt(shape)} has a dynamic height/width: give the preprocessing size (H, W)."
            )
        size = (int(h), int(w))
    elif h is not None and w is not None and tuple(size) != (h, w):
        raise error(f"preprocessing size {tuple(size)} does not match the model input {_fmt(shape)}.")
    for name, vals in (("mean", pre.mean), ("std", pre.std)):
        if len(vals) not in (1, c):
            raise error(f"preprocessing {name} has {len(vals)} values but the input has {c} channels.")
    return Preprocessing(size=size, resize=pre.resize, color=color, scale=pre.scale, mean=pre.mean, std=pre.std,
                         layout=pre.layout)


class ImageRefused(ValueError):
    """An image edgemp will not guess about (a decompression bomb, an integer image of unknown bit depth, float
    values that are not 0..1 intensities): skipped and counted with this reason, like an undecodable file."""


def load_image(path: Path, pre: Preprocessing) -> np.ndarray:
    """Decode, convert color, resize, normalise. `pre` must be resolved. Raises OSError/ValueError if unreadable."""
    return read_image(path, pre)[0]


def read_image(path: Path, pre: Preprocessing) -> tuple[np.ndarray, str | None]:
    """(model input, note) for one image file; the note says what was done beyond the 8-bit path (16-bit or float
    pixels scaled to 8-bit values, transparency composited on black, CMYK converted), None for plain 8-bit images.

    Pixel values always reach `pre.scale` on the 8-bit scale (0..255), whatever the file's bit depth, so a 16-bit
    image and its 8-bit version give the same inputs (within 1/255). Raises OSError or ValueError (ImageRefused for
    a decompression bomb or a bit depth edgemp cannot know): the caller skips the file with the reason."""
    from PIL import Image

    assert pre.size is not None  # resolved by resolve()
    h, w = pre.size
    gray = pre.color is ColorMode.GRAYSCALE
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)  # over the limit: refused, not half-loaded
        warnings.filterwarnings("ignore", message="Palette images with Transparency", category=UserWarning)
        try:
            with Image.open(path) as im:
                im.load()
                decoded, note = _decoded(im, gray)
                decoded = _resize(decoded, (w, h), pre.resize)
                arr = np.asarray(decoded, dtype=np.float32)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageRefused(f"decompression bomb refused ({str(exc).split(', could')[0]}); shrink the image below "
                               f"{Image.MAX_IMAGE_PIXELS} pixels") from None
        except (OSError, ValueError):
            raise
        except Exception as exc:  # Pillow raises many types on malformed files (SyntaxError, struct.error, ...)
            raise ValueError(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__) from None
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.shape[-1] == 1 and not gray:  # a high-bit-depth grayscale image read into an RGB model
        arr = np.repeat(arr, 3, axis=-1)
    if pre.color is ColorMode.BGR:
        arr = arr[:, :, ::-1]
    arr = (arr * np.float32(pre.scale) - np.asarray(pre.mean, np.float32)) / np.asarray(pre.std, np.float32)
    if pre.layout is Layout.NCHW:
        arr = arr.transpose(2, 0, 1)
    return np.ascontiguousarray(arr, dtype=np.float32), note


_HIGH_BIT = ("I", "I;16", "I;16L", "I;16B", "I;16N", "I;16S", "F")
_ALPHA = ("RGBA", "LA", "PA", "RGBa", "La")


def _decoded(im, gray: bool):  # type: ignore[no-untyped-def]
    """The decoded image in "L"/"RGB" (8-bit) or "F" (grayscale on the 8-bit scale, 0..255), and a note."""
    from PIL import Image

    target = "L" if gray else "RGB"
    if im.mode in _HIGH_BIT:
        return _high_bit_gray(im)
    if im.mode in _ALPHA or "transparency" in im.info:
        rgba = im.convert("RGBA")
        opaque = rgba.getchannel("A").getextrema()[0] == 255
        flat = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba).convert(target)
        return flat, None if opaque else "transparency (alpha) composited on black"
    note = "CMYK converted to RGB without color management" if im.mode == "CMYK" else None
    return im.convert(target), note


def _high_bit_gray(im):  # type: ignore[no-untyped-def]
    from PIL import Image

    a = np.asarray(im)
    if im.mode == "F":
        if not np.isfinite(a).all():
            raise ImageRefused("float image with NaN/Inf pixels")
        lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
        if lo < 0 or hi > 1:
            raise ImageRefused(f"float image with values {lo:.4g}..{hi:.4g}: float pixels are read as 0..1 intensities; "
                               "save it as an 8- or 16-bit image, or pass the arrays (.npy/.npz) you want fed")
        return Image.fromarray((a.astype(np.float32) * np.float32(255.0))), "32-bit float pixels (0..1) scaled to 0..255"
    bits = 16 if im.mode.startswith("I;16") else _int_bits(im)
    if bits is None:
        raise ImageRefused(f"integer image (mode {im.mode}, {im.format or 'unknown format'}) of unknown bit depth; save "
                           "it as an 8- or 16-bit PNG")
    lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
    if bits > 16:
        raise ImageRefused(f"{bits}-bit integer image (values {lo}..{hi}): its intensity scale is ambiguous; save it as "
                           "an 8- or 16-bit image")
    top = 2**bits - 1
    if lo < 0 or hi > top:
        raise ImageRefused(f"{bits}-bit image with values {lo}..{hi} outside 0..{top}")
    scaled = (a.astype(np.float64) * (255.0 / top)).astype(np.float32)
    return Image.fromarray(scaled), f"{bits}-bit grayscale pixels scaled by 255/{top} to the 8-bit range"


def _int_bits(im) -> int | None:  # type: ignore[no-untyped-def]
    """Bits per sample of a 32-bit integer ("I") image, when the file says (PNG: 16-bit grayscale; TIFF: its tag)."""
    if im.format == "PNG":
        return 16
    tag = getattr(im, "tag_v2", None)
    bits = tag.get(258) if tag is not None else None  # BitsPerSample
    if isinstance(bits, tuple | list):
        bits = bits[0] if bits else None
    return int(bits) if isinstance(bits, int) and 1 <= bits <= 32 else None


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


def skip_reason(exc: BaseException) -> str:
    """Why an image file was skipped, in one line."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if isinstance(exc, ImageRefused) else f"unreadable image: {text}"


def summarize_notes(notes: list[str]) -> list[str]:
    """["16-bit ...", "16-bit ...", "alpha ..."] -> ["2 image(s): 16-bit ...", "1 image(s): alpha ..."]."""
    import collections

    return [f"{n} image(s): {note}" for note, n in collections.Counter(notes).items()]
