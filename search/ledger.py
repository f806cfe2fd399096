"""The trial ledger: one JSON line per candidate event (admitted or rejected, training, trained), appended and
flushed as it happens.

It is the search's memory across interruptions: a resumed search replays the strategy from its seed and every
candidate already in the ledger is answered from it (costs re-used, accuracy re-reported) instead of re-run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from edgeppt.runs import atomic_write_text

FILE = "trials.jsonl"


def _parse(path: Path) -> tuple[dict[str, dict], bool]:
    """One merged record per candidate, and whether the last line was cut short (then it is left out)."""
    records: dict[str, dict] = {}
    lines = path.read_text().splitlines() if path.exists() else []
    for i, line in enumerate(lines):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:  # a line cut short by a kill, or one being written as another process reads
                return records, True
            raise
        # A later line for the same candidate (costs first, then the trained result) supersedes the earlier.
        records[rec["key"]] = {**records.get(rec["key"], {}), **rec}
    return records, False


def read_trials(run_dir: str | Path) -> list[dict]:
    """The candidates of a search so far, in the order they were proposed; read-only, so safe on a live search."""
    records, _ = _parse(Path(run_dir) / FILE)
    return sorted(records.values(), key=lambda r: r.get("order", 0))


class Ledger:
    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / FILE
        self.records: dict[str, dict] = {}
        self.reload()

    def reload(self) -> None:
        self.records, cut = _parse(self.path)
        if cut:  # drop the cut line from the file: that candidate is redone
            lines = self.path.read_text().splitlines()
            atomic_write_text(self.path, "".join(ln + "\n" for ln in lines[:-1]))

    def get(self, key: str) -> dict | None:
        return self.records.get(key)

    def add(self, rec: dict) -> dict:
        merged = {**self.records.get(rec["key"], {}), **rec}
        self.records[rec["key"]] = merged
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")
            f.flush()
            os.fsync(f.fileno())
        return merged

    def trained(self) -> list[dict]:
        """Every trained candidate, the hand-designed reference included."""
        return [r for r in self.records.values() if r.get("status") == "trained"]

    def trials(self) -> list[dict]:
        """The trained candidates the strategy proposed (what `trials` counts): the reference is not one."""
        return [r for r in self.trained() if not r.get("reference")]

    def lost(self) -> list[dict]:
        """Candidates whose training started but never ended: their trial process (or worker) died."""
        return [r for r in self.records.values() if r.get("status") == "training"]

    def rejected(self) -> list[dict]:
        return [r for r in self.records.values() if r.get("status") == "rejected"]
