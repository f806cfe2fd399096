"""Training signals for the one loop (edgeppt.train.loop). Each objective makes its own batch from the step's
generator and returns (loss, stats) from ONE forward pass of the trained module (what DistributedDataParallel
needs). The stages add their own objectives (PP, P-SSL, distillation, ...) over these."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgeppt.config import AugmentConfig
from edgeppt.data import ImageSet
from edgeppt.models import ClassifierNet
from edgeppt.train import augment
from edgeppt.train.probe import features


def sample_batch(ds: ImageSet, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    idx = torch.randint(0, len(ds), (n,), generator=g)
    return ds.x[idx], ds.y[idx]


def shard(t: torch.Tensor, dist) -> torch.Tensor:
    """This worker's slice of a batch that every worker drew identically."""
    return t[dist.rank::dist.world] if dist.world > 1 else t


class Objective(nn.Module):
    """A phase's loss. Subclasses hold any extra trainable state (heads, teachers) as submodules. The model is a
    ClassifierNet, but for source's GAN phase (the generator): hence `Any` here, narrowed by the subclasses."""

    def setup(self, model: Any) -> None:
        """Called at the start (and on resume) of the phase, under a seeded RNG."""

    def trainable(self, model: Any) -> nn.Module:
        return model

    def loss(self, net: nn.Module, g: torch.Generator, step: int, total: int, dist) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError

    def update(self, net: nn.Module, opt: torch.optim.Optimizer, g: torch.Generator, step: int, total: int,
               dist) -> tuple[torch.Tensor, dict]:
        """One training step: the loss, then the optimiser's step (skipped when the loss is not finite, which the
        trainer then reports). Adversarial objectives override it with their own inner updates."""
        loss, stats = self.loss(net, g, step, total, dist)
        if torch.isfinite(loss):
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return loss, stats

    def after_step(self, model: Any) -> None:
        """Hook after each optimizer step (e.g. an EMA teacher)."""

    def finish(self, model: Any) -> None:
        """Hook once the phase's last step is taken and its weights are final (an EMA's average loaded)."""


class _Cosine(nn.Module):
    """The model with its head read as a cosine classifier: `scale` times the cosine between features and class
    weights (the bias is not used)."""

    def __init__(self, model: ClassifierNet, scale: float):
        super().__init__()
        self.model, self.scale = model, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = F.normalize(self.model.forward_features(x), dim=1)
        return self.scale * f @ F.normalize(self.model.head.weight, dim=1).t()


