"""One image file -> 8-bit pixels, the same way in training and on the device (copied into every export bundle as
`image_io.py`, beside the runner). Pillow and numpy only, for that reason.

Three things a plain `Image.convert("L")` gets wrong on real images: it clips pixels of more than 8 bits at 255 (a
16-bit image turns white, a float one in [0, 1] black), it ignores the EXIF orientation tag that phones write
instead of turning the pixels (the photo is read on its side), and it drops transparency, keeping whatever colour
the encoder left under transparent pixels (often black, sometimes white or leftovers of an edit). Transparent
pixels are composited over black here: the background that padding, shifts and turns give in training.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})


def full_scale(dtype: np.dtype, top: float) -> float:
    """The value that stands for white: what the pixel type declares (8 bits 255, 16 bits 65535); for types that
    declare nothing (floats, wider integers) the smallest of 1, 255 and 65535 that holds `top`, the largest value."""
    if dtype == np.uint8:
        return 255.0
    if dtype == np.uint16:
        return 65535.0
    return next((s for s in (1.0, 255.0, 65535.0) if top <= s), float(top))


def over_black(im: Image.Image) -> Image.Image:
    """`im` without transparency: an alpha channel (RGBA, LA, PA) or a palette's or a gray level's transparent entry
    is composited over black (each pixel weighted by its opacity); other images are returned as they are."""
    if im.mode not in ("RGBA", "LA", "PA", "RGBa", "La") and "transparency" not in im.info:
        return im
    gray = im.mode in ("LA", "La", "L", "1") or (im.mode == "P" and getattr(im.palette, "mode", "") == "L")
    rgba = im.convert("RGBA")
    flat = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba).convert("RGB")
    return flat.convert("L") if gray else flat


def to_8bit(im: Image.Image) -> Image.Image:
    """`im` upright, opaque and in an 8-bit mode, its deeper pixels scaled (not clipped) by their full scale."""
    im = ImageOps.exif_transpose(im)
    if not (im.mode.startswith("I") or im.mode == "F"):  # 8-bit modes; Pillow's deeper ones carry no alpha
        return over_black(im)
    a = np.asarray(im)
    if a.dtype.byteorder == ">":  # I;16B
        a = a.astype(a.dtype.newbyteorder("="))
    scale = full_scale(np.dtype(np.uint16) if im.mode.startswith("I;16") else a.dtype, float(a.max(initial=0)))
    return Image.fromarray(np.clip(np.rint(a.astype(np.float64) * (255.0 / scale)), 0, 255).astype(np.uint8), "L")


def read_pixels(im: Image.Image, channels: int | None) -> np.ndarray:
    """(C, H, W) uint8 in `channels` (1 or 3; None: 1 for gray images, else 3)."""
    if channels is None:
        channels = 1 if im.mode in GRAY_MODES else 3
    a = np.asarray(to_8bit(im).convert("L" if channels == 1 else "RGB"), dtype=np.uint8)
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
