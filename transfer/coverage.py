"""How much the source covers the target, measured without test labels, and what `--method auto` makes of it.

Three label-efficient probes on the k labelled target images (nearest class mean on L2-normalised features,
each labelled image classified by centroids that leave it out):
- `init_probe`: features of the untrained target network (what scratch starts from);
- `pp_probe`: features after pseudo pre-training (what pp starts from);
- `pseudo_probe`: centroids of the pseudo samples G(z, p) labelled by their anchors, leaving out the samples
  the image itself conditioned, in the PP features: do the pseudo samples carry the target classes?
`pseudo_share` puts the last on the scale chance = 0, the labels themselves (`pp_probe`) = 1.
Plus a label-free one: the source classifier's mean confidence on the target images. auto's label-free
augmentation rules (gain, pose, mirror) are in the core, `edgeppt/train/augment_rules.py`: the search's proxy
applies them too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel

from edgeppt.bundle import SourceBundle
from edgeppt.config import AutoConfig
from edgeppt.data import ImageSet
from edgeppt.models import ClassifierNet
from edgeppt.train.probe import centroid_distances, features, label_probe

from .pseudo import PseudoPool


class Coverage(BaseModel):
    chance: float
    source_confidence: float | None = None
    source_probe: float | None = None  # the labels' probe in C's features (reported)
    init_probe: float | None = None
    pp_probe: float | None = None
    pseudo_probe: float | None = None
    pseudo_share: float | None = None
    # auto.cv_folds: the labels cross-validated (transfer/crossval.py): the mean probability a held-out label's class
    # gets after fine-tuning from the untrained network and from the PP weights
    cv_scratch: float | None = None
    cv_pp: float | None = None


class Choice(BaseModel):
    """What auto chose and why (printed, and stored in report.json)."""
    method: str
    pseudo_samples: bool
    reason: str
    pretrain_keep: float = 1.0  # the share of the feature extractor's blocks that keep their PP weights
    coverage: Coverage


def pseudo_probe(f_l: torch.Tensor, y_l: torch.Tensor, f_u: torch.Tensor, anchor: torch.Tensor, k: int) -> float | None:
    """Class means of the pseudo samples (labelled by their anchors) classify the labelled images; each image's
    own pseudo samples are left out, so a class is recognised only through the other images' samples."""
    y_u = y_l[anchor]
    sums = torch.zeros(k, f_u.shape[1]).index_add_(0, y_u, f_u)
    own = torch.zeros(len(y_l), f_u.shape[1]).index_add_(0, anchor, f_u)
    dist = centroid_distances(f_l, y_l, sums, torch.bincount(y_u, minlength=k).float(), own,
                              torch.bincount(anchor, minlength=len(y_l)).float())
    return None if dist is None else (dist.argmin(1) == y_l).float().mean().item()


def measure(labelled: ImageSet, init_feats: torch.Tensor, pp_model: ClassifierNet | None,
            bundle: SourceBundle | None, x_source_shape: torch.Tensor | None, pool: PseudoPool | None) -> Coverage:
    k = len(labelled.classes)
    cov = Coverage(chance=1.0 / k, init_probe=label_probe(init_feats, labelled.y, k))
    if bundle is not None and x_source_shape is not None:
        with torch.no_grad():  # one pass of C gives both: its confidence and its features
            logits, f_c = bundle.classify(x_source_shape)
        cov.source_confidence = F.softmax(logits, 1).max(1).values.mean().item()
        cov.source_probe = label_probe(F.normalize(f_c.flatten(1).float().cpu(), dim=1), labelled.y, k)
    if pp_model is not None:
        f_l = features(pp_model, labelled.x)
        cov.pp_probe = label_probe(f_l, labelled.y, k)
        if pool is not None:
            cov.pseudo_probe = pseudo_probe(f_l, labelled.y, features(pp_model, pool.x), pool.anchor, k)
            if cov.pseudo_probe is not None and cov.pp_probe is not None:
                span = cov.pp_probe - cov.chance
                cov.pseudo_share = max(0.0, min(1.0, (cov.pseudo_probe - cov.chance) / span)) if span > 0 else 0.0
    return cov


def choose(cov: Coverage, cfg: AutoConfig, has_source: bool, has_unlabeled: bool) -> Choice:
    """scratch, pp or pp+pssl (ssl, pp+ssl or pp+pssl with real unlabelled images), with the reason."""
    own, with_pp = ("ssl", "pp+ssl") if has_unlabeled else ("scratch", "pp")
    if not has_source:
        return Choice(method=own, pseudo_samples=False, reason="no source bundle", coverage=cov)
    if cov.pp_probe is None or cov.init_probe is None:
        return Choice(method=with_pp, pseudo_samples=False, coverage=cov,
                      reason="one label per class leaves nothing to compare with; PP without pseudo samples, "
                             "the safer use of the source")
    gain = cov.pp_probe - cov.init_probe
    probes = f"probe accuracy on the labels {cov.pp_probe:.0%} with PP features vs {cov.init_probe:.0%} untrained"
    if gain <= cfg.pp_margin:
        return Choice(method=own, pseudo_samples=False, coverage=cov,
                      reason=f"the source covers the target poorly: {probes}")
    if cov.cv_pp is not None and cov.cv_scratch is not None:  # and where fine-tuning ends, on held-out labels
        probes += (f"; the labels cross-validated: a held-out label's class gets {cov.cv_pp:.2f} fine-tuned from PP "
                   f"vs {cov.cv_scratch:.2f} from scratch")
        if cov.cv_pp - cov.cv_scratch <= cfg.cv_margin:
            return Choice(method=own, pseudo_samples=False, coverage=cov,
                          reason=f"PP's features start ahead but its fine-tuning does not end ahead: {probes}")
    if cfg.pp_margin < gain <= cfg.keep_margin:  # PP's upper blocks transfer least where its gain is doubtful
        return Choice(method=with_pp, pseudo_samples=False, pretrain_keep=cfg.keep_share, coverage=cov,
                      reason=f"PP helps a little ({probes}): its lower {cfg.keep_share:.0%} of blocks kept, the "
                             f"rest trained afresh, pseudo samples off")
    share = cov.pseudo_share if cov.pseudo_share is not None else 0.0
    if cfg.pseudo_min is None:
        return Choice(method=with_pp, pseudo_samples=False, coverage=cov,
                      reason=f"PP helps ({probes}); pseudo samples carry {share:.0%} of the labels' class "
                             "information (used only where auto.pseudo_min is set)")
    pseudo = f"pseudo samples carry {share:.0%} of the labels' class information (need {cfg.pseudo_min:.0%})"
    if share >= cfg.pseudo_min:
        return Choice(method="pp+pssl", pseudo_samples=True, coverage=cov,
                      reason=f"the source covers the target well: {probes}; {pseudo}")
    return Choice(method=with_pp, pseudo_samples=False, coverage=cov,
                  reason=f"PP helps ({probes}) but {pseudo}")
