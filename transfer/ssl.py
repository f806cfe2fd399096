"""The SSL phase: labelled target images plus unlabelled images, pseudo samples G(z, p) and/or real ones.

Each algorithm is a small registered class that only says how unlabelled logits become a loss (as in the USB
library); batching, views, ramped and capped weights and per-sample relevance weights are shared.

Pseudo samples come from source classes, so they are out-of-distribution for the target: their weight ramps up
slowly and is capped, their consistency targets come from a frozen copy of the warm-started model, and the
`anchor` algorithm trains them toward the label of the target image that conditioned them instead.
Real unlabelled target images (`--unlabeled`) are in-distribution: they get the algorithm's consistency term
with the student's own weak-view guesses (FixMatch, UDA, ...), or, with `labelprop` and the default `anchor`,
labels propagated from the labelled images over a graph of the model's features.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from scipy import sparse
from scipy.sparse.linalg import cg

from edgeppt.config import SSL_ALGORITHMS, AugmentConfig, PSSLConfig
from edgeppt.data import ImageSet
from edgeppt.models import ClassifierNet
from edgeppt.train import augment
from edgeppt.train.loop import ema_model
from edgeppt.train.objective import Supervised, sample_batch, shard
from edgeppt.train.probe import features

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

    @classmethod
    def summary(cls) -> str:
        """The docstring's first sentence: what the wizard and `--help` say of the algorithm."""
        return " ".join((cls.__doc__ or "").split("\n\n")[0].split()).split(". ")[0].rstrip(".")

    p_mean: torch.Tensor  # a registered buffer
    uses_strong = True  # the student learns on a strong view; False: on the weak view itself

    def __init__(self, labelled: ImageSet, pool: PseudoPool | None, batch_size: int, cfg: PSSLConfig,
                 aug: AugmentConfig = augment.DEFAULT, real: torch.Tensor | None = None,
                 label_smoothing: float = 0.0):
        super().__init__(labelled, batch_size, new_head=not cfg.warm_start, aug=aug, label_smoothing=label_smoothing)
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
            ir = torch.randint(0, len(self.real), (n_u,), generator=g)
            groups["real"] = self._views(self.real[ir], g, self.real_reads_weak())
        sized = {name: [shard(v, dist) for v in vs] for name, vs in groups.items()}  # this worker's slice
        views = [v for vs in sized.values() for v in vs]
        dev = next(net.parameters()).device
        logits = net(torch.cat(views).to(dev))  # one forward over every view (what DDP needs)
        chunks = iter(logits.split([len(v) for v in views]))
        out = {name: [next(chunks) for _ in vs] for name, vs in sized.items()}

        sup = F.cross_entropy(out["labelled"][0], shard(yl, dist).to(dev), label_smoothing=self.label_smoothing)
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
        if "real" in out:  # without a weak view, [0] is the student's view (and real_loss reads only that)
            weak_x = sized["real"][0].to(dev)
            cons, stats["real_mask"] = self.real_loss(out["real"][0], out["real"][-1], weak_x, shard(ir, dist))
            total_loss = total_loss + cfg.real_weight * ramp * cons
            stats["real"] = cons.item()
        stats["images"] = sum(len(v) for v in views)
        return total_loss, stats

    def unlabeled_loss(self, weak_logits, strong_logits, weights, weak_x) -> tuple[torch.Tensor, float]:
        raise NotImplementedError

    def real_reads_weak(self) -> bool:
        """Whether real_loss reads the weak view of real images; if not, that view is never computed."""
        return True

    def real_loss(self, weak_logits, strong_logits, weak_x, index) -> tuple[torch.Tensor, float]:
        """The term of real unlabelled images (`index`: their positions in `real`); by default the algorithm's
        consistency term, with the student's own guesses."""
        return self.unlabeled_loss(weak_logits, strong_logits, torch.ones(len(weak_x), device=weak_x.device), weak_x)


