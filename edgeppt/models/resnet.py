"""ResNet-like family: a 3x3 stem, stages of basic residual blocks, global pooling, linear head."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .base import ClassifierNet, act_layer, conv_bn
from .registry import register_family, register_model


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, act: str):
        super().__init__()
        self.body = nn.Sequential(conv_bn(cin, cout, 3, stride, act=act), conv_bn(cout, cout, 3, act=None))
        self.short = nn.Identity() if stride == 1 and cin == cout else conv_bn(cin, cout, 1, stride, act=None)
        self.act = act_layer(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.short(x))


@register_family("resnet")
class ResNet(ClassifierNet):
    def __init__(self, num_classes: int, in_chans: int = 1, widths: Sequence[int] = (16, 32, 64),
                 depths: Sequence[int] = (1, 1, 1), act: str = "relu", dropout: float = 0.0):
        super().__init__()
        if len(widths) != len(depths) or not widths:
            raise ValueError("widths and depths need the same, non-zero length")
        if min(widths) < 1 or min(depths) < 1:
            raise ValueError("widths and depths must be positive")
        self.stem = conv_bn(in_chans, widths[0], 3, act=act)
        blocks, cin = [], widths[0]
        for i, (w, d) in enumerate(zip(widths, depths)):
            for j in range(d):
                blocks.append(BasicBlock(cin, w, 2 if (j == 0 and i > 0) else 1, act))
                cin = w
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout))
        self.num_features = cin
        self.head = nn.Linear(cin, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.blocks(self.stem(x)))


register_model("resnet_xs", "resnet", widths=[16, 32, 64], depths=[1, 1, 1])
register_model("resnet_s", "resnet", widths=[32, 64, 128], depths=[1, 1, 1])
register_model("resnet_m", "resnet", widths=[32, 64, 128], depths=[2, 2, 2])
register_model("resnet_l", "resnet", widths=[64, 128, 256], depths=[2, 2, 2])
