"""MobileNetV2/V3-like family: inverted residual blocks with per-stage depth, width, kernel,
expansion ratio and squeeze-excitation. The search stage freezes its samples into this config."""

from __future__ import annotations

import torch
from torch import nn

from .base import ClassifierNet, conv_bn
from .registry import register_family, register_model


class SqueezeExcite(nn.Module):
    def __init__(self, c: int, ratio: float = 0.25):
        super().__init__()
        hidden = max(8, int(c * ratio))
        self.fc = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, hidden, 1), nn.ReLU(inplace=True),
                                nn.Conv2d(hidden, c, 1), nn.Hardsigmoid(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc(x)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: float, se: bool, act: str):
        super().__init__()
        hidden = int(round(cin * expand))
        layers: list[nn.Module] = []
        if hidden != cin:
            layers.append(conv_bn(cin, hidden, 1, act=act))
        layers.append(conv_bn(hidden, hidden, kernel, stride, groups=hidden, act=act))
        if se:
            layers.append(SqueezeExcite(hidden))
        layers.append(conv_bn(hidden, cout, 1, act=None))
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + y if self.residual else y


@register_family("mobilenet")
class MobileNet(ClassifierNet):
    """`stages`: list of {width, depth, kernel, expand, se, stride}; the first block of a stage strides."""

    def __init__(self, num_classes: int, in_chans: int = 1, stem: int = 16, stages: list[dict] | None = None,
                 head_width: int = 0, act: str = "relu", dropout: float = 0.0):
        super().__init__()
        stages = stages or [dict(width=16, depth=1, kernel=3, expand=1, se=False, stride=1)]
        if stem < 1 or head_width < 0:
            raise ValueError("stem must be positive and head_width at least 0")
        for s in stages:
            if not isinstance(s, dict) or "width" not in s:
                raise ValueError(f"a stage is a mapping with at least a width, not {s!r}")
            kernel = int(s.get("kernel", 3))
            if int(s["width"]) < 1 or int(s.get("depth", 1)) < 1 or int(s.get("stride", 1)) not in (1, 2) \
                    or kernel < 1 or kernel % 2 == 0 or float(s.get("expand", 4)) <= 0:
                raise ValueError(f"stage {s}: width and depth must be positive, stride 1 or 2, kernel odd, "
                                 "expand positive")
        self.stem = conv_bn(in_chans, stem, 3, act=act)
        blocks, cin = [], stem
        for s in stages:
            unknown = set(s) - {"width", "depth", "kernel", "expand", "se", "stride"}
            if unknown:
                raise ValueError(f"unknown stage keys {sorted(unknown)}")
            for j in range(int(s.get("depth", 1))):
                blocks.append(InvertedResidual(cin, int(s["width"]), int(s.get("kernel", 3)),
                                               int(s.get("stride", 1)) if j == 0 else 1,
                                               float(s.get("expand", 4)), bool(s.get("se", False)), act))
                cin = int(s["width"])
        self.blocks = nn.Sequential(*blocks)
        self.last = conv_bn(cin, head_width, 1, act=act) if head_width else nn.Identity()
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout))
        self.num_features = head_width or cin
        self.head = nn.Linear(self.num_features, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.last(self.blocks(self.stem(x))))


def mbv2_config(width_mult: float, se: bool = False, act: str = "relu") -> dict:
    """The hand-designed MobileNetV2-like layout at a width multiplier (the named sizes and search baselines)."""
    w = lambda c: max(8, int(round(c * width_mult / 8)) * 8)  # noqa: E731  (channels in multiples of 8)
    stages = [dict(width=w(16), depth=1, kernel=3, expand=1, se=False, stride=1),
              dict(width=w(24), depth=2, kernel=3, expand=4, se=False, stride=2),
              dict(width=w(40), depth=2, kernel=5, expand=4, se=se, stride=2),
              dict(width=w(80), depth=2, kernel=3, expand=4, se=se, stride=1)]
    return dict(stem=w(16), stages=stages, head_width=w(128), act=act)


register_model("mobilenet_xs", "mobilenet", **mbv2_config(0.5, False, "relu"))
register_model("mobilenet_s", "mobilenet", **mbv2_config(1.0, False, "relu"))
register_model("mobilenet_m", "mobilenet", **mbv2_config(1.5, True, "hswish"))
register_model("mobilenet_l", "mobilenet", **mbv2_config(2.0, True, "hswish"))
