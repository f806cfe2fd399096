"""The trial ledger: one JSON line per candidate (rejected or trained), appended and flushed as it happens.

It is the search's memory across interruptions: a resumed search replays the strategy from its seed and every
candidate already in the ledger is answered from it (costs re-used, accuracy re-reported) instead of re-run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from edgeppt.runs import atomic_write_text

FILE = "trials.jsonl"


class Ledger:
    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / FILE
        self.records: dict[str, dict] = {}
        self.reload()

    def reload(self) -> None:
        self.records = {}
        lines = self.path.read_text().splitlines() if self.path.exists() else []
        for i, line in enumerate(lines):
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                if i == len(lines) - 1:  # a line cut short by a kill: drop it, that candidate is redone
                    atomic_write_text(self.path, "".join(ln + "\n" for ln in lines[:-1]))
                    break
                raise
            # A later line for the same candidate (costs first, then the trained result) supersedes the earlier.
            self.records[rec["key"]] = {**self.records.get(rec["key"], {}), **rec}

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
        return [r for r in self.records.values() if r.get("status") == "trained"]

    def rejected(self) -> list[dict]:
        return [r for r in self.records.values() if r.get("status") == "rejected"]
