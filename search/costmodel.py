"""What a candidate costs on the target device, and whether it fits the budgets."""

from __future__ import annotations

import statistics
from pathlib import Path

from edgeppt.devices import Budgets, DeviceProfile
from edgeppt.errors import EdgepptError
from edgeppt.int8 import device_recipe, tensorrt
from edgeppt.models import create_model

from .costs import count_costs
from .latency import deployed_latency
from .latency_cache import LatencyCache
from .predictor import LatencyPredictor, fit, layer_features

SCREEN_AFTER = 8  # measured candidates before the screening predictor is trusted
SCREEN_MARGIN = 1.5  # reject unmeasured only when predicted this far over the latency budget

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
                 warmup: int = 10, repeats: int = 50, band: float = 0.1, cache: LatencyCache | None = None):
        self.profile, self.budgets, self.in_shape, self.num_classes = profile, budgets, in_shape, num_classes
        self.warmup, self.repeats, self.band, self.cache = warmup, repeats, band, cache
        self.predictor = LatencyPredictor.load(predictor_path(profile)) if profile.latency == "predicted" else None
        # Time candidates as the export will ship them: int8 too where the device's export writes it.
        self.int8 = device_recipe(profile.export.symmetric_activations, tensorrt(profile)) \
            if "int8" in profile.export.formats else None  # the export's own recipe for this device
        self._seen: list[tuple[dict, float]] = []  # (layer features, measured ms) of this search's candidates

    def at(self, in_shape: tuple[int, int, int]) -> CostModel:
        """The same device, budgets and latency cache for networks of another input (the source classifier's)."""
        return CostModel(self.profile, self.budgets, in_shape, self.num_classes, self.warmup, self.repeats, self.band,
                         self.cache)

    def model(self, arch: dict):
        return create_model(arch, self.num_classes, self.in_shape[0])

    def remember(self, records: list[dict]) -> None:
        """Take back the measurements a resumed search made before (ledger records, in their order): screening
        then guesses from the same points as an uninterrupted search would."""
        if self.budgets.latency_ms is None or self.predictor is not None:
            return
        for rec in records:
            if rec.get("sample") is not None and str(rec.get("latency_kind", "")).startswith("measured"):
                self._seen.append((layer_features(self.model(rec["arch"]), self.in_shape), rec["latency_ms"]))

    def costs(self, arch: dict, screen: bool = False) -> dict:
        """MACs, params, peak activation and latency (`latency_kind` says how it was obtained).

        With `screen`, measuring is skipped where it cannot change the verdict: a candidate over a static budget,
        or one whose latency a predictor fitted on this search's own measurements puts above SCREEN_MARGIN x the
        budget. Such candidates are rejected on that evidence; a candidate is never admitted without a measurement.
        """
        model = self.model(arch)
        c = count_costs(model, self.in_shape).dict()
        if self.predictor is not None:
            c.update(latency_ms=self.predictor.predict_model(model, self.in_shape), latency_kind="predicted")
            return c
        limit = self.budgets.latency_ms
        if screen and limit is not None:
            if self.violations({**c, "latency_ms": 0.0}):
                return {**c, "latency_ms": None, "latency_kind": "not measured"}
            feats = layer_features(model, self.in_shape)
            if len(self._seen) >= SCREEN_AFTER:
                guess = fit([f for f, _ in self._seen], [y for _, y in self._seen]).predict(feats)
                if guess > SCREEN_MARGIN * limit:
                    return {**c, "latency_ms": guess, "latency_kind": "screened"}
        by_format, how = self._measure(model, arch, limit)
        ms = min(by_format.values())
        deployed = min(by_format, key=lambda f: (by_format[f], f != "onnx"))
        c.update(latency_ms=ms, latency_kind=f"measured, {deployed}{how}",
                 latency_by_format={f: round(v, 4) for f, v in by_format.items()})
        if screen and limit is not None:
            self._seen.append((feats, c["latency_ms"]))
        return c

    def _measure(self, model, arch: dict, limit: float | None) -> tuple[dict[str, float], str]:
        """{format: ms} of what will ship, from this machine's cache or measured; near the budget (within `band`
        of it) measured three times and judged on the median, so that noise does not decide the verdict."""
        key = {"arch": arch, "in": list(self.in_shape), "classes": self.num_classes, "threads": self.profile.threads,
               "int8": None if self.int8 is None else self.int8.describe(), "repeats": self.repeats}
        hit = self.cache.get(key) if self.cache else None
        near = hit is not None and limit is not None and abs(min(hit.values()) - limit) <= self.band * limit
        if hit is not None and not (near and self.cache is not None and self.cache.runs(key) < 3):
            return hit, " (cached)"  # (one measurement near this search's budget is measured again, three times)
        runs = [deployed_latency(model, self.in_shape, self.profile.threads, self.int8, self.warmup, self.repeats)[1]]
        if limit is not None and abs(min(runs[0].values()) - limit) <= self.band * limit:
            runs += [deployed_latency(model, self.in_shape, self.profile.threads, self.int8, self.warmup,
                                      self.repeats)[1] for _ in range(2)]
        by_format = {f: statistics.median(r[f] for r in runs) for f in runs[0]}
        if self.cache:
            self.cache.put(key, by_format, len(runs))
        return by_format, f" (median of {len(runs)}, near the budget)" if len(runs) > 1 else ""

    def violations(self, c: dict) -> list[str]:
        """Each broken budget as text, e.g. 'latency_ms 2.31 ms > 2 ms'."""
        out = []
        for field, (cost, unit) in LIMITS.items():
            limit = getattr(self.budgets, field)
            if limit is not None and c[cost] is not None and c[cost] > limit:
                out.append(f"{field} {_fmt(c[cost])}{unit and ' ' + unit} > {_fmt(limit)}{unit and ' ' + unit}")
        return out


def _fmt(v: float) -> str:
    return f"{v:,.3g}" if isinstance(v, float) else f"{v:,}"
