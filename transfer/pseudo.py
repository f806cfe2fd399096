"""Pseudo conditional sampling (P-SSL): target images condition the source generator.

For a target image x_t, p = softmax(C(x_t) / T) says which source classes it resembles; G(z, p) then draws
target-related images. Optionally z is the best of several draws: the one whose G(z, p) lies nearest x_t in C's
feature space, and each sample gets a relevance score: the cosine similarity of its features to x_t's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from edgeppt.bundle import SourceBundle
from edgeppt.config import PSSLConfig

POOL_FIELDS = ("x", "p", "anchor", "relevance", "weight")  # what a saved pool holds


@dataclass
class PseudoPool:
    x: torch.Tensor          # (M, C, H, W) pseudo samples
    p: torch.Tensor          # (M, K) conditioning probabilities
    anchor: torch.Tensor     # (M,) index of the target image that conditioned each sample
    relevance: torch.Tensor  # (M,) cosine similarity to the anchor in C's feature space
    weight: torch.Tensor     # (M,) per-sample weight in the unlabelled loss

    def __len__(self) -> int:
        return len(self.x)

    def state(self) -> dict[str, torch.Tensor]:
        return {k: getattr(self, k) for k in POOL_FIELDS}


def condition_probs(bundle: SourceBundle, x_t: torch.Tensor, temperature: float) -> torch.Tensor:
    return bundle.probabilities(x_t, temperature).cpu()


def _features(bundle: SourceBundle, x: torch.Tensor) -> torch.Tensor:
    return F.normalize(bundle.classify(x)[1].flatten(1), dim=1)


def best_latents(bundle: SourceBundle, p: torch.Tensor, target_feats: torch.Tensor, candidates: int,
                 g: torch.Generator) -> torch.Tensor:
    """For each row, draw `candidates` z and keep the one whose G(z, p) lies nearest its anchor in C's features.
    Gradient-free (best of n), so it needs nothing from the bundle's runtime beyond inference."""
    n = len(p)
    z = bundle.sample_latents(n * candidates, g)
    f = _features(bundle, bundle.generate(p.repeat(candidates, 1), z, generator=g)).cpu()
    sim = (f * target_feats.cpu().repeat(candidates, 1)).sum(1).view(candidates, n)
    return z.view(candidates, n, -1)[sim.argmax(0), torch.arange(n)]


def make_pool(bundle: SourceBundle, x_t: torch.Tensor, cfg: PSSLConfig, seed: int, chunk: int = 512) -> PseudoPool:
    """Draw cfg.pool_size pseudo samples, spread evenly over the target images x_t."""
    g = torch.Generator().manual_seed(seed)
    n = cfg.pool_size
    anchor = torch.arange(n) % len(x_t)
    if n < len(x_t):  # fewer samples than targets: a seeded spread over them, not the first (class-ordered) ones
        anchor = torch.randperm(len(x_t), generator=torch.Generator().manual_seed(seed))[:n]
    probs = condition_probs(bundle, x_t, cfg.temperature)
    with torch.no_grad():
        anchor_feats = _features(bundle, x_t)
    xs, rel = [], []
    z_all = bundle.sample_latents(n, g)
    step = max(1, chunk // cfg.z_candidates)  # G and C see about `chunk` images a call, whatever the candidates
    for i in range(0, n, step):
        a, z = anchor[i:i + step], z_all[i:i + step]
        p = probs[a]
        if cfg.z_candidates > 1:
            z = best_latents(bundle, p, anchor_feats[a], cfg.z_candidates, g)
        x = bundle.generate(p, z, generator=g)
        rel.append((_features(bundle, x) * anchor_feats[a]).sum(1).cpu())
        xs.append(x.cpu())
    x, relevance = torch.cat(xs), torch.cat(rel)
    weight = torch.ones(n)
    keep = torch.ones(n, dtype=torch.bool)
    if cfg.relevance == "weight":
        # Rescale similarities to [0, 1] within the pool: the least relevant sample counts for nothing.
        weight = (relevance - relevance.min()) / (relevance.max() - relevance.min()).clamp_min(1e-8)
    elif cfg.relevance == "filter":
        keep = relevance >= relevance.quantile(1 - cfg.relevance_keep)
    return PseudoPool(x[keep], probs[anchor][keep], anchor[keep], relevance[keep], weight[keep])
