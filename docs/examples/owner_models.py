"""A source-data owner's own models, in BigGAN's conventions rather than edgeppt's (docs/source-bundle.md).

- G(z, y): z of size 32 split hierarchically across the blocks (BigGAN's skip-z), a shared class embedding
  that is linear in y, so a soft y mixes classes; conditional batch norm (eval mode); tanh output in [-1, 1].
- C(x): expects ImageNet-style normalised input and returns logits only.

Pack them with
    edgeppt source pack --generator owner_models:make_generator --classifier owner_models:make_classifier \
        --classes a,b,c --latent-dim 32 --truncation 2.0 --output-range -1,1 \
        --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225 --out bundles/owner-src
run from the folder that holds this file (the factory is imported as a Python module).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

CLASSES, LATENT, SIDE = 3, 32, 32


class CondBatchNorm(nn.Module):
    """BatchNorm whose gain and bias come from the conditioning vector (class embedding + a chunk of z)."""

    def __init__(self, channels: int, cond: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, affine=False)
        self.gain, self.bias = nn.Linear(cond, channels), nn.Linear(cond, channels)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.bn(x) * (1 + self.gain(c))[:, :, None, None] + self.bias(c)[:, :, None, None]


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, cond: int):
        super().__init__()
        self.bn1, self.bn2 = CondBatchNorm(cin, cond), CondBatchNorm(cout, cond)
        self.conv1, self.conv2 = nn.Conv2d(cin, cout, 3, padding=1), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        h = F.interpolate(F.relu(self.bn1(x, c)), scale_factor=2.0)
        h = self.conv2(F.relu(self.bn2(self.conv1(h), c)))
        return h + self.skip(F.interpolate(x, scale_factor=2.0))


class BigGANLike(nn.Module):
    def __init__(self, ch: int = 32, embed: int = 16):
        super().__init__()
        self.chunk = LATENT // 4  # z splits into 4 chunks: one for the stem, one per block
        self.shared = nn.Linear(CLASSES, embed, bias=False)  # BigGAN's shared embedding, linear in y
        self.stem = nn.Linear(self.chunk, 4 * 4 * ch)
        self.blocks = nn.ModuleList(Block(ch, ch, embed + self.chunk) for _ in range(3))  # 4 -> 32 px
        self.out = nn.Sequential(nn.BatchNorm2d(ch), nn.ReLU(), nn.Conv2d(ch, 3, 3, padding=1), nn.Tanh())
        self.ch = ch

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        zs = torch.split(z, self.chunk, 1)
        e = self.shared(y)
        h = self.stem(zs[0]).view(-1, self.ch, 4, 4)
        for block, zc in zip(self.blocks, zs[1:]):
            h = block(h, torch.cat([e, zc], 1))
        return self.out(h)


class SmallClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def make_generator() -> nn.Module:
    """The owner would load their trained weights here (torch.load(..., weights_only=True))."""
    torch.manual_seed(0)
    g = BigGANLike()
    with torch.no_grad():  # give the batch norms plausible running statistics, as training would
        g.train()
        for _ in range(4):
            g(torch.randn(64, LATENT), torch.eye(CLASSES)[torch.randint(0, CLASSES, (64,))])
    return g.eval()


def make_classifier() -> nn.Module:
    torch.manual_seed(1)
    return SmallClassifier().eval()
