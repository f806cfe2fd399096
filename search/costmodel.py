"""What a candidate costs on the target device, and whether it fits the budgets."""

from __future__ import annotations

from pathlib import Path

from edgeppt.devices import Budgets, DeviceProfile
from edgeppt.errors import EdgepptError
from edgeppt.models import create_model

from .costs import count_costs
from .latency import measure_latency
from .predictor import LatencyPredictor

# budget field -> the cost it limits, with its unit for messages
LIMITS = {"latency_ms": ("latency_ms", "ms"), "params": ("params", ""), "macs": ("macs", ""),
          "peak_activation_kib": ("peak_activation_kib", "KiB")}


def predictor_path(profile: DeviceProfile) -> Path:
    if not profile.predictor:
        raise EdgepptError(f"device {profile.name!r} predicts latency but names no predictor file; "
                           f"run `edgeppt devices calibrate {profile.name} --host ...` to make one")
    path = Path(profile.predictor)
    return path if path.is_absolute() or profile.path is None else profile.path.parent / path


class CostModel:
    def __init__(self, profile: DeviceProfile, budgets: Budgets, in_shape: tuple[int, int, int], num_classes: int,
                 warmup: int = 10, repeats: int = 50):
        self.profile, self.budgets, self.in_shape, self.num_classes = profile, budgets, in_shape, num_classes
        self.warmup, self.repeats = warmup, repeats
        self.predictor = LatencyPredictor.load(predictor_path(profile)) if profile.latency == "predicted" else None

    def costs(self, arch: dict) -> dict:
        model = create_model(arch, self.num_classes, self.in_shape[0])
        c = count_costs(model, self.in_shape).dict()
        if self.predictor is not None:
            c["latency_ms"] = self.predictor.predict_model(model, self.in_shape)
        else:
            c["latency_ms"] = measure_latency(model, self.in_shape, self.profile.threads, self.warmup, self.repeats)
        c["latency_kind"] = self.profile.latency
        return c

    def violations(self, c: dict) -> list[str]:
        """Each broken budget as text, e.g. 'latency 2.31 ms > 2 ms'."""
        out = []
        for field, (cost, unit) in LIMITS.items():
            limit = getattr(self.budgets, field)
            if limit is not None and c[cost] > limit:
                out.append(f"{field} {_fmt(c[cost])}{unit and ' ' + unit} > {_fmt(limit)}{unit and ' ' + unit}")
        return out


def _fmt(v: float) -> str:
    return f"{v:,.3g}" if isinstance(v, float) else f"{v:,}"
