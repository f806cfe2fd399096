"""A small class-conditional GAN (SNGAN/BigGAN family) for square 1- or 3-channel images.

G(z, p): the class enters only through a bias-free linear embedding e = W p, so a soft label p
(a mixture of classes) conditions G on the same mixture of class embeddings. e is concatenated
to z and drives conditional GroupNorm gains/biases. GroupNorm normalises per sample, so G has
no train/eval gap (batch-norm running statistics would not match an EMA generator).
D: spectral-normalised convolutions with a projection term <W_D p, phi(x)>; trained with the hinge loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm


def _layout(size: int) -> tuple[int, int]:
    """(start resolution, number of 2x upsamplings) for a square image side that is a multiple of 4."""
    if size % 4 or size < 4:
        raise ValueError(f"image side {size} must be a positive multiple of 4")
    s0, n_up = size // 4, 2
    while s0 > 8 and s0 % 2 == 0:  # larger images: more upsampling stages instead of a huge first layer
        s0, n_up = s0 // 2, n_up + 1
    return s0, n_up


def _groups(c: int) -> int:
    return next(g for g in (8, 4, 2, 1) if c % g == 0)


class CondGroupNorm(nn.Module):
    """GroupNorm whose per-channel gain and bias are linear in the class embedding."""

    def __init__(self, channels: int, embed_dim: int):
        super().__init__()
        self.norm = nn.GroupNorm(_groups(channels), channels, affine=False)
        self.gain = nn.Linear(embed_dim, channels)
        self.bias = nn.Linear(embed_dim, channels)
        for lin in (self.gain, self.bias):  # start as plain GroupNorm (gain 1, bias 0)
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        g = 1 + self.gain(e)
        return self.norm(x) * g[:, :, None, None] + self.bias(e)[:, :, None, None]


class Generator(nn.Module):
    """G(z (N, latent_dim), p (N, num_classes)) -> images (N, C, H, W) in [0, 1].

    DCGAN-sized for CPU training: per stage CGN-ReLU-upsample-conv3x3 (resize-conv, no checkerboard).
    """

    def __init__(self, latent_dim: int, num_classes: int, channels: int = 64,
                 image_shape: tuple[int, int, int] = (1, 28, 28), embed_dim: int = 32):
        super().__init__()
        c_img, h, w = image_shape
        if h != w:
            raise ValueError(f"images must be square, got {h}x{w}")
        self.latent_dim, self.num_classes, self.image_shape = latent_dim, num_classes, tuple(image_shape)
        self.s0, n_up = _layout(h)
        # halving per stage down to `channels` // 2 at the image (16 at least): 2ch at s0 for 28-32 px images, and
        # wider first stages for larger ones, rather than stages of 16 channels at their largest sides
        widths = [max(16, (channels << (n_up - 1)) >> i) for i in range(n_up + 1)]
        cond = latent_dim + embed_dim
        self.embed = nn.Linear(num_classes, embed_dim, bias=False)  # linear in p: soft labels mix classes
        self.fc = nn.Linear(cond, widths[0] * self.s0 * self.s0)
        self.norms = nn.ModuleList(CondGroupNorm(widths[i], cond) for i in range(n_up))
        self.convs = nn.ModuleList(nn.Conv2d(widths[i], widths[i + 1], 3, padding=1) for i in range(n_up))
        self.out_norm = CondGroupNorm(widths[-1], cond)
        self.out = nn.Conv2d(widths[-1], c_img, 3, padding=1)

    def forward(self, z: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        e = torch.cat([z, self.embed(p)], 1)  # BigGAN-style: z and class modulate every stage
        h = self.fc(e).unflatten(1, (-1, self.s0, self.s0))  # no len(z): keeps the batch dynamic for torch.export
        for norm, conv in zip(self.norms, self.convs):
            h = conv(F.interpolate(F.relu(norm(h, e)), scale_factor=2.0, mode="nearest"))
        return torch.sigmoid(self.out(F.relu(self.out_norm(h, e))))


class Discriminator(nn.Module):
    """D(x, p) = psi(phi(x)) + <embed(p), phi(x)>: the projection discriminator of Miyato & Koyama.

    phi: spectral-normalised stride-2 4x4 convolutions (one per generator upsampling), a 3x3 conv, sum pooling.
    """

    def __init__(self, num_classes: int, channels: int = 64, image_shape: tuple[int, int, int] = (1, 28, 28)):
        super().__init__()
        c_img, h, _ = image_shape
        _, n_down = _layout(h)
        widths = [channels * min(2, 2 ** i) for i in range(n_down)]  # ch, 2ch, 2ch, ...
        convs, cin = [], c_img
        for w in widths:
            convs.append(spectral_norm(nn.Conv2d(cin, w, 4, 2, 1)))
            cin = w
        convs.append(spectral_norm(nn.Conv2d(cin, cin, 3, 1, 1)))
        self.convs = nn.ModuleList(convs)
        self.psi = spectral_norm(nn.Linear(cin, 1))
        self.embed = spectral_norm(nn.Linear(num_classes, cin, bias=False))

    def forward(self, x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        h = x * 2 - 1
        for conv in self.convs:
            h = F.leaky_relu(conv(h), 0.1)
        phi = h.sum((2, 3))  # sum pooling as in SNGAN
        return self.psi(phi).squeeze(1) + (self.embed(p) * phi).sum(1)


def d_hinge_loss(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    return F.relu(1 - real).mean() + F.relu(1 + fake).mean()


def g_hinge_loss(fake: torch.Tensor) -> torch.Tensor:
    return -fake.mean()
