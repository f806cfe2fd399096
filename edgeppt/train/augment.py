"""Batched image augmentation on tensors, driven by an explicit generator so every step is reproducible."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from edgeppt.config import AugmentConfig

DEFAULT = AugmentConfig()


def _affine(x: torch.Tensor, g: torch.Generator, max_shift: float, max_rot: float, scale: tuple[float, float],
            flip: bool) -> torch.Tensor:
    n = len(x)

    def u() -> torch.Tensor:
        return torch.rand(n, generator=g)

    angle = (u() * 2 - 1) * math.radians(max_rot)
    s = scale[0] + u() * (scale[1] - scale[0])
    sign = torch.where(u() < 0.5, -1.0, 1.0) if flip else torch.ones(n)
    tx, ty = (u() * 2 - 1) * max_shift, (u() * 2 - 1) * max_shift
    cos, sin = torch.cos(angle) / s, torch.sin(angle) / s
    theta = torch.stack([torch.stack([cos * sign, -sin, tx], 1), torch.stack([sin * sign, cos, ty], 1)], 1)
    grid = F.affine_grid(theta.to(x), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, padding_mode="zeros", align_corners=False)


def _jitter(x: torch.Tensor, g: torch.Generator, amount: float, tint: bool = True) -> torch.Tensor:
    """Each channel of each image times a gain in [1 - amount, 1 + amount]: brightness for grey images, a tint for
    colour ones; without `tint`, the first channel's gain for all (brightness only: the same draws either way). No
    draw at 0, so runs without it keep their random streams."""
    if not amount:
        return x
    gain = 1 + (torch.rand(len(x), x.shape[1], 1, 1, generator=g) * 2 - 1) * amount
    return (x * (gain if tint else gain[:, :1]).to(x)).clamp(0, 1)


def gain_spread(x: torch.Tensor) -> float:
    """How much images' gain varies: the coefficient of variation across images of each channel's 99th-percentile
    pixel, averaged over channels. Near 0 where every image peaks alike (silhouettes, scans); large where exposure or
    colour balance changes from image to image."""
    peak = torch.quantile(x.float().flatten(2), 0.99, dim=2)  # (N, C)
    return (peak.std(0) / peak.mean(0).clamp_min(1e-6)).mean().item() if len(x) > 1 else 0.0


def colour_cue(x: torch.Tensor, y: torch.Tensor, draws: int = 1000, seed: int = 0) -> float:
    """Whether colour tells the labelled images' classes apart: a permutation test's p-value for the share of the
    variance of their colour (each image's mean per channel over its sum: a tint, not an exposure) that lies between
    the classes' means, against the same images with their labels shuffled. Small where each class has its own
    colour; about uniform in (0, 1] where colour varies from image to image alone (a camera's white balance); 1 where
    it cannot tell (no class with two images, or one colour throughout)."""
    mean = x.detach().double().flatten(2).mean(2).cpu()  # (N, C)
    chroma = mean / mean.sum(1, keepdim=True).clamp_min(1e-12)
    chroma = chroma - chroma.mean(0)
    total = chroma.pow(2).sum().item()
    _, y = torch.unique(y.detach().cpu(), return_inverse=True)  # classes as 0..k-1, whatever their numbers
    counts = torch.bincount(y).double()
    if total < 1e-12 * len(y) or counts.max() < 2:
        return 1.0

    def between(labels: torch.Tensor) -> float:  # the classes' share of the variance of colour
        sums = torch.zeros(len(counts), chroma.shape[1], dtype=torch.float64).index_add_(0, labels, chroma)
        return (sums.pow(2).sum(1) / counts).sum().item() / total

    seen = between(y)
    g = torch.Generator().manual_seed(seed)
    hits = sum(between(y[torch.randperm(len(y), generator=g)]) >= seen * (1 - 1e-9) for _ in range(draws))
    return (1 + hits) / (1 + draws)


def weak(x: torch.Tensor, g: torch.Generator, cfg: AugmentConfig = DEFAULT) -> torch.Tensor:
    """Flip (where allowed), shift, rotate as configured, and jitter each channel's gain where set."""
    x = _affine(x, g, max_shift=cfg.max_shift, max_rot=cfg.max_rotation, scale=(1.0, 1.0), flip=cfg.hflip)
    return _jitter(x, g, cfg.jitter, cfg.jitter_tint)


def strong(x: torch.Tensor, g: torch.Generator, cfg: AugmentConfig = DEFAULT) -> torch.Tensor:
    """Weak plus rotation, scaling, contrast change and a cut-out square (RandAugment-like for silhouettes)."""
    n = len(x)
    x = _affine(x, g, max_shift=cfg.max_shift, max_rot=cfg.strong_rotation, scale=(0.8, 1.15), flip=cfg.hflip)
    x = _jitter(x, g, cfg.jitter, cfg.jitter_tint)
    contrast = (0.6 + 0.8 * torch.rand(n, 1, 1, 1, generator=g)).to(x)
    mean = x.mean((1, 2, 3), keepdim=True)
    x = ((x - mean) * contrast + mean).clamp(0, 1)
    h, w = x.shape[-2:]
    size = max(1, h // 3)
    cy = torch.randint(0, h, (n,), generator=g)
    cx = torch.randint(0, w, (n,), generator=g)
    ys, xs = torch.arange(h).view(1, h, 1), torch.arange(w).view(1, 1, w)
    box = ((ys - cy.view(n, 1, 1)).abs() <= size // 2) & ((xs - cx.view(n, 1, 1)).abs() <= size // 2)
    return x * (~box).unsqueeze(1).to(x)
