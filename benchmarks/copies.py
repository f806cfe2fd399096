"""How well `edgeppt.data.near_copies` tells a re-saved copy of a picture from a distinct picture: a test or
labelled image that an unlabelled one copies is left out of the unlabelled ones.

    python benchmarks/copies.py          # under a minute

Each image set is read as the product reads it (8-bit pixels). Distinct: each image of one half against the
other half, twins (the same picture, which the animal silhouettes hold: over 60 dB apart) counted apart. Copies:
300 images, each written as a file the way the column says and read back through the folder loader. The
fixed-camera sets are one photograph's crop with a digit pasted at a random place: distinct pictures that differ
in a small region only, as a device's fixed camera sees them. The result: docs/transfer.md ("Unlabelled target
images").
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from rich.console import Console
from rich.table import Table
from sklearn.datasets import load_sample_images

from edgeppt.data import COPY_FLOOR_DB, COPY_LEVELS, load_dataset, load_folder, near_copies


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
    kinds = ("jpeg50", "jpeg75", "jpeg90", "2x larger")
    table = Table(title=f"near_copies: within {COPY_LEVELS} levels in every window's brightness and "
                        f"{COPY_FLOOR_DB:g} dB over all pixels")
    table.add_column("images")
    table.add_column("distinct, taken for copies", justify="right")
    for kind in kinds:
        table.add_column(f"{kind} copies found", justify="right")
    table.add_column("PSNR (dB): nearest distinct, farthest jpeg75 copy", justify="right")
    for name, x in sets().items():
        half = len(x) // 2
        a, b = x[:half], x[half:]
        distinct = ~twins(a, b)
        flagged = int((near_copies(a, b) & distinct).sum())
        nearest = psnr((torch.cdist(a.flatten(1), b.flatten(1)).square() / a[0].numel()).min(1).values)[distinct]
        row = [f"{name} ({len(x)})", f"{flagged} of {int(distinct.sum())}"]
        originals = x[:300]
        for kind in kinds:
            with tempfile.TemporaryDirectory() as tmp:
                copies = saved(originals, kind, Path(tmp))
            row.append(f"{near_copies(copies, originals).float().mean():.0%}")
            if kind == "jpeg75":
                farthest = psnr((copies - originals).square().flatten(1).mean(1)).min()
        table.add_row(*row, f"{nearest.max():.1f}, {farthest:.1f}")
    Console(width=200).print(table)


if __name__ == "__main__":
    main()
