"""Semi-supervised objectives over labelled target images plus unlabelled pseudo samples.

Each algorithm is a small class that only says how unlabelled logits become a loss; batching, the
ramped and capped unlabelled weight and the per-sample relevance weights are shared. Pseudo samples
come from source classes, so they are out-of-distribution for the target: the weight ramps up slowly,
is capped, and the targets can be soft (UDA) rather than hard (FixMatch).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from edgeppt.config import PSSLConfig
from edgeppt.data import ImageSet

from . import augment
from .objectives import Supervised, sample_batch, shard
from .pseudo import PseudoPool


class SSL(Supervised):
    uses_strong = True

    def __init__(self, labelled: ImageSet, pool: PseudoPool, batch_size: int, cfg: PSSLConfig):
        super().__init__(labelled, batch_size, new_head=not cfg.warm_start)
        self.pool, self.cfg = pool, cfg
        self.frozen: torch.nn.Module | None = None
        k = len(labelled.classes)
        self.register_buffer("p_mean", torch.full((k,), 1.0 / k))  # running mean of guesses (alignment)

    def setup(self, model):
        super().setup(model)
        if self.cfg.warm_start:  # the warm-started model, frozen, makes the unlabelled targets
            self.frozen = copy.deepcopy(model).requires_grad_(False)

    def unlabeled_weight(self, step: int, total: int) -> float:
        ramp = max(1.0, self.cfg.ramp_fraction * total)
        return self.cfg.unlabeled_weight * min(1.0, step / ramp)

    def guess(self, weak_logits: torch.Tensor) -> torch.Tensor:
        """Class probabilities for the weak view; with alignment, divided by their running mean so a few
        target classes cannot absorb all the (off-target) pseudo samples."""
        probs = F.softmax(weak_logits.detach(), 1)
        if self.cfg.align:
            self.p_mean.mul_(0.99).add_(probs.mean(0), alpha=0.01)
            probs = probs / self.p_mean.clamp_min(1e-6)
            probs = probs / probs.sum(1, keepdim=True)
        return probs

    def loss(self, net, g, step, total, dist):
        xl, yl = sample_batch(self.data, self.batch_size, g)
        idx = torch.randint(0, len(self.pool), (self.batch_size * self.cfg.unlabeled_ratio,), generator=g)
        xu, wu, anchor = self.pool.x[idx], self.pool.weight[idx], self.pool.anchor[idx]
        ya = self.data.y[anchor]  # the label of the target image that conditioned each sample
        if self.cfg.mix:
            lam = self.cfg.mix * torch.rand(len(idx), 1, 1, 1, generator=g)
            xu = (1 - lam) * xu + lam * self.data.x[anchor]
        # Views: labelled (weak), unlabelled weak (targets; the student view too without a strong one), strong.
        consistent = self.cfg.consistency > 0
        parts = [augment.weak(xl, g)] + ([augment.weak(xu, g)] if consistent or not self.uses_strong else []) + \
            ([augment.strong(xu, g)] if self.uses_strong else [])
        parts = [shard(t, dist) for t in parts]
        yl, wu, ya = shard(yl, dist), shard(wu, dist), shard(ya, dist)
        dev = next(net.parameters()).device
        logits = net(torch.cat(parts).to(dev))  # one forward over every view (what DDP needs)
        n_l, n_u = len(parts[0]), len(parts[-1])
        lx, ls = logits[:n_l], logits[-n_u:]  # the student's unlabelled logits: the last view
        wu = wu.to(dev)
        sup = F.cross_entropy(lx, yl.to(dev))
        unsup, mask, stats = torch.zeros((), device=dev), 0.0, {}
        if consistent:
            weak_x = parts[1].to(dev)
            lw = logits[n_l:n_l + n_u]
            if self.frozen is not None:
                self.frozen.eval()
                with torch.no_grad():
                    lw = self.frozen(weak_x)
            unsup, mask = self.unlabeled_loss(lw, ls, wu, weak_x)
            unsup = self.cfg.consistency * unsup
        if self.cfg.anchor_weight:
            anchor_ce = (F.cross_entropy(ls, ya.to(dev), reduction="none") * wu).mean()
            unsup = unsup + self.cfg.anchor_weight * anchor_ce
            stats["anchor_ce"] = anchor_ce.item()
        w = self.unlabeled_weight(step, total)
        return sup + w * unsup, {"images": sum(len(p) for p in parts), "sup": sup.item(), "unsup": unsup.item(),
                                 "u_weight": w, "mask": mask, **stats}

    def unlabeled_loss(self, weak_logits, strong_logits, weights, weak_x) -> tuple[torch.Tensor, float]:
        raise NotImplementedError


def _masked_mean(per_sample: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return (per_sample * mask * weights).sum() / max(1, len(per_sample))


class FixMatch(SSL):
    """Hard pseudo-labels from the weak view, above a confidence threshold, taught on the strong view."""

    def unlabeled_loss(self, lw, ls, wu, _):
        conf, target = self.guess(lw).max(1)
        mask = (conf >= self.cfg.threshold).float()
        return _masked_mean(F.cross_entropy(ls, target, reduction="none"), mask, wu), mask.mean().item()


class UDA(SSL):
    """Soft, sharpened targets from the weak view with a confidence mask: tolerant of off-target samples."""

    def unlabeled_loss(self, lw, ls, wu, _):
        guess = self.guess(lw)
        mask = (guess.max(1).values >= self.cfg.threshold).float()
        probs = guess.pow(1 / self.cfg.sharpen)
        probs = probs / probs.sum(1, keepdim=True)
        ce = -(probs * F.log_softmax(ls, 1)).sum(1)
        return _masked_mean(ce, mask, wu), mask.mean().item()


class PseudoLabel(SSL):
    """Lee (2013): confident hard labels on the same (weak) view; no strong augmentation."""

    uses_strong = False

    def unlabeled_loss(self, lw, ls, wu, _):
        conf, target = self.guess(lw).max(1)
        mask = (conf >= self.cfg.threshold).float()
        return _masked_mean(F.cross_entropy(ls, target, reduction="none"), mask, wu), mask.mean().item()


class MeanTeacher(SSL):
    """An EMA teacher's predictions on the weak view; the student matches them on the strong view."""

    def setup(self, model):
        super().setup(model)
        self.teacher = copy.deepcopy(model).requires_grad_(False)

    def unlabeled_loss(self, lw, ls, wu, weak_x):
        self.teacher.eval()
        with torch.no_grad():
            target = F.softmax(self.teacher(weak_x), 1)
        mse = (F.softmax(ls, 1) - target).pow(2).sum(1)
        return _masked_mean(mse, torch.ones_like(mse), wu), 1.0

    @torch.no_grad()
    def after_step(self, model):
        for t, s in zip(self.teacher.state_dict().values(), model.state_dict().values()):
            if t.dtype.is_floating_point:
                t.mul_(self.cfg.ema).add_(s.detach(), alpha=1 - self.cfg.ema)
            else:
                t.copy_(s)


ALGORITHMS: dict[str, type[SSL]] = {"fixmatch": FixMatch, "uda": UDA, "pseudolabel": PseudoLabel,
                                    "meanteacher": MeanTeacher}
