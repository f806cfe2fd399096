from __future__ import annotations

import torch
from torch import nn


class ClassifierNet(nn.Module):
    """Every target network: a feature extractor plus a linear head the transfer methods can swap."""

    num_features: int
    head: nn.Linear

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # (N, num_features)
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))

    def reset_head(self, num_classes: int) -> None:
        self.head = nn.Linear(self.num_features, num_classes).to(next(self.parameters()).device)


def act_layer(name: str) -> nn.Module:
    acts = {"relu": nn.ReLU, "relu6": nn.ReLU6, "hswish": nn.Hardswish, "silu": nn.SiLU}
    if name not in acts:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(acts)}")
    return acts[name](inplace=True)


class ConvBN(nn.Sequential):
    """Conv2d (no bias) + BatchNorm + optional activation; a class so the search space can parametrize it."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: str | None = "relu"):
        layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                                   nn.BatchNorm2d(cout)]
        if act:
            layers.append(act_layer(act))
        super().__init__(*layers)


def conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: str | None = "relu") -> nn.Sequential:
    return ConvBN(cin, cout, k, stride, groups, act)
