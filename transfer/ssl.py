"""The SSL phase: labelled target images plus unlabelled images, pseudo samples G(z, p) and/or real ones.

Each algorithm is a small registered class that only says how unlabelled logits become a loss (as in the USB
library); batching, views, ramped and capped weights and per-sample relevance weights are shared.

Pseudo samples come from source classes, so they are out-of-distribution for the target: their weight ramps up
slowly and is capped, their consistency targets come from a frozen copy of the warm-started model, and the
`anchor` algorithm trains them toward the label of the target image that conditioned them instead.
Real unlabelled target images (`--unlabeled`) are in-distribution: they get the algorithm's consistency term
with the student's own weak-view guesses, as in FixMatch.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F

from edgeppt.config import SSL_ALGORITHMS, AugmentConfig, PSSLConfig
from edgeppt.data import ImageSet
from edgeppt.train import augment
from edgeppt.train.loop import ema_model
from edgeppt.train.objective import Supervised, sample_batch, shard

from .pseudo import PseudoPool

ALGORITHMS: dict[str, type[SSL]] = {}


def register(name: str) -> Callable[[type[SSL]], type[SSL]]:
    def add(cls: type[SSL]) -> type[SSL]:
        if name not in SSL_ALGORITHMS:
            raise ValueError(f"SSL algorithm {name!r} is not listed in edgeppt.config.SSL_ALGORITHMS")
        cls.name, ALGORITHMS[name] = name, cls
        return cls
    return add


class SSL(Supervised):
    name = ""
    p_mean: torch.Tensor  # a registered buffer
    uses_strong = True  # the student learns on a strong view; False: on the weak view itself

    def __init__(self, labelled: ImageSet, pool: PseudoPool | None, batch_size: int, cfg: PSSLConfig,
                 aug: AugmentConfig = augment.DEFAULT, real: torch.Tensor | None = None):
        super().__init__(labelled, batch_size, new_head=not cfg.warm_start, aug=aug)
        if pool is None and real is None:
            raise ValueError("the SSL phase needs pseudo samples or real unlabelled images")
        self.pool, self.real, self.cfg = pool, real, cfg
        self.frozen: torch.nn.Module | None = None
        k = len(labelled.classes)
        self.register_buffer("p_mean", torch.full((k,), 1.0 / k))  # running mean of guesses (alignment)

    def setup(self, model):
        super().setup(model)
        if self.cfg.warm_start and self.pool is not None:  # the warm-started model, frozen, guesses for pseudo samples
            self.frozen = copy.deepcopy(model).requires_grad_(False)

    def ramp(self, step: int, total: int) -> float:
        return min(1.0, step / max(1.0, self.cfg.ramp_fraction * total))

    def guess(self, weak_logits: torch.Tensor) -> torch.Tensor:
        """Class probabilities for the weak view; with alignment, divided by their running mean so a few
        target classes cannot absorb all the (off-target) pseudo samples."""
        probs = F.softmax(weak_logits.detach(), 1)
        if self.cfg.align:
            self.p_mean.mul_(0.99).add_(probs.mean(0), alpha=0.01)
            probs = probs / self.p_mean.clamp_min(1e-6)
            probs = probs / probs.sum(1, keepdim=True)
        return probs

    def _views(self, x: torch.Tensor, g: torch.Generator, consistent: bool) -> list[torch.Tensor]:
        """[weak (the guess), student]; without a strong view the student's view is the weak one."""
        if not self.uses_strong:
            return [augment.weak(x, g, self.aug)]
        return ([augment.weak(x, g, self.aug)] if consistent else []) + [augment.strong(x, g, self.aug)]

    def loss(self, net, g, step, total, dist):
        cfg, n_u = self.cfg, self.batch_size * self.cfg.unlabeled_ratio
        xl, yl = sample_batch(self.data, self.batch_size, g)
        groups: dict[str, list[torch.Tensor]] = {"labelled": [augment.weak(xl, g, self.aug)]}
        if self.pool is not None:
            idx = torch.randint(0, len(self.pool), (n_u,), generator=g)
            xu, wu, anchor = self.pool.x[idx], self.pool.weight[idx], self.pool.anchor[idx]
            ya = self.data.y[anchor]  # the label of the target image that conditioned each sample
            if cfg.mix:
                lam = cfg.mix * torch.rand(n_u, 1, 1, 1, generator=g)
                xu = (1 - lam) * xu + lam * self.data.x[anchor]
            groups["pseudo"] = self._views(xu, g, cfg.consistency_weight() > 0)
        if self.real is not None:
            xr = self.real[torch.randint(0, len(self.real), (n_u,), generator=g)]
            groups["real"] = self._views(xr, g, True)
        sized = {name: [shard(v, dist) for v in vs] for name, vs in groups.items()}  # this worker's slice
        views = [v for vs in sized.values() for v in vs]
        dev = next(net.parameters()).device
        logits = net(torch.cat(views).to(dev))  # one forward over every view (what DDP needs)
        chunks = iter(logits.split([len(v) for v in views]))
        out = {name: [next(chunks) for _ in vs] for name, vs in sized.items()}

        sup = F.cross_entropy(out["labelled"][0], shard(yl, dist).to(dev))
        total_loss, stats = sup, {"sup": sup.item()}
        ramp = self.ramp(step, total)
        if "pseudo" in out:
            ls, wu_d = out["pseudo"][-1], shard(wu, dist).to(dev)
            term = torch.zeros((), device=dev)
            if cfg.consistency_weight() > 0:
                weak_x, lw = sized["pseudo"][0].to(dev), out["pseudo"][0]
                if self.frozen is not None:
                    self.frozen.eval()
                    with torch.no_grad():
                        lw = self.frozen(weak_x)
                cons, stats["mask"] = self.unlabeled_loss(lw, ls, wu_d, weak_x)
                term = term + cfg.consistency_weight() * cons
            if cfg.anchor_loss_weight() > 0:
                anchor_ce = (F.cross_entropy(ls, shard(ya, dist).to(dev), reduction="none") * wu_d).mean()
                term = term + cfg.anchor_loss_weight() * anchor_ce
                stats["anchor_ce"] = anchor_ce.item()
            total_loss = total_loss + cfg.unlabeled_weight * ramp * term
            stats["pseudo"] = term.item()
        if "real" in out:
            weak_x = sized["real"][0].to(dev)
            cons, stats["real_mask"] = self.unlabeled_loss(out["real"][0], out["real"][-1],
                                                           torch.ones(len(weak_x), device=dev), weak_x)
            total_loss = total_loss + cfg.real_weight * ramp * cons
            stats["real"] = cons.item()
        stats["images"] = sum(len(v) for v in views)
        return total_loss, stats

    def unlabeled_loss(self, weak_logits, strong_logits, weights, weak_x) -> tuple[torch.Tensor, float]:
        raise NotImplementedError


