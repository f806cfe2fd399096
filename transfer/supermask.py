"""Supermask training with iterative re-randomisation (IteRand; Chijiwa et al., NeurIPS 2021).

Every convolution and linear layer but the head keeps its weights fixed (drawn from the seed, or a base model:
the PP weights, C's) and trains edge-popup scores instead (Ramanujan et al., 2020): the forward pass uses the
weights whose |score| is in the layer's top (1 - sparsity), with the gradient passed straight through to the
scores. Every `rerand_every` steps each pruned weight is re-drawn with probability `rerand_ratio` (its
generation counts up), which lets the subnetwork search reach values the first draw lacked. Normalisation
layers, biases and the new head train as usual. The result materialises exactly from the update format in
edgeppt.supermask (seed, mask bits, generations), which is what the export bundle ships.
"""

from __future__ import annotations

import math
from typing import Any, cast

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from edgeppt import supermask as fmt
from edgeppt.config import SupermaskConfig
from edgeppt.models import ClassifierNet
from edgeppt.train.objective import Objective


class _TopK(torch.autograd.Function):
    @staticmethod
    def forward(ctx, scores: torch.Tensor, keep: float) -> torch.Tensor:
        k = max(1, int(round(keep * scores.numel())))
        flat = scores.abs().flatten()
        mask = torch.zeros_like(flat)
        mask[flat.topk(k).indices] = 1.0
        return mask.view_as(scores)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None  # straight through


class EdgePopup(nn.Module):
    """The parametrisation weight = values * topk_mask(scores); `values` is the parametrised original (frozen)."""

    generation: torch.Tensor
    base: torch.Tensor

    def __init__(self, values: torch.Tensor, keep: float, layer: int, scale: float, seeded: bool):
        super().__init__()
        self.keep, self.layer, self.scale, self.seeded = keep, layer, scale, seeded
        fan_in = values[0].numel()
        self.scores = nn.Parameter(torch.empty_like(values).uniform_(-1, 1) / math.sqrt(fan_in))
        self.register_buffer("generation", torch.zeros(values.shape, dtype=torch.uint8))
        self.register_buffer("base", values.detach().clone() if not seeded else torch.zeros(0))

    def mask(self) -> torch.Tensor:
        return _TopK.apply(self.scores, self.keep)

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        return values * self.mask()

    def values(self, seed: int) -> torch.Tensor:
        base = None if self.seeded else self.base.cpu().numpy()
        v = fmt.layer_values(seed, self.layer, self.scale, self.generation.cpu().numpy(), base)
        return torch.from_numpy(v).to(self.scores.device)


def masked_layers(model: ClassifierNet) -> list[tuple[str, Any]]:
    """The convolutions and linear layers a supermask covers: all but the head, in a fixed order."""
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, nn.Conv2d | nn.Linear) and not name.startswith("head")]


def attach(model: ClassifierNet, cfg: SupermaskConfig, seed: int, seeded: bool) -> None:
    """Turn the model's layers into supermask layers: seeded (signed Kaiming constants from `seed`, scaled for
    the kept share as edge-popup does) or over its current weights as the base."""
    keep = 1.0 - cfg.sparsity
    with torch.random.fork_rng(devices=[]):  # the scores' init from the run's seed, not from what PP or a cache left
        torch.manual_seed(seed)
        _attach(model, keep, seed, seeded)


def _attach(model: ClassifierNet, keep: float, seed: int, seeded: bool) -> None:
    for j, (_, m) in enumerate(masked_layers(model)):
        w = m.weight.detach()
        if seeded:
            scale = math.sqrt(2.0 / (w[0].numel() * keep))
            values = torch.from_numpy(scale * fmt.signs(seed, j, 0, w.numel())).view_as(w)
        else:
            scale = float(w.std())  # re-drawn weights take the base's spread
            values = w.clone()
        with torch.no_grad():
            m.weight.copy_(values)
        parametrize.register_parametrization(m, "weight", EdgePopup(values, keep, j, scale, seeded))
        cast(Any, m).parametrizations.weight.original.requires_grad_(False)


def _popups(model: nn.Module) -> list[tuple[str, Any, EdgePopup]]:
    """(name, layer, its EdgePopup) of every supermask layer."""
    out = []
    for name, m in model.named_modules():
        if parametrize.is_parametrized(m, "weight"):
            p = cast(Any, m).parametrizations.weight[0]
            if isinstance(p, EdgePopup):
                out.append((name, m, p))
    return out


@torch.no_grad()
def rerandomise(model: nn.Module, seed: int, ratio: float, g: torch.Generator) -> int:
    """IteRand: each pruned weight is re-drawn with probability `ratio`; returns how many were."""
    count = 0
    for _, m, p in _popups(model):
        pruned = p.mask() == 0
        pick = pruned & (torch.rand(pruned.shape, generator=g) < ratio).to(pruned.device) & (p.generation < 255)
        p.generation[pick] += 1
        m.parametrizations.weight.original.copy_(p.values(seed))
        count += int(pick.sum())
    return count


class Supermasked(Objective):
    """Wraps the target phase's objective: the same loss, with IteRand re-randomisation after the steps."""

    def __init__(self, inner: Objective, cfg: SupermaskConfig, seed: int):
        super().__init__()
        self.inner, self.cfg, self.seed = inner, cfg, seed
        self._step = 0

    def setup(self, model):
        self.inner.setup(model)

    def trainable(self, model):
        return self.inner.trainable(model)

    def loss(self, net, g, step, total, dist):
        self._step = step
        return self.inner.loss(net, g, step, total, dist)

    def update(self, net, opt, g, step, total, dist):  # the inner objective's own step (the cosine head's, SAM)
        self._step = step
        return self.inner.update(net, opt, g, step, total, dist)

    def finish(self, model):
        self.inner.finish(model)

    def after_step(self, model):
        self.inner.after_step(model)
        done = self._step + 1
        if self.cfg.rerand_ratio > 0 and done % self.cfg.rerand_every == 0:
            rerandomise(model, self.seed, self.cfg.rerand_ratio,
                        torch.Generator().manual_seed(self.seed * 7919 + done))


def finish(model: ClassifierNet, seed: int) -> dict:
    """Bake the masks into plain weights (so export and every later stage see an ordinary model) and return what
    model.pt keeps: the update's arrays (edgeppt.supermask.pack, as tensors and strings) and, over a base model,
    the base weights of the masked layers."""
    layers, base = [], {}
    for name, m, p in _popups(model):
        key = f"{name}.weight"
        layers.append({"name": key, "scale": p.scale, "mask": p.mask().bool().cpu().numpy(),
                       "generation": p.generation.cpu().numpy()})
        if not p.seeded:
            base[key] = p.base.cpu().numpy()
        parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
    arrays = fmt.pack(seed, layers, base or None)
    update = {k: v.tolist() if v.dtype.kind in "SU" else torch.from_numpy(v.copy())
              for k, v in arrays.items()}
    return {"update": update, "base": {k: torch.from_numpy(v) for k, v in base.items()} or None}


def update_size(update: dict) -> int:
    """Bytes of the update as the export bundle stores it."""
    return len(fmt.to_npz({k: v.numpy() if isinstance(v, torch.Tensor) else np.array(v) for k, v in update.items()}))
