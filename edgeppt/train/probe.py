"""Nearest-class-mean probes of a network's features on a few labelled images: how well the features separate
the classes before any fine-tuning. The transfer stage's coverage measure and the search's label-only proxy
both read them."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from edgeppt.models import ClassifierNet


@torch.no_grad()
def features(model: ClassifierNet, x: torch.Tensor, batch: int = 256, normalize: bool = True) -> torch.Tensor:
    """Penultimate features (L2-normalised unless `normalize` is False), in eval mode, on the CPU."""
    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    f = torch.cat([model.forward_features(x[i:i + batch].to(dev)).flatten(1).cpu() for i in range(0, len(x), batch)])
    model.train(was)
    return F.normalize(f, dim=1) if normalize else f


def centroid_distances(f: torch.Tensor, y: torch.Tensor, sums: torch.Tensor, counts: torch.Tensor,
                       own_sums: torch.Tensor, own_counts: torch.Tensor) -> torch.Tensor | None:
    """Each image's distance to every class mean, where its own class mean leaves out `own_sums` / `own_counts`
    (None: a class has nothing left to compare with, e.g. 1 label per class)."""
    left = counts[y] - own_counts
    if (left <= 0).any():
        return None
    dist = torch.cdist(f, sums / counts.clamp_min(1).unsqueeze(1))
    own = (sums[y] - own_sums) / left.unsqueeze(1)
    dist[torch.arange(len(y)), y] = (f - own).norm(dim=1)
    return dist


def _loo_distances(f: torch.Tensor, y: torch.Tensor, k: int) -> torch.Tensor | None:
    sums = torch.zeros(k, f.shape[1]).index_add_(0, y, f)
    return centroid_distances(f, y, sums, torch.bincount(y, minlength=k).float(), f, torch.ones(len(y)))


def label_probe(f: torch.Tensor, y: torch.Tensor, k: int) -> float | None:
    """Leave-one-out nearest-class-mean accuracy over the labelled images."""
    dist = _loo_distances(f, y, k)
    return None if dist is None else (dist.argmin(1) == y).float().mean().item()


def label_probe_soft(f: torch.Tensor, y: torch.Tensor, k: int, temperature: float = 0.1) -> float | None:
    """The leave-one-out probe scored by the mean probability it gives each image's own class, a softmax over
    cosine similarities to the class means / temperature: graded where the accuracy of 20 images moves in steps
    of 5%. Cosine, not distance: the mean of fewer vectors (the own class, less the image)
    has a larger norm, which a distance would count against it."""
    sums = torch.zeros(k, f.shape[1]).index_add_(0, y, f)
    counts = torch.bincount(y, minlength=k)
    if (counts[y] <= 1).any():
        return None
    sim = f @ F.normalize(sums, dim=1).T
    own = F.normalize(sums[y] - f, dim=1)
    sim[torch.arange(len(y)), y] = (f * own).sum(1)
    return F.softmax(sim / temperature, dim=1)[torch.arange(len(y)), y].mean().item()