def _masked_mean(per_sample: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return (per_sample * mask * weights).sum() / max(1, len(per_sample))


@register("fixmatch")
class FixMatch(SSL):
    """Hard pseudo-labels from the weak view, above a confidence threshold, taught on the strong view."""

    def unlabeled_loss(self, lw, ls, wu, _):
        conf, target = self.guess(lw).max(1)
        mask = (conf >= self.cfg.threshold).float()
        return _masked_mean(F.cross_entropy(ls, target, reduction="none"), mask, wu), mask.mean().item()


@register("anchor")
class Anchor(FixMatch):
    """Pseudo samples as label-conditioned augmentation: each is trained toward its anchor's label
    (PSSLConfig.anchor_loss_weight); a consistency term, when asked for, and real unlabelled images use FixMatch's."""


@register("uda")
class UDA(SSL):
    """Soft, sharpened targets from the weak view with a confidence mask: tolerant of off-target samples."""

    def unlabeled_loss(self, lw, ls, wu, _):
        guess = self.guess(lw)
        mask = (guess.max(1).values >= self.cfg.threshold).float()
        probs = guess.pow(1 / self.cfg.sharpen)
        probs = probs / probs.sum(1, keepdim=True)
        ce = -(probs * F.log_softmax(ls, 1)).sum(1)
        return _masked_mean(ce, mask, wu), mask.mean().item()


@register("pseudolabel")
class PseudoLabel(FixMatch):
    """Lee (2013): confident hard labels on the same (weak) view; no strong augmentation."""

    uses_strong = False


@register("meanteacher")
class MeanTeacher(SSL):
    """An EMA teacher's predictions on the weak view; the student matches them on the strong view."""

    def setup(self, model):
        super().setup(model)
        self.teacher = ema_model(model, self.cfg.ema)
        self.teacher.update_parameters(model)  # the teacher starts as the warm-started model
        self.teacher.requires_grad_(False)

    def unlabeled_loss(self, lw, ls, wu, weak_x):
        self.teacher.eval()
        with torch.no_grad():
            target = F.softmax(self.teacher(weak_x), 1)
        mse = (F.softmax(ls, 1) - target).pow(2).sum(1)
        return _masked_mean(mse, torch.ones_like(mse), wu), 1.0

    @torch.no_grad()
    def after_step(self, model):
        self.teacher.update_parameters(model)


assert set(ALGORITHMS) == set(SSL_ALGORITHMS), "every listed SSL algorithm has a registered class"
