"""Why edgeppt counts only exact copies as copies (`edgeppt.data.exact_copies`): a test or labelled image among the
unlabelled ones is left out only where its 8-bit pixels are the same. A looser rule, screened here, would find
re-encoded copies too, but would take a dim device camera's distinct pictures for copies and drop them.

    python benchmarks/copies.py          # about a minute

The rule screened: within `LEVELS` of 255 in the mean brightness of every window of side // 8 pixels (at most
4), and within `FLOOR_DB` PSNR over all pixels. Each image set is read as the product reads it (8-bit pixels), at
full contrast and dimmed (every pixel times 0.5 or 0.25, as a dim camera). Distinct: each image of one half against
the other half, twins (the same picture, which the animal silhouettes hold: over 60 dB apart) counted apart.
Copies: 300 images written as JPEG (quality 75) and read back through the folder loader. The fixed-camera sets are
one photograph's crop with a digit pasted at a random place: distinct pictures that differ in a small region
only, as a device's fixed camera sees them. The result: docs/transfer.md ("Unlabelled target images").
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from rich.console import Console
from rich.table import Table
from sklearn.datasets import load_sample_images

from edgeppt.data import exact_copies, load_dataset, load_folder

LEVELS, FLOOR_DB = 6, 20.0
CONTRASTS = (1.0, 0.5, 0.25)


def windows(x: torch.Tensor) -> torch.Tensor:
    """Each image's mean brightness over windows of w x w pixels, w = side // 8 (at most 4)."""
    side = x.shape[-1]
    w = min(4, max(1, side // 8))
    return F.adaptive_avg_pool2d(x.float().mean(1, keepdim=True), side // w).flatten(1)


def window_rule(x: torch.Tensor, ref: torch.Tensor, checked: int = 8) -> torch.Tensor:
    """The looser rule: which of `x` are within LEVELS in every window and FLOOR_DB over all pixels of one of the
    `checked` nearest of `ref` (by window brightness)."""
    wx, wr = windows(x), windows(ref)
    _, idx = torch.cdist(wx, wr).topk(min(checked, len(ref)), dim=1, largest=False)
    found = torch.zeros(len(x), dtype=torch.bool)
    for k in range(idx.shape[1]):
        near = (wx - wr[idx[:, k]]).abs().amax(1) <= LEVELS / 255
        close = (x - ref[idx[:, k]]).square().flatten(1).mean(1) <= 10 ** (-FLOOR_DB / 10)
        found |= near & close
    return found


def photo_crops(side: int = 64, n: int = 300) -> torch.Tensor:
    """Non-overlapping crops of scikit-learn's two sample photographs: natural images of colour and texture."""
    crops = [img[r:r + side, c:c + side] for img in load_sample_images().images
             for r in range(0, img.shape[0] - side + 1, side) for c in range(0, img.shape[1] - side + 1, side)]
    return torch.from_numpy(np.stack(crops[:n])).permute(0, 3, 1, 2).float() / 255


def sets() -> dict[str, torch.Tensor]:
    """Each set as 8-bit pixels, as a file holds them."""
    x = {"animal silhouettes, 28 px gray": load_dataset("animals", 28, 1).x[:3000],
         "digits, 8 px gray": load_dataset("digits", 8, 1).x,
         "digits, 32 px gray": load_dataset("digits", 32, 1).x,
         "photo crops, 64 px colour": photo_crops(),
         "fixed camera, 8 px objects, 64 px colour": fixed_camera(8),
         "fixed camera, 16 px objects, 64 px colour": fixed_camera(16)}
    return {k: (v * 255).round() / 255 for k, v in x.items()}


def fixed_camera(obj_side: int, n: int = 400, side: int = 64) -> torch.Tensor:
    """One background, a red-tinted digit of obj_side pixels pasted at a random place in each image."""
    g = torch.Generator().manual_seed(0)
    background = photo_crops()[5]
    digits = load_dataset("digits", obj_side, 1).x[:n]
    tint = torch.tensor([1.0, 0.2, 0.2]).view(3, 1, 1)
    out = []
    for m in digits:
        im = background.clone()
        r, c = torch.randint(0, side - obj_side, (2,), generator=g).tolist()
        patch = im[:, r:r + obj_side, c:c + obj_side]
        im[:, r:r + obj_side, c:c + obj_side] = patch * (1 - m) + m * tint
        out.append(im)
    return torch.stack(out)


def saved(x: torch.Tensor, how: str, folder: Path) -> torch.Tensor:
    """Each image written as a file the way `how` says, then read back through the product's folder loader."""
    side, chans = x.shape[-1], x.shape[1]
    for i, t in enumerate(x):
        a = (t.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        im = Image.fromarray(a[..., 0] if chans == 1 else a)
        if how.startswith("jpeg"):
            buf = io.BytesIO()
            im.save(buf, "JPEG", quality=int(how[4:]))
            im = Image.open(buf)
        elif how == "2x larger":
            im = im.resize((2 * side, 2 * side), Image.Resampling.BICUBIC)
        (folder / "c").mkdir(parents=True, exist_ok=True)
        im.save(folder / "c" / f"{i:04d}.png")
    return load_folder(folder, side, chans).x  # files in name order: the originals' order


def psnr(mse: torch.Tensor) -> torch.Tensor:
    return 10 * torch.log10(1 / mse.clamp_min(1e-12))


def twins(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The same picture twice: over 60 dB apart (a pixel or two one 8-bit level off at most)."""
    return (torch.cdist(a.flatten(1), b.flatten(1)).square() / a[0].numel()).min(1).values <= 1e-6


def main() -> None:
    table = Table(title=f"Copies: exact pixels (edgeppt) against the window rule screened ({LEVELS} levels, "
                        f"{FLOOR_DB:g} dB)")
    table.add_column("images")
    for c in CONTRASTS:
        table.add_column(f"window rule: distinct taken, contrast x{c:g}", justify="right")
    table.add_column("window rule: JPEG 75 found", justify="right")
    table.add_column("exact: JPEG 75 found", justify="right")
    table.add_column("exact: PNG found", justify="right")
    for name, x in sets().items():
        row = [f"{name} ({len(x)})"]
        for c in CONTRASTS:
            dim = (x * c * 255).round() / 255
            half = len(dim) // 2
            a, b = dim[:half], dim[half:]
            distinct = ~twins(a, b)
            row.append(f"{int((window_rule(a, b) & distinct).sum())} of {int(distinct.sum())}")
        originals = x[:300]
        with tempfile.TemporaryDirectory() as tmp:
            jpeg = saved(originals, "jpeg75", Path(tmp))
        with tempfile.TemporaryDirectory() as tmp:
            png = saved(originals, "png", Path(tmp))
        row += [f"{share:.0%}" for share in (window_rule(jpeg, originals).float().mean(),
                                             exact_copies(jpeg, originals).float().mean(),
                                             exact_copies(png, originals).float().mean())]
        table.add_row(*row)
    Console(width=240).print(table)


if __name__ == "__main__":
    main()
