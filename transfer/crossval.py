"""Cross-validation of the labels-only target phase over the k labels: how well a start (the untrained network, or
the PP weights) fine-tunes, as the method itself fine-tunes, on the other folds' labels, scored on each fold's own.
auto reads it to choose between scratch and pp where the probes measure only where fine-tuning starts."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from edgeppt.config import TransferConfig
from edgeppt.data import ImageSet
from edgeppt.models import ClassifierNet
from edgeppt.train.loop import Dist, Phase, Trainer

from .methods import supervised


def score(cfg: TransferConfig, start: ClassifierNet, name: str, labelled: ImageSet, fold: torch.Tensor,
          device: torch.device | None = None) -> dict:
    """Fine-tune a copy of `start` per fold on the other folds' labels (the method's own phase `name`: its steps,
    rate, head and augmentation), in memory; score the held-out labels. Returns the mean probability each held-out
    image gets for its own class (graded: with 2 labels per class and fold one image moves the accuracy by 5-10%)
    and the accuracy. Each process of a torchrun job computes the same on its own `device`, unsynchronised."""
    one = Dist(0, 1, device or torch.device("cpu"))
    right = prob = 0.0
    for f in range(int(fold.max()) + 1):
        model = copy.deepcopy(start)
        train, held = labelled.subset((fold != f).nonzero().ravel()), labelled.subset((fold == f).nonzero().ravel())
        Trainer(model, [Phase(name, cfg.finetune_steps, supervised(cfg, train), cfg.lr, cfg.weight_decay)], None,
                cfg.seed, one, progress=False, channels_last=True).run()
        with torch.no_grad():
            p = F.softmax(model.eval()(held.x.to(one.device)), 1).cpu()
        right += (p.argmax(1) == held.y).sum().item()
        prob += p[torch.arange(len(held)), held.y].sum().item()
    return {"prob": prob / len(labelled), "accuracy": right / len(labelled)}
