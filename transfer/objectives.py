"""The transfer stage's objectives beyond plain supervision: distillation from C, and PP."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgeppt.bundle import SourceBundle
from edgeppt.config import AugmentConfig
from edgeppt.data import ImageSet
from edgeppt.models import ClassifierNet
from edgeppt.train import augment
from edgeppt.train.objective import Objective, Supervised, sample_batch, shard

__all__ = ["Distill", "Objective", "PseudoPretrain", "Supervised"]


class _WithAux(nn.Module):
    def __init__(self, model: ClassifierNet, aux: nn.Linear):
        super().__init__()
        self.model, self.aux = model, aux

    def forward(self, x):
        f = self.model.forward_features(x)
        return self.model.head(f), self.aux(f)


class Distill(Supervised):
    """KD baseline: target cross-entropy plus an auxiliary head that matches C's soft outputs on the same
    (augmented) target images. Labels differ between source and target, hence the separate head."""

    def __init__(self, labelled: ImageSet, batch_size: int, bundle: SourceBundle, weight: float, temperature: float,
                 aug: AugmentConfig = augment.DEFAULT):
        super().__init__(labelled, batch_size, new_head=True, aug=aug)
        self.bundle, self.weight, self.t = bundle, weight, temperature
        self.aux: nn.Linear | None = None

    def setup(self, model):
        super().setup(model)
        self.aux = nn.Linear(model.num_features, self.bundle.num_classes)

    def trainable(self, model):
        return _WithAux(model, self.aux)

    def loss(self, net, g, step, total, dist):
        x, y = sample_batch(self.data, self.batch_size, g)
        x = augment.weak(x, g, self.aug)
        x, y = shard(x, dist), shard(y, dist)
        with torch.no_grad():
            teacher = F.softmax(self.bundle.classify(x)[0] / self.t, 1)
        dev = next(net.parameters()).device
        logits, aux = net(x.to(dev))
        y = y.to(dev)
        ce = F.cross_entropy(logits, y)
        kd = F.kl_div(F.log_softmax(aux / self.t, 1), teacher.to(dev), reduction="batchmean") * self.t**2
        return ce + self.weight * kd, {"images": len(x), "ce": ce.item(), "kd": kd.item()}


class PseudoPretrain(Objective):
    """PP: classify G's samples of the source classes (drawn fresh each step, or from a cached pool)."""

    def __init__(self, bundle: SourceBundle, batch_size: int, pool: int = 0, seed: int = 0,
                 aug: AugmentConfig = augment.DEFAULT):
        super().__init__()
        self.bundle, self.batch_size, self.aug = bundle, batch_size, aug
        self.pool: tuple[torch.Tensor, torch.Tensor] | None = None
        if pool:
            g = torch.Generator().manual_seed(seed)
            y = torch.arange(pool) % bundle.num_classes
            with torch.no_grad():
                xs = [bundle.sample_classes(y[i:i + 512], g) for i in range(0, pool, 512)]
            self.pool = (torch.cat(xs), y)

    def setup(self, model):
        if model.head.out_features != self.bundle.num_classes:
            model.reset_head(self.bundle.num_classes)

    def loss(self, net, g, step, total, dist):
        if self.pool is not None:
            idx = torch.randint(0, len(self.pool[1]), (self.batch_size,), generator=g)
            x, y = self.pool[0][idx], self.pool[1][idx]
        else:
            # Draw the whole batch's labels and latents, then generate only this worker's slice.
            y = torch.randint(0, self.bundle.num_classes, (self.batch_size,), generator=g)
            z = self.bundle.sample_latents(self.batch_size, g)
            y, z = shard(y, dist), shard(z, dist)
            with torch.no_grad():
                x = self.bundle.generate(F.one_hot(y, self.bundle.num_classes).float(), z)
        x = augment.weak(x, g, self.aug)
        if self.pool is not None:
            x, y = shard(x, dist), shard(y, dist)
        dev = next(net.parameters()).device
        x, y = x.to(dev), y.to(dev)
        logits = net(x)
        loss = F.cross_entropy(logits, y)
        return loss, {"images": len(x), "train_acc": (logits.argmax(1) == y).float().mean().item()}
