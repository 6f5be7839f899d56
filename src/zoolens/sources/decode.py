"""Decoding one image file to RGB, with the reasons a file cannot be used."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from .base import MIN_SIDE, BadImage, Decoded

__all__ = ["decode_file", "decode_bytes", "to_rgb", "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm",
                    ".pgm", ".pbm", ".jfif", ".ico"}


def to_rgb(image: Image.Image) -> Decoded:
    """Any PIL mode -> RGB. Alpha is composited on white (transparent pixels would otherwise
    keep whatever colour the encoder left behind them)."""
    if min(image.size) < MIN_SIDE:
        raise BadImage(f"image too small ({image.size[0]}x{image.size[1]} px; need at least "
                       f"{MIN_SIDE}x{MIN_SIDE})")
    mode = image.mode
    if mode == "RGB":
        return Decoded(image)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Decoded(Image.alpha_composite(background, rgba).convert("RGB"),
                       f"converted from {mode} (alpha composited on white)")
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):  # 16-bit/float grayscale: rescale to 8 bit
        import numpy as np

        arr = np.asarray(image, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) * 255 if hi > lo else arr * 0
        return Decoded(Image.fromarray(arr.astype("uint8")).convert("RGB"), f"converted from {mode}")
    return Decoded(image.convert("RGB"), f"converted from {mode}")


def decode_file(path: str | Path) -> Decoded:
    """Open, fully decode (truncated files fail here, not later), apply EXIF orientation."""
    path = Path(path)
    try:
        empty = path.stat().st_size == 0
    except FileNotFoundError:
        raise BadImage("file not found") from None
    except OSError as exc:
        raise BadImage(f"cannot read: {exc.strerror or exc}") from None
    if empty:
        raise BadImage("empty file (0 bytes)")
    return _decode(path)


def decode_bytes(data: bytes) -> Decoded:
    """`decode_file` for an image's bytes (read from object storage, a URL, an archive)."""
    if not data:
        raise BadImage("empty file (0 bytes)")
    return _decode(io.BytesIO(data))


def _decode(fp) -> Decoded:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(fp) as im:
                im.load()
                im = ImageOps.exif_transpose(im)
                im.load()
    except UnidentifiedImageError:
        raise BadImage("not an image PIL can read") from None
    except FileNotFoundError:
        raise BadImage("file not found") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombWarning,
            Image.DecompressionBombError) as exc:
        raise BadImage(f"cannot decode: {exc}") from None
    return to_rgb(im)
