"""What a search publishes in best.json: the chosen architecture (a frozen `{"family", "config"}` that
`create_model` builds) and how it was chosen. Transfer, the pipeline's report and the wizard read it here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from edgeppt.errors import EdgepptError

BEST_FILE = "best.json"


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
    path = Path(folder) / BEST_FILE
    if not path.is_file():
        return None
    try:
        return SearchResult.model_validate(json.loads(path.read_text()))
    except (ValueError, ValidationError) as e:
        raise EdgepptError(f"{path}: not a search result ({str(e).splitlines()[0]}); re-run the search") from e
