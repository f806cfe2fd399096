"""Look at what a source bundle generates: a labelled grid, one row per class, plus an interpolation row."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from edgeppt.bundle import SourceBundle, load_bundle
from edgeppt.errors import EdgepptError


def _to_pil(x: torch.Tensor, scale: int) -> Image.Image:
    """One (C, H, W) image in [0, 1] -> an RGB tile scaled up without smoothing (pixels stay visible)."""
    a = (x.clamp(0, 1) * 255).round().byte().cpu().numpy()
    a = np.repeat(a, 3, 0) if a.shape[0] == 1 else a
    im = Image.fromarray(a.transpose(1, 2, 0), "RGB")
    return im.resize((im.width * scale, im.height * scale), Image.Resampling.NEAREST)


GRID_CLASSES_MAX = 32  # rows of classes in a preview: a 1,000-class bundle's would be 66,000 px tall


@torch.no_grad()
def grid_rows(bundle: SourceBundle, per_class: int = 8, seed: int = 0,
              interpolate: tuple[str, str] | None = None) -> list[tuple[str, torch.Tensor]]:
    """(label, images) rows: one-hot samples for each class (at most GRID_CLASSES_MAX of them, evenly spread over
    the class list), then p moving from class a to class b with z fixed."""
    k, classes = bundle.num_classes, bundle.classes
    rng = torch.Generator().manual_seed(seed)
    z = bundle.sample_latents(per_class, rng)  # the same z in every row: only p changes
    shown = range(k) if k <= GRID_CLASSES_MAX else torch.linspace(0, k - 1, GRID_CLASSES_MAX).round().long().tolist()
    rows = [(classes[c], bundle.generate(torch.eye(k)[c].expand(per_class, k), z)) for c in shown]
    a, b = interpolate or (classes[0], classes[1 % k])
    for name in (a, b):
        if name not in classes:
            raise EdgepptError(f"class {name!r} is not in this bundle: {classes}")
    t = torch.linspace(0, 1, per_class)[:, None]
    p = (1 - t) * torch.eye(k)[classes.index(a)] + t * torch.eye(k)[classes.index(b)]
    z0 = z[:1].expand(per_class, -1)
    rows.append((f"{a}->{b}", bundle.generate(p, z0)))
    return rows


def sample_grid(bundle_path: str | Path, out_png: str | Path, per_class: int = 8, seed: int = 0,
                interpolate: tuple[str, str] | None = None, scale: int | None = None) -> Path:
    """Render a labelled grid of a bundle's samples to out_png and return its path."""
    return render_grid(load_bundle(bundle_path), out_png, per_class, seed, interpolate, scale)


def render_grid(bundle: SourceBundle, out_png: str | Path, per_class: int = 8, seed: int = 0,
                interpolate: tuple[str, str] | None = None, scale: int | None = None) -> Path:
    """Render a labelled grid of a loaded bundle's samples to out_png."""
    rows = grid_rows(bundle, per_class, seed, interpolate)
    side = bundle.image_shape[-1]
    scale = scale or max(1, 64 // side)  # tiles of about 64 px whatever the image size
    tile, pad = side * scale, 2
    font = ImageFont.load_default(size=max(10, min(16, tile // 3)))
    label_w = max(int(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(lbl, font=font)) for lbl, _ in rows) + 8
    canvas = Image.new("RGB", (label_w + per_class * (tile + pad), len(rows) * (tile + pad)), "white")
    draw = ImageDraw.Draw(canvas)
    for r, (label, imgs) in enumerate(rows):
        y = r * (tile + pad)
        draw.text((4, y + tile // 2), label, fill="black", font=font, anchor="lm")
        for c, img in enumerate(imgs):
            canvas.paste(_to_pil(img, scale), (label_w + c * (tile + pad), y))
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_png.with_name(f".{out_png.name}.tmp.png")
    canvas.save(tmp)
    tmp.replace(out_png)  # atomic: a half-written preview never replaces a good one
    return out_png
