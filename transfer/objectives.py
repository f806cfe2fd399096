"""The transfer stage's objectives beyond plain supervision: distillation from C, and PP."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgeppt.bundle import SourceBundle
from edgeppt.config import AugmentConfig
from edgeppt.data import ImageSet, reshape_images
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
                 aug: AugmentConfig = augment.DEFAULT, label_smoothing: float = 0.0):
        super().__init__(labelled, batch_size, new_head=True, aug=aug, label_smoothing=label_smoothing)
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
        teacher = self.bundle.probabilities(x, self.t)
        dev = next(net.parameters()).device
        logits, aux = net(x.to(dev))
        y = y.to(dev)
        ce = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
        kd = F.kl_div(F.log_softmax(aux / self.t, 1), teacher.to(dev), reduction="batchmean") * self.t**2
        return ce + self.weight * kd, {"images": len(x), "ce": ce.item(), "kd": kd.item()}


class _WithProjection(nn.Module):
    def __init__(self, model: ClassifierNet, projection: nn.Module):
        super().__init__()
        self.model, self.projection = model, projection

    def forward(self, x):
        f = self.model.forward_features(x)
        return self.model.head(f), self.projection(f)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's loss (Chen et al., 2020): each view must pick its own image's other view among the batch's 2N - 1."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.t() / temperature
    sim.fill_diagonal_(float("-inf"))
    n = len(z1)
    positives = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(sim, positives)


class PseudoPretrain(Objective):
    """PP: classify G's samples of the source classes (drawn fresh each step, or from a cached pool).

    Options: `mix` conditions each fresh sample on a blend of two classes (the second's share from [0, mix]) and
    trains toward that blend, so the features also learn the space between source classes; `teacher` adds a
    distillation term toward C's softened outputs on the same view (data-free distillation through G); `contrastive`
    adds SimCLR's instance discrimination between the weak view and a strong view of each sample, through a
    projection head that PP drops, so the features learn more than the few source classes tell apart.
    `image_size` resizes G's samples to the size the target network is trained and deployed at (the run's setting)."""

    def __init__(self, bundle: SourceBundle, batch_size: int, pool: int = 0, seed: int = 0,
                 aug: AugmentConfig = augment.DEFAULT, mix: float = 0.0, teacher: float = 0.0,
                 temperature: float = 4.0, image_size: int | None = None, contrastive: float = 0.0,
                 contrastive_temperature: float = 0.2, channels: int | None = None):
        super().__init__()
        self.contrastive, self.contrastive_t = contrastive, contrastive_temperature
        self.projection: nn.Module | None = None
        self.bundle, self.batch_size, self.aug = bundle, batch_size, aug
        self.image_size = image_size if image_size != bundle.image_shape[1] else None
        self.channels = channels if channels != bundle.image_shape[0] else None  # e.g. gray G, colour target
        self.mix = mix if bundle.manifest.generator.label != "index" else 0.0  # an index has no blend
        self.teacher, self.t = teacher, temperature
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
        if self.contrastive:
            d = model.num_features
            self.projection = nn.Sequential(nn.Linear(d, d), nn.ReLU(inplace=True), nn.Linear(d, 64))

    def trainable(self, model):
        return model if self.projection is None else _WithProjection(model, self.projection)

    def loss(self, net, g, step, total, dist):
        k = self.bundle.num_classes
        if self.pool is not None:
            idx = torch.randint(0, len(self.pool[1]), (self.batch_size,), generator=g)
            x, y = self.pool[0][idx], self.pool[1][idx]
            target = F.one_hot(y, k).float()
        else:
            # Draw the whole batch's labels and latents, then generate only this worker's slice.
            y = torch.randint(0, k, (self.batch_size,), generator=g)
            target = F.one_hot(y, k).float()
            if self.mix:
                other = (y + torch.randint(1, k, (self.batch_size,), generator=g)) % k  # another class
                share = self.mix * torch.rand(self.batch_size, 1, generator=g)
                target = (1 - share) * target + share * F.one_hot(other, k).float()
            z = self.bundle.sample_latents(self.batch_size, g)
            y, z, target = shard(y, dist), shard(z, dist), shard(target, dist)
            with torch.no_grad():
                x = self.bundle.generate(target, z)
        x, x_strong = augment.weak(x, g, self.aug), augment.strong(x, g, self.aug) if self.contrastive else None
        if self.pool is not None:
            x, y, target = shard(x, dist), shard(y, dist), shard(target, dist)
            x_strong = None if x_strong is None else shard(x_strong, dist)
        dev = next(net.parameters()).device
        views = x if x_strong is None else torch.cat([x, x_strong])
        if self.image_size is not None or self.channels is not None:
            views = reshape_images(views, self.image_size, self.channels)
        out = net(views.to(dev))
        logits, z = (out, None) if x_strong is None else (out[0][:len(x)], out[1])
        y, target = y.to(dev), target.to(dev)
        loss = F.cross_entropy(logits, target if self.mix else y)  # (class indices: the default's exact loss)
        stats = {"images": len(views), "train_acc": (logits.argmax(1) == y).float().mean().item()}
        if z is not None:
            con = nt_xent(z[:len(x)], z[len(x):], self.contrastive_t)
            loss = loss + self.contrastive * con
            stats["contrastive"] = con.item()
        if self.teacher:
            soft = self.bundle.probabilities(x, self.t).to(dev)
            kd = F.kl_div(F.log_softmax(logits / self.t, 1), soft, reduction="batchmean") * self.t**2
            loss = loss + self.teacher * kd
            stats["kd"] = kd.item()
        return loss, stats