class Supervised(Objective):
    """Cross-entropy on labelled images under weak augmentation (scratch, the fine-tune after PP, source C).

    With `cosine` > 0 the new head is a cosine classifier at that scale (Baseline++, Chen et al., 2019), its
    weights imprinted from the labels' class means (Qi et al., 2018) and kept at unit norm with a zero bias, so the
    plain model predicts as the cosine one does throughout; the last step bakes the scale into the plain linear
    head (divided by the labels' mean feature norm), so every later phase and stage sees an ordinary head."""

    def __init__(self, labelled: ImageSet, batch_size: int, new_head: bool = False,
                 aug: AugmentConfig = augment.DEFAULT, label_smoothing: float = 0.0, mixup: float = 0.0,
                 sam: float = 0.0, cosine: float = 0.0):
        super().__init__()
        self.data, self.batch_size, self.new_head, self.aug = labelled, batch_size, new_head, aug
        self.label_smoothing, self.mixup, self.sam, self.cosine = label_smoothing, mixup, sam, cosine
        self._head_of: list[ClassifierNet] = []  # the model whose head is cosine (a list: not a submodule)
        self._imprint = False

    def setup(self, model: ClassifierNet) -> None:
        self._imprint = self.new_head or model.head.out_features != len(self.data.classes)
        if self._imprint:
            model.reset_head(len(self.data.classes))
        self._head_of = [model]
        model.head.bias.requires_grad_(not self.cosine)  # the cosine head has none (DDP wants no unused parameter)
        if self.cosine:  # an inherited head (LP-FT's probe) keeps its directions
            with torch.no_grad():
                model.head.weight.copy_(F.normalize(model.head.weight, dim=1))
                model.head.bias.zero_()

    @torch.no_grad()
    def _imprint_head(self, model: ClassifierNet) -> None:
        """A new cosine head starts from the labels' normalised class means. Done at the first step, not in setup:
        the trainer has then put the model in its training memory format, so a run that skipped earlier phases
        (cached PP weights, a resume) computes the same floats."""
        f, y = features(model, self.data.x), self.data.y.cpu()
        for c in y.unique().tolist():  # a class without images keeps its random weights
            model.head.weight[c] = F.normalize(f[y == c].mean(0), dim=0).to(model.head.weight.device)

    def trainable(self, model: ClassifierNet) -> nn.Module:
        return _Cosine(model, self.cosine) if self.cosine else model

    def loss(self, net, g, step, total, dist):
        return self._criterion(net, *self._batch(g, dist, next(net.parameters()).device))

    def update(self, net, opt, g, step, total, dist):
        if self.cosine and self._imprint and step == 0:
            self._imprint_head(self._head_of[0])
        loss, stats = self._step(net, opt, g, step, total, dist)
        if self.cosine:
            with torch.no_grad():
                head = self._head_of[0].head
                head.weight.copy_(F.normalize(head.weight, dim=1))
        return loss, stats

    @torch.no_grad()
    def finish(self, model: ClassifierNet) -> None:
        """Bake the cosine head: plain logits ~ the cosine ones for a typical feature norm of the final weights
        (after an EMA's average is loaded, which would otherwise blend the baked rows back toward unit length)."""
        if self.cosine:
            norm = features(model, self.data.x, normalize=False).norm(dim=1).mean().clamp_min(1e-6)
            model.head.weight.copy_(F.normalize(model.head.weight, dim=1) * (self.cosine / norm))
            model.head.bias.requires_grad_(True)

    def _step(self, net, opt, g, step, total, dist):
        """With `sam` > 0, sharpness-aware minimisation (Foret et al., 2021): the step takes the gradient at the
        weights moved `sam` (rho) along the normalised gradient, on the same batch; batch-norm statistics are
        updated by the first pass only."""
        if not self.sam:
            return super().update(net, opt, g, step, total, dist)
        batch = self._batch(g, dist, next(net.parameters()).device)
        loss, stats = self._criterion(net, *batch)
        if not torch.isfinite(loss):
            return loss, stats
        opt.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for p in net.parameters() if p.grad is not None]
        norm = torch.norm(torch.stack([p.grad.norm() for p in params])) + 1e-12
        with torch.no_grad():
            moves = [p.grad * (self.sam / norm) for p in params]
            for p, e in zip(params, moves):
                p.add_(e)
        bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        momenta = [m.momentum for m in bns]
        for m in bns:
            m.momentum = 0.0
        opt.zero_grad(set_to_none=True)
        self._criterion(net, *batch)[0].backward()
        for m, mom in zip(bns, momenta):
            m.momentum = mom
        with torch.no_grad():
            for p, e in zip(params, moves):
                p.sub_(e)
        opt.step()
        return loss, stats

    def _batch(self, g: torch.Generator, dist, dev: torch.device
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
        x, y = sample_batch(self.data, self.batch_size, g)
        x = (augment.strong if self.aug.labelled_view == "strong" else augment.weak)(x, g, self.aug)
        y2, lam = y, 1.0
        if self.mixup > 0:  # mixup (Zhang et al., 2018): one Beta(a, a) share per batch, drawn from g
            lam = float(np.random.default_rng(int(torch.randint(2**62, (1,), generator=g))).beta(self.mixup,
                                                                                               self.mixup))
            perm = torch.randperm(len(x), generator=g)
            x, y2 = lam * x + (1 - lam) * x[perm], y[perm]
        return shard(x, dist).to(dev), shard(y, dist).to(dev), shard(y2, dist).to(dev), lam

    def _criterion(self, net, x: torch.Tensor, y: torch.Tensor, y2: torch.Tensor, lam: float
                   ) -> tuple[torch.Tensor, dict]:
        logits = net(x)
        loss = lam * F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
        if lam < 1.0:
            loss = loss + (1 - lam) * F.cross_entropy(logits, y2, label_smoothing=self.label_smoothing)
        return loss, {"images": len(x), "train_acc": (logits.argmax(1) == y).float().mean().item()}


class _Probe(nn.Module):
    """The head over frozen features, in eval mode (batch-norm statistics stay as they are)."""

    def __init__(self, model: ClassifierNet):
        super().__init__()
        self.head, self._model = model.head, [model]  # a list: the frozen body is not a submodule (not trained)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        body = self._model[0]
        was = body.training
        body.eval()
        with torch.no_grad():
            f = body.forward_features(x)
        body.train(was)
        return self.head(f)


class Probe(Supervised):
    """A linear probe: a new head trained on frozen features, the first half of LP-FT (Kumar et al., 2022),
    so that fine-tuning the whole network starts from a head that fits the features instead of a random one."""

    def __init__(self, labelled: ImageSet, batch_size: int, aug: AugmentConfig = augment.DEFAULT):
        super().__init__(labelled, batch_size, new_head=True, aug=aug)

    def trainable(self, model: ClassifierNet) -> nn.Module:
        return _Probe(model)
