"""What a search publishes in best.json: the chosen architecture (a frozen `{"family", "config"}` that
`create_model` builds) and how it was chosen. Transfer, the pipeline's report and the wizard read it here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel

from edgeppt.runs import read_record

BEST_FILE = "best.json"
CONFIG_FILE = "search_config.json"  # the settings the search ran with (a resume and the wizard read them)
PROFILE_FILE = "device_profile.json"  # the device profile as the search judged candidates by (a resume checks it)


class Costs(BaseModel):
    latency_ms: float | None = None
    latency_kind: str | None = None  # measured or predicted
    macs: int | None = None
    params: int | None = None
    peak_activation_kib: float | None = None


class SearchMeta(BaseModel):
    device: str
    budgets: dict[str, Any]
    proxy_accuracy: float
    proxy_seed_accuracies: list[float]
    costs: Costs
    trial: int


class SearchResult(BaseModel):
    family: str
    config: dict[str, Any]
    search: SearchMeta

    def arch(self) -> dict[str, Any]:
        """What `--arch` / create_model take."""
        return {"family": self.family, "config": self.config}


def read_best(folder: str | Path) -> SearchResult | None:
    """The search's record; None before it has finished. A file that is not one is a one-line error."""
    return read_record(Path(folder) / BEST_FILE, SearchResult, "a search result", "re-run the search")
