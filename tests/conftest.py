"""Shared fixtures: a tiny source bundle over 8x8 digits, built in seconds, so tests need no trained GAN."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgeppt.bundle import save_bundle
from edgeppt.models import create_model

# Tiny test models gain nothing from threads, and threads thrash when the machine is busy.
torch.set_num_threads(1)


class TinyGenerator(nn.Module):
    """G(z, p): the class enters through a linear embedding of p, as in the real bundles."""

    def __init__(self, latent: int, k: int, shape=(1, 8, 8)):
        super().__init__()
        self.shape = shape
        self.embed = nn.Linear(k, 16, bias=False)
        self.net = nn.Sequential(nn.Linear(latent + 16, 64), nn.ReLU(), nn.Linear(64, shape[0] * shape[1] * shape[2]))

    def forward(self, z, p):
        return torch.sigmoid(self.net(torch.cat([z, self.embed(p)], 1))).view(-1, *self.shape)


class WithFeatures(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        f = self.model.forward_features(x)
        return self.model.head(f), f


def make_tiny_bundle(path, k: int = 5, latent: int = 8, seed: int = 0, shape=(1, 8, 8)):
    torch.manual_seed(seed)
    g = TinyGenerator(latent, k, shape)
    c = WithFeatures(create_model("resnet_xs", k, shape[0]))
    return save_bundle(path, g, c, [f"src{i}" for i in range(k)], latent, shape, info={"test": True})


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory):
    return make_tiny_bundle(tmp_path_factory.mktemp("bundle") / "tiny")
