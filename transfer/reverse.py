"""Reverse validation (Zhong et al., ECML 2010): how well a model's labelling of the unlabelled target images
teaches a fresh network the k labels it never saw. `--method auto` uses it, with real unlabelled images, to keep
the SSL model only where its labels of those images are at least about as good as the labels-only warm start's:
label propagation that drifts onto wrong clusters labels the pool wrongly, and a network taught by those labels
then misclassifies the true labelled images. It needs nothing beyond the k labels and the unlabelled images.
"""

from __future__ import annotations

import torch

from edgeppt.config import TransferConfig
from edgeppt.data import ImageSet
from edgeppt.models import create_model
from edgeppt.train.evaluate import evaluate, predict
from edgeppt.train.loop import Dist, Phase, Trainer

from .methods import supervised


def reverse_accuracy(model: torch.nn.Module, real: torch.Tensor, labelled: ImageSet, cfg: TransferConfig,
                     steps: int) -> float:
    """Label `real` with `model`, train a fresh seeded network on those labels for `steps` steps (in memory, the
    target phase's recipe), and return its accuracy on the labelled images."""
    taught = ImageSet(real, predict(model, real), labelled.classes)
    torch.manual_seed(cfg.seed)  # every candidate's fresh network starts from the same weights
    fresh = create_model(cfg.arch, len(labelled.classes), labelled.shape[0])
    device = next(model.parameters()).device  # on the GPU the run trains on, not the CPU
    Trainer(fresh, [Phase("reverse", steps, supervised(cfg, taught), cfg.lr, cfg.weight_decay, evaluate=False)],
            None, cfg.seed, progress=False, channels_last=True, dist=Dist(0, 1, device)).run()
    return evaluate(fresh, labelled)["accuracy"]
