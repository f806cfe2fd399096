"""The hand-designed reference: the MobileNetV2-like layout (`mbv2_config`) at the widest width multiplier whose
costs fit the budgets, the network a user would pick without a search. The search trains it like a candidate and
re-ranks it with the finalists, so a searched network is returned only where the proxy prefers it."""

from __future__ import annotations

from edgeppt.models.mobilenet import mbv2_config

from .costmodel import CostModel
from .costs import count_costs

# Width multipliers scanned from the widest down (the family's named sizes run from x0.5 to x2.0).
WIDTHS = (2.0, 1.75, 1.5, 1.25, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25)
KEY = "reference"  # its key in the trial ledger


def reference_arch(width: float) -> dict:
    return {"family": "mobilenet", "config": mbv2_config(width)}


def widest_fitting(cost: CostModel) -> tuple[float, dict, dict] | None:
    """(width, arch, costs) of the widest member that fits every budget, or None when not even x0.25 does.
    Each width is timed (unless a static budget already rules it out): the search's screening predictor, fitted on
    the space's candidates, is not asked about a layout outside the space."""
    for width in WIDTHS:
        arch = reference_arch(width)
        if cost.violations({**count_costs(cost.model(arch), cost.in_shape).dict(), "latency_ms": None}):
            continue
        costs = cost.costs(arch)
        if not cost.violations(costs):
            return width, arch, costs
    return None
