"""Exact static costs of a network at batch 1: multiply-accumulates, parameters, peak activation memory.

MACs count every Conv2d and Linear (kernel x input-channels-per-group x output elements; in x out). BatchNorm
folds into the convolution at export and elementwise ops (activations, residual adds, SE scaling) are not
multiply-accumulates, so neither is counted. Peak activation memory is the largest set of float32 tensors alive
at once when the network runs layer by layer: a layer's input and output, plus every tensor held for later
(the input of a residual block until its add or shortcut; the input of a squeeze-excitation until its scaling).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from edgeppt.models.mobilenet import InvertedResidual, SqueezeExcite
from edgeppt.models.resnet import BasicBlock

BYTES = 4  # float32


@dataclass(frozen=True)
class Costs:
    macs: int
    params: int
    peak_activation_kib: float

    def dict(self) -> dict:
        return asdict(self)



def trace(model: nn.Module, in_shape: tuple[int, ...], hooks: list) -> None:
    """One batch-1 forward pass in eval mode so the given hooks see every layer; then remove them."""
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *in_shape))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)


def count_costs(model: nn.Module, in_shape: tuple[int, int, int]) -> Costs:
    """Run one batch-1 forward pass with hooks; `in_shape` is (C, H, W)."""
    macs = 0
    peak = 0
    held: list[int] = []  # bytes of tensors kept alive by the enclosing residual / SE modules
    hooks = []

    def leaf(mod: nn.Module, inp, out) -> None:
        nonlocal macs, peak
        x = inp[0]
        if isinstance(mod, nn.Conv2d):
            macs += out.numel() * (mod.in_channels // mod.groups) * mod.kernel_size[0] * mod.kernel_size[1]
        elif isinstance(mod, nn.Linear):
            macs += mod.in_features * mod.out_features * (out.numel() // mod.out_features)
        peak = max(peak, (x.numel() + out.numel()) * BYTES + sum(held))

    def hold(mod: nn.Module, inp) -> None:
        if not isinstance(mod, InvertedResidual) or mod.residual:
            held.append(inp[0].numel() * BYTES)

    def release(mod: nn.Module, inp, out) -> None:
        if not isinstance(mod, InvertedResidual) or mod.residual:
            held.pop()

    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear, nn.AdaptiveAvgPool2d, nn.AvgPool2d, nn.MaxPool2d)):
            hooks.append(m.register_forward_hook(leaf))
        elif isinstance(m, (InvertedResidual, SqueezeExcite, BasicBlock)):
            hooks.append(m.register_forward_pre_hook(hold))
            hooks.append(m.register_forward_hook(release))
    trace(model, in_shape, hooks)
    params = sum(p.numel() for p in model.parameters())
    return Costs(int(macs), int(params), peak / 1024)