def _masked_mean(per_sample: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return (per_sample * mask * weights).sum() / max(1, len(per_sample))


@register("fixmatch")
class FixMatch(SSL):
    """Hard pseudo-labels from the weak view, above a confidence threshold, taught on the strong view."""

    def unlabeled_loss(self, lw, ls, wu, _):
        conf, target = self.guess(lw).max(1)
        mask = (conf >= self.cfg.threshold).float()
        return _masked_mean(F.cross_entropy(ls, target, reduction="none"), mask, wu), mask.mean().item()


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
        self.teacher = ema_model(model, self.cfg.ema, warmup=False)
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


class Propagation(NamedTuple):
    label: torch.Tensor  # each row's propagated class
    certainty: torch.Tensor  # 1 - entropy / log k of its propagated distribution
    reach: torch.Tensor  # the propagated mass that reaches it (all classes, over the square root of its degree)


@torch.no_grad()
def propagate(features: torch.Tensor, labels: torch.Tensor, k: int, neighbours: int, alpha: float,
              rtol: float = 1e-6) -> Propagation:
    """Label propagation (Zhou et al., 2004, as Iscen et al., 2019 use it for deep SSL): the first len(labels) rows
    of `features` are labelled.

    The graph is a symmetric k-nearest-neighbour one over cosine similarities cubed, kept sparse (N x neighbours);
    the labels spread as the solution z of (I - alpha W) z = y, solved by conjugate gradients to `rtol` (the matrix
    is symmetric positive definite). A fixed number of steps of z <- alpha W z + y would stop short: at alpha
    0.99 the series needs hundreds of steps, and labels would not reach images many hops from a labelled one.

    Certainty compares the classes at a row; reach says how much of any label arrives there at all. An image of
    none of the labels' classes can be certain (a cluster of its own, tied to one class by a few edges) and still
    be reached by little: the D^-1/2 z form takes out the degree, so reach is comparable across rows."""
    f = F.normalize(features.float(), dim=1)
    n, m = len(f), min(neighbours, len(f) - 1)
    rows, cols, vals = [], [], []
    for i in range(0, n, 1024):  # top-k similarities in row blocks: memory O(N x neighbours)
        sim = f[i:i + 1024] @ f.T
        sim[torch.arange(len(sim)), torch.arange(i, i + len(sim))] = -1.0  # no self-loops
        top, j = sim.topk(m, dim=1)
        rows.append(torch.arange(i, i + len(sim)).repeat_interleave(m))
        cols.append(j.flatten())
        vals.append(top.clamp_min(0).pow(3).flatten())
    r, c, v = torch.cat(rows).numpy(), torch.cat(cols).numpy(), torch.cat(vals).double().numpy()
    w = sparse.coo_matrix((np.concatenate([v, v]) / 2, (np.concatenate([r, c]), np.concatenate([c, r]))),
                          shape=(n, n)).tocsr()  # W + W^T over 2 (coinciding pairs are summed)
    degree = np.maximum(np.asarray(w.sum(1)).ravel(), 1e-12)
    d = sparse.diags(1 / np.sqrt(degree))
    system = sparse.identity(n, format="csr") - alpha * (d @ w @ d)
    y = np.zeros((n, k))
    y[np.arange(len(labels)), labels.numpy()] = 1.0
    z = torch.from_numpy(np.stack([cg(system, y[:, i], rtol=rtol, maxiter=10 * n)[0] for i in range(k)], 1))
    z = z.float().clamp_min(0)
    p = F.normalize(z, p=1, dim=1)
    certainty = 1 + (p * p.clamp_min(1e-12).log()).sum(1) / torch.log(torch.tensor(float(k)))
    reach = z.sum(1) / torch.from_numpy(np.sqrt(degree)).float()
    certainty[reach == 0] = 0.0  # no label reaches it (a component of the graph without one): no class, not class 0
    return Propagation(p.argmax(1), certainty.clamp(0, 1), reach)


def widest_gap(reach: torch.Tensor, side: int = 10) -> tuple[float, float]:
    """Among one label's images: the widest gap between neighbouring values of log reach that leaves at least `side`
    images (and a twentieth) on each side, over the interquartile range of the values above it, and the reach at
    the gap's middle; (0, 0) where there are too few images. Images of no target class that a strong bridge ties to
    the label sit below such a gap; a class's own images spread without one."""
    v = reach.clamp_min(1e-12).log().sort().values
    n = len(v)
    lo = max(side, n // 20)
    if n < 2 * lo + 1:
        return 0.0, 0.0
    i = torch.arange(lo, n - lo)

    def above(q: float) -> torch.Tensor:  # the q-quantile of v[i:], for every i at once (linear interpolation)
        at = i + q * (n - 1 - i)
        w = at - at.floor()
        return v[at.floor().long()] * (1 - w) + v[at.ceil().long()] * w

    # spread floored at 1% of reach: a class of near-identical images has no spread for a gap to be set against
    score = (v[i] - v[i - 1]) / (above(0.75) - above(0.25)).clamp_min(0.01)
    j = int(score.argmax())
    return score[j].item(), math.exp((v[i[j]] + v[i[j] - 1]).item() / 2)


def within_reach(label: torch.Tensor, reach: torch.Tensor, limit: float, gap: float = 0.0) -> torch.Tensor:
    """The images whose reach is at least `limit` times the 90th percentile of reach among the images propagated
    the same label (0: every image). Per class, because a class's labels spread their mass over all of its images:
    each image of a class ten times as common as the others gets about a tenth as much, and a pool-wide percentile
    would leave a device's commonest class out. Where `gap` is set, a label's images below its widest gap in reach
    are left out too when the gap scores at least `gap` (`widest_gap`): outsiders that a strong bridge ties to one
    label get less of its mass than its own images, but more than the fixed limit."""
    keep = torch.ones_like(reach, dtype=torch.bool)
    if limit:
        for c in label.unique():
            mine = label == c
            keep[mine] = reach[mine] >= limit * reach[mine].quantile(0.9)
            if gap:
                score, at = widest_gap(reach[mine])
                if score >= gap:
                    keep[mine] &= reach[mine] >= at
    return keep


BALANCE_MAX = 10.0


def label_weights(label: torch.Tensor, certainty: torch.Tensor, k: int,
                  shares: torch.Tensor | None = None) -> torch.Tensor:
    """Each propagated label's weight: its certainty times its class's balance, so that each class's labels weigh
    `shares` of the total (default: equal shares, as Iscen et al. weigh them, which is right only where the
    unlabelled images hold every class equally)."""
    counts = torch.bincount(label, minlength=k).clamp_min(1).float()
    shares = torch.full((k,), 1.0 / k) if shares is None else shares / shares.sum()
    # A class the pool hardly holds (one image of 10,000 labelled with it) would weigh thousands of times a
    # typical label, and its every draw jolt the batch loss: at most BALANCE_MAX times its class's fair share.
    return certainty * (len(label) * shares / counts).clamp(max=BALANCE_MAX)[label]


def commonest_over_others(shares: torch.Tensor) -> float:
    """How many times as common the commonest class is as an average other class (1 where all are equal). Unlike
    the largest share over 1/k, it means the same at every k: at two classes the largest share over the equal one
    cannot pass 2."""
    top = shares.max().item()
    return top * (len(shares) - 1) / max(1.0 - top, 1e-12)


def uneven_shares_warning(shares: torch.Tensor, classes: list[str]) -> str:
    """The line a run prints when the warm start predicts the unlabelled images' classes far from equal shares:
    there, learning their propagated labels has cost accuracy (benchmarks/imbalanced.py)."""
    top = int(shares.argmax())
    return (f"warning: the model predicts {shares[top].item():.0%} of the unlabelled images are {classes[top]!r}, "
            f"{commonest_over_others(shares):.1f} times as many as an average other class; where one class was most "
            "of them, label propagation cost accuracy, less with --set pssl.lp_balance=none, and a run without "
            "--unlabeled may be better (docs/transfer.md)")


@register("labelprop")
class LabelProp(FixMatch):
    """Unlabelled images learn labels spread from the labelled ones over a feature graph; pseudo samples as FixMatch.

    Real unlabelled images are taught, on their strong view, the labels that label propagation spreads from the
    labelled images over a graph of the model's features, weighted by each label's certainty (over the pool's mean
    certainty, with `lp_relative`) and, with `lp_balance`, balanced over classes (Iscen et al., CVPR 2019).
    Propagated once at the start (the warm-started model's features) and every `lp_refresh` steps; the labels are
    checkpointed, so a resume repeats them. Pseudo samples: as FixMatch."""

    lp_label: torch.Tensor
    lp_weight: torch.Tensor
    lp_shares: torch.Tensor  # the classes' shares of the unlabelled images, as the warm start predicts them
    lp_first_agree: torch.Tensor  # that share at the first propagation: the warm start's predictions against it
    agreement = 0.0  # share of the last propagation's labels that the model's own predictions agree with
    lp_pp_agree: torch.Tensor  # lp_graph auto: labels over PP's features against the model's (-1: unmeasured)
    lp_pp_used: torch.Tensor  # whether PP's features joined the graph (lp_graph auto decides at the first propagation)
    lp_unreached: torch.Tensor  # share of the unlabelled images lp_reach left out at the first propagation
    graph_model: tuple[ClassifierNet, ...] = ()  # lp_graph model+pp or auto: the PP weights, frozen (no submodule)
    _pp_cache: torch.Tensor | None = None  # their features of the labelled and unlabelled images

    def setup(self, model):
        super().setup(model)
        self._model = [model]  # a list: not a submodule
        n = 0 if self.real is None else len(self.real)
        self.register_buffer("lp_label", torch.zeros(n, dtype=torch.long))
        self.register_buffer("lp_weight", torch.zeros(n))
        self.register_buffer("lp_shares", torch.full((len(self.data.classes),), 1.0 / len(self.data.classes)))
        self.register_buffer("lp_first_agree", torch.tensor(1.0))
        self.register_buffer("lp_pp_agree", torch.tensor(-1.0))
        self.register_buffer("lp_pp_used", torch.tensor(self.cfg.lp_graph == "model+pp"))
        self.register_buffer("lp_unreached", torch.tensor(0.0))
        if n:
            self._propagate(0)

    @torch.no_grad()
    def _propagate(self, step: int) -> None:
        assert self.real is not None
        model = self._model[0]
        was = model.training
        model.eval()
        dev = next(model.parameters()).device
        xl, yl = self.data.x, self.data.y
        if self.cfg.lp_label_views:  # weak views of each labelled image join it as labelled nodes, drawn from the
            g = torch.Generator().manual_seed(torch.initial_seed())  # step's seed (the trainer's: run, phase, step)
            xl = torch.cat([xl] + [augment.weak(self.data.x, g, self.aug) for _ in range(self.cfg.lp_label_views)])
            yl = yl.repeat(1 + self.cfg.lp_label_views)
        x = torch.cat([xl, self.real])
        feats = torch.cat([model.forward_features(x[i:i + 512].to(dev)) for i in range(0, len(x), 512)])
        own = F.softmax(model.head(feats[len(xl):]), 1).cpu()  # the model's own view of each real image
        model.train(was)
        graph = feats.cpu()
        k, neighbours, alpha = len(self.data.classes), self.cfg.lp_neighbours, self.cfg.lp_alpha
        alone = None
        if self.graph_model and step == 0 and self.cfg.lp_graph == "auto":
            # PP's features join where, alone, they spread the labels as the model's own do: they group the target
            # as its labels do, and can correct a graph that a few atypical labels have shaped
            alone = propagate(graph, yl, k, neighbours, alpha)
            pp_alone = propagate(self._pp_features(x, dev), yl, k, neighbours, alpha).label
            self.lp_pp_agree.fill_((alone.label[len(xl):] == pp_alone[len(xl):]).float().mean().item())
            self.lp_pp_used.fill_(bool(self.lp_pp_agree >= self.cfg.lp_graph_agree))
        if self.graph_model and self.lp_pp_used:  # the model's features (fitted to the k labels) beside PP's
            graph, alone = torch.cat([F.normalize(graph.flatten(1), dim=1), self._pp_features(x, dev)], 1), None
        label, certainty, reach = alone if alone is not None else propagate(graph, yl, k, neighbours, alpha)
        label, certainty, reach = label[len(xl):], certainty[len(xl):], reach[len(xl):]
        # images of no target class: the graph ties them to the labels by few edges, so little label mass arrives
        reached = within_reach(label, reach, self.cfg.lp_reach, self.cfg.lp_reach_gap)
        if step == 0:  # estimated once, by the model the labels alone trained: later ones learnt the propagation's
            self.lp_shares.copy_(own[reached].mean(0))
            self.lp_unreached.fill_(1.0 - reached.float().mean().item())
        balance = self.cfg.lp_balance
        keep = reached & (certainty >= (certainty.quantile(self.cfg.lp_drop) if self.cfg.lp_drop
                                        else certainty.min()))
        weight = torch.zeros_like(certainty)  # left-out images weigh 0; the balance counts the kept ones
        weight[keep] = certainty[keep] if balance == "none" else label_weights(
            label[keep], certainty[keep], len(self.data.classes), self.lp_shares if balance == "predicted" else None)
        if self.cfg.lp_agree:  # a propagated label the model itself doubts counts less
            weight = weight * own.gather(1, label[:, None]).squeeze(1).pow(self.cfg.lp_agree)
        if self.cfg.lp_relative:
            weight = weight / weight.mean().clamp_min(1e-12)
        self.agreement = (own.argmax(1) == label)[reached].float().mean().item()  # a statistic, logged per step
        if step == 0:
            self.lp_first_agree.fill_(self.agreement)
        self.lp_label.copy_(label)
        self.lp_weight.copy_(weight)

    def _pp_features(self, x: torch.Tensor, dev: torch.device) -> torch.Tensor:
        """The frozen PP weights' L2-normalised features of `x`; kept after the first call where `x` is always the
        same images (no labelled views, which each propagation draws afresh)."""
        if self._pp_cache is not None and len(self._pp_cache) == len(x) and not self.cfg.lp_label_views:
            return self._pp_cache
        self._pp_cache = features(self.graph_model[0].to(dev), x, batch=512)
        return self._pp_cache

    def loss(self, net, g, step, total, dist):
        if self.real is not None and step > 0 and step % self.cfg.lp_refresh == 0:
            self._propagate(step)
        loss, stats = super().loss(net, g, step, total, dist)
        if self.real is not None:
            stats["lp_agree"] = self.agreement
        return loss, stats

    def real_reads_weak(self) -> bool:
        return self.cfg.lp_consistency > 0  # the propagated labels need no guess: one view, a third less compute

    def real_loss(self, lw, ls, weak_x, index):
        index = index.to(ls.device)
        ce = F.cross_entropy(ls, self.lp_label[index], reduction="none")
        term = (ce * self.lp_weight[index]).mean()
        if self.cfg.lp_consistency > 0:
            term = term + self.cfg.lp_consistency * super().real_loss(lw, ls, weak_x, index)[0]
        return term, self.lp_weight[index].mean().item()


@register("anchor")
class Anchor(LabelProp):
    """Pseudo samples learn their anchor image's label; unlabelled images learn propagated labels (the default).

    Pseudo samples as label-conditioned augmentation: each is trained toward its anchor's label
    (PSSLConfig.anchor_loss_weight); a consistency term on them, when asked for, is FixMatch's. Real unlabelled
    images learn propagated labels, as in `labelprop` (chosen on validation accuracy: docs/transfer-selection.md)."""


assert set(ALGORITHMS) == set(SSL_ALGORITHMS), "every listed SSL algorithm has a registered class"
