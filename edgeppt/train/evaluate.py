"""Test-split metrics: accuracy, per-class accuracy and the confusion matrix."""

from __future__ import annotations

import torch
from torch import nn

from edgeppt.data import ImageSet


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch: int = 512) -> torch.Tensor:
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    out = torch.cat([model(x[i:i + batch].to(dev)).argmax(1).cpu() for i in range(0, len(x), batch)])
    model.train(was_training)
    return out


def evaluate(model: nn.Module, test: ImageSet) -> dict:
    pred = predict(model, test.x)
    k = len(test.classes)
    cm = torch.bincount(test.y * k + pred, minlength=k * k).view(k, k)
    per_class = (cm.diag().float() / cm.sum(1).clamp_min(1).float()).tolist()
    return {"accuracy": (pred == test.y).float().mean().item(),
            "per_class_accuracy": dict(zip(test.classes, per_class)),
            "confusion_matrix": cm.tolist()}
