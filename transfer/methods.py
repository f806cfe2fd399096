"""The transfer methods, each a recipe over the one training loop: whether to pseudo pre-train first,
and which objective trains on the target."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from edgeppt.bundle import SourceBundle
from edgeppt.config import TransferConfig
from edgeppt.data import ImageSet

from .objectives import Distill, Objective, Supervised
from .pseudo import PseudoPool
from .ssl import ALGORITHMS


@dataclass(frozen=True)
class Method:
    pretrain: bool  # PP: classify generated source-class samples before the target phase
    target: Callable[[TransferConfig, ImageSet, SourceBundle | None, PseudoPool | None], Objective]
    needs_pool: bool = False


def _supervised(cfg, labelled, bundle, pool):
    return Supervised(labelled, cfg.batch_size, new_head=True)


def _distill(cfg, labelled, bundle, pool):
    return Distill(labelled, cfg.batch_size, bundle, cfg.kd_weight, cfg.kd_temperature)


def _ssl(cfg, labelled, bundle, pool):
    return ALGORITHMS[cfg.pssl.algorithm](labelled, pool, cfg.batch_size, cfg.pssl)


METHODS: dict[str, Method] = {
    "scratch": Method(pretrain=False, target=_supervised),
    "kd": Method(pretrain=False, target=_distill),
    "pp": Method(pretrain=True, target=_supervised),
    "pssl": Method(pretrain=False, target=_ssl, needs_pool=True),
    "pp+pssl": Method(pretrain=True, target=_ssl, needs_pool=True),
}
