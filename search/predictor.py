"""Latency predictor for devices that cannot be timed from here: a per-layer linear model.

Every Conv2d / Linear of the network is a layer of one kind (dense conv, 1x1 pointwise conv, depthwise conv,
linear); the predicted latency is

    intercept + sum over kinds of ms_per_MMAC[kind] * MACs[kind] + ms_per_Melement * activation elements
              + ms_per_layer * layers

with non-negative coefficients fitted by `fit` on probe models timed on the device (`edgeppt devices calibrate`).
Activation elements (every layer's output) stand for memory traffic, the layer count for per-operator overhead.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from torch import nn

from edgeppt.errors import EdgepptError
from edgeppt.runs import atomic_write_json

from .costs import trace

FEATURES = ("dense_mmacs", "pointwise_mmacs", "depthwise_mmacs", "linear_mmacs", "activation_melems", "layers")


def layer_features(model: nn.Module, in_shape: tuple[int, int, int]) -> dict[str, float]:
    """The predictor's inputs for `model` at batch 1."""
    f = dict.fromkeys(FEATURES, 0.0)

    def hook(mod: nn.Module, inp, out) -> None:
        if isinstance(mod, nn.Conv2d):
            macs = out.numel() * (mod.in_channels // mod.groups) * mod.kernel_size[0] * mod.kernel_size[1]
            kind = ("depthwise" if mod.groups > 1 else "pointwise" if mod.kernel_size == (1, 1) else "dense")
        else:  # hooks are registered on Conv2d and Linear only
            assert isinstance(mod, nn.Linear)
            macs, kind = mod.in_features * mod.out_features, "linear"
        f[f"{kind}_mmacs"] += macs / 1e6
        f["activation_melems"] += out.numel() / 1e6
        f["layers"] += 1

    hooks = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    trace(model, in_shape, hooks)
    return f


@dataclass
class LatencyPredictor:
    intercept_ms: float
    coef_ms: dict[str, float]  # per unit of each feature
    origin: str = ""  # how the coefficients were obtained
    heldout: dict = field(default_factory=dict)  # error on probes left out of the fit

    def predict(self, features: dict[str, float]) -> float:
        return self.intercept_ms + sum(self.coef_ms.get(k, 0.0) * features[k] for k in FEATURES)

    def predict_model(self, model: nn.Module, in_shape: tuple[int, int, int]) -> float:
        return self.predict(layer_features(model, in_shape))

    def save(self, path: str | Path) -> Path:
        return atomic_write_json(path, asdict(self))

    @classmethod
    def load(cls, path: str | Path) -> LatencyPredictor:
        try:
            raw = json.loads(Path(path).read_text())
            pred = cls(**raw)
        except (OSError, ValueError, TypeError) as e:  # ValueError: not JSON, or not UTF-8
            raise EdgepptError(f"cannot read latency predictor {path}: {e}") from e
        numbers = [pred.intercept_ms, *pred.coef_ms.values()] if isinstance(pred.coef_ms, dict) else None
        if numbers is None or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in numbers):
            raise EdgepptError(f"{path}: intercept_ms and the values of coef_ms must be finite numbers")
        unknown = set(pred.coef_ms) - set(FEATURES)
        if unknown:
            raise EdgepptError(f"{path}: unknown predictor features {sorted(unknown)}; known: {list(FEATURES)}")
        return pred


def fit(features: list[dict[str, float]], latency_ms: list[float], origin: str = "") -> LatencyPredictor:
    """Non-negative least squares on relative error (small and large probes count alike)."""
    from scipy.optimize import nnls

    if len(features) < 3:
        raise EdgepptError(f"need at least 3 timed probes to fit a latency predictor, got {len(features)}")
    x = np.array([[1.0, *(f[k] for k in FEATURES)] for f in features])
    y = np.asarray(latency_ms, dtype=float)
    w = 1.0 / np.maximum(y, 1e-6)
    coef, _ = nnls(x * w[:, None], y * w)
    return LatencyPredictor(float(coef[0]), {k: float(c) for k, c in zip(FEATURES, coef[1:])}, origin)


def errors(pred: LatencyPredictor, features: list[dict[str, float]], latency_ms: list[float]) -> dict:
    """Mean and worst absolute percentage error of `pred` on these probes, and the share predicted within +-10%
    (the figure nn-Meter reports: >= 99% on mobile CPUs)."""
    rel = [abs(pred.predict(f) - y) / y for f, y in zip(features, latency_ms)]
    return {"probes": len(rel), "mape_pct": 100 * float(np.mean(rel)), "max_ape_pct": 100 * float(np.max(rel)),
            "within_10pct": float(np.mean([r <= 0.10 for r in rel]))}
