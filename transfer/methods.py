"""The transfer methods, each a recipe over the one training loop: whether to pseudo pre-train first,
and which objective trains on the target. `auto` is not a recipe: it picks one of these (coverage.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from edgeppt.bundle import SourceBundle
from edgeppt.config import METHODS as METHOD_NAMES
from edgeppt.config import AugmentConfig, TransferConfig
from edgeppt.data import ImageSet
from edgeppt.errors import EdgepptError
from edgeppt.train import augment_rules

from .objectives import Distill, Objective, Supervised
from .pseudo import PseudoPool
from .source_ft import L2SP, TRED
from .ssl import ALGORITHMS

Build = Callable[[TransferConfig, ImageSet, "SourceBundle | None", "PseudoPool | None", "torch.Tensor | None"],
                 Objective]


@dataclass(frozen=True)
class Method:
    pretrain: bool  # PP: classify generated source-class samples before the target phase
    target: Build
    needs_pool: bool = False       # pseudo samples G(z, softmax(C(x_t)))
    needs_unlabeled: bool = False  # real unlabelled target images
    ssl: bool = False              # the target objective is an SSL phase (after a warm start)
    source_net: bool = False       # trains C itself (its ONNX graph made trainable), not --arch
    weight_decay: bool = True      # plain weight decay in the target phase (L2-SP replaces it with its own)
    uses_source: bool = True       # reads the source bundle (G, C or both)
    # A phase before the target one that trains only the objective's own parts: (steps, objective).
    first_step: Callable[[TransferConfig, Objective], tuple[int, Objective]] | None = None


def pp_augment(cfg: TransferConfig, bundle: SourceBundle) -> AugmentConfig:
    """PP's views of G's samples (edgeppt/train/augment_rules.py: the owner's flips, `pretrain_rotation`)."""
    return augment_rules.pp_augment(cfg.augment, cfg.pretrain_rotation, bundle)


def supervised_settings(cfg: TransferConfig) -> dict:
    """Every setting `supervised` reads (the key of a cached labels-only phase: transfer/run.py)."""
    return {"batch": cfg.batch_size, "augment": cfg.augment.key(),
            "label_smoothing": cfg.label_smoothing, "mixup": cfg.mixup, "sam": cfg.sam, "cosine": cfg.cosine_head}


def supervised(cfg: TransferConfig, labelled: ImageSet, cosine: bool = True) -> Supervised:
    """The labels-only target phase's objective (scratch, pp, ft, and the warm start of the SSL methods); kd, l2sp
    and tred smooth their labels alike, so every labels-based baseline trains under the same regulariser. The cosine
    head (cfg.cosine_head) was measured on the target architectures, not on C: ft keeps a plain linear head."""
    return Supervised(labelled, cfg.batch_size, new_head=True, aug=cfg.augment, label_smoothing=cfg.label_smoothing,
                      mixup=cfg.mixup, sam=cfg.sam, cosine=cfg.cosine_head if cosine else 0.0)


def _supervised(cfg, labelled, bundle, pool, real):
    return supervised(cfg, labelled)


def _source_supervised(cfg, labelled, bundle, pool, real):
    return supervised(cfg, labelled, cosine=False)


def _distill(cfg, labelled, bundle, pool, real):
    return Distill(labelled, cfg.batch_size, bundle, cfg.kd_weight, cfg.kd_temperature, aug=cfg.augment,
                   label_smoothing=cfg.label_smoothing)


def _ssl(cfg, labelled, bundle, pool, real):
    return ALGORITHMS[cfg.pssl.algorithm](labelled, pool, cfg.batch_size, cfg.pssl, aug=cfg.augment, real=real,
                                          label_smoothing=cfg.label_smoothing if cfg.pssl.smooth_labels else 0.0)


def _l2sp(cfg, labelled, bundle, pool, real):
    return L2SP(labelled, cfg.batch_size, cfg.source_ft.l2sp_alpha, cfg.source_ft.l2sp_beta, aug=cfg.augment,
                label_smoothing=cfg.label_smoothing)


def _tred(cfg, labelled, bundle, pool, real):
    return TRED(labelled, cfg.batch_size, bundle, cfg.source_ft.tred_weight, aug=cfg.augment,
                label_smoothing=cfg.label_smoothing, seed=cfg.seed)


def _tred_first(cfg: TransferConfig, objective: Objective) -> tuple[int, Objective]:
    assert isinstance(objective, TRED)
    return cfg.source_ft.tred_steps, objective.first_step(cfg.source_ft.tred_mmd)


METHODS: dict[str, Method] = {
    "scratch": Method(pretrain=False, target=_supervised, uses_source=False),
    "kd": Method(pretrain=False, target=_distill),
    "pp": Method(pretrain=True, target=_supervised),
    "pp+kd": Method(pretrain=True, target=_distill),  # PP, then kd's target phase (C's soft outputs as well)
    "pssl": Method(pretrain=False, target=_ssl, needs_pool=True, ssl=True),
    "pp+pssl": Method(pretrain=True, target=_ssl, needs_pool=True, ssl=True),
    "ssl": Method(pretrain=False, target=_ssl, needs_unlabeled=True, ssl=True, uses_source=False),
    "pp+ssl": Method(pretrain=True, target=_ssl, needs_unlabeled=True, ssl=True),
    "ft": Method(pretrain=False, target=_source_supervised, source_net=True),
    "l2sp": Method(pretrain=False, target=_l2sp, source_net=True, weight_decay=False),
    "tred": Method(pretrain=False, target=_tred, source_net=True, first_step=_tred_first),
}
assert set(METHODS) | {"auto"} == set(METHOD_NAMES), "one Method per name the config accepts (auto chooses among them)"


def check_inputs(cfg: TransferConfig, source: str = "--source", unlabeled: str = "--unlabeled") -> None:
    """What the asked method reads is given (a source bundle, unlabelled images): said before any work starts.
    `source`, `unlabeled`: how the caller's user names those settings."""
    method = METHODS.get(cfg.method)  # (auto is not one: it chooses among those its inputs allow)
    if method is None:
        return
    if method.uses_source and cfg.source is None:
        raise EdgepptError(f"method {cfg.method!r} needs a source bundle ({source})")
    if method.needs_unlabeled and cfg.unlabeled is None:
        raise EdgepptError(f"method {cfg.method!r} trains on unlabelled target images: give {unlabeled} (a folder, "
                           "an .npz, or rest: the target's images that are not labelled)")
