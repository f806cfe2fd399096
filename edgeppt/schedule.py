"""The learning-rate schedule every training loop uses: one function of the step, so a resume needs no state."""

from __future__ import annotations

import math


def cosine_lr(base: float, step: int, total: int, warmup: int = 0, floor: float = 0.0) -> float:
    """Linear warm-up over `warmup` steps, then cosine decay from `base` to `floor * base` at step `total`."""
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return base * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t)))
