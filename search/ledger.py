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


def _record(line: str) -> dict | None:
    """A ledger line's record: a JSON object with a string key (else None: cut short or damaged)."""
    try:
        rec = json.loads(line)
    except ValueError:
        return None
    return rec if isinstance(rec, dict) and isinstance(rec.get("key"), str) else None


def _parse(path: Path) -> tuple[dict[str, dict], bool]:
    """One merged record per candidate, and whether any line was cut short or damaged (then it is left out, and
    its candidate is done again). A trial process killed mid-write leaves a cut line, which other processes' lines
    may follow, and another process may be writing the last line as this one reads."""
    records: dict[str, dict] = {}
    lines = path.read_text(errors="replace").splitlines() if path.exists() else []
    cut = False
    for line in lines:
        rec = _record(line)
        if rec is None:
            cut = cut or bool(line.strip())
            continue
        # A later line for the same candidate (costs first, then the trained result) supersedes the earlier.
        records[rec["key"]] = {**records.get(rec["key"], {}), **rec}
    return records, cut


def read_trials(run_dir: str | Path) -> list[dict]:
    """The candidates of a search so far, in the order they were proposed; read-only, so safe on a live search."""
    records, _ = _parse(Path(run_dir) / FILE)
    return sorted(records.values(), key=lambda r: r.get("order", 0))


class Ledger:
    def __init__(self, run_dir: str | Path, repair: bool = False):
        """`repair`: the search's own process, before any trial process starts, rewrites the file without its cut
        or damaged lines. Trial processes only skip them: rewriting a file that others append to would lose
        their lines."""
        self.path = Path(run_dir) / FILE
        self.records: dict[str, dict] = {}
        self.reload()
        if repair and _parse(self.path)[1]:
            good = [ln for ln in self.path.read_text(errors="replace").splitlines() if _record(ln) is not None]
            atomic_write_text(self.path, "".join(ln + "\n" for ln in good))

    def reload(self) -> None:
        self.records, _ = _parse(self.path)

    def get(self, key: str) -> dict | None:
        return self.records.get(key)

    def add(self, rec: dict) -> dict:
        merged = {**self.records.get(rec["key"], {}), **rec}
        self.records[rec["key"]] = merged
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "ab+") as f:
            f.seek(0, os.SEEK_END)
            if f.tell():  # after a line a killed process cut short, start a new one
                f.seek(-1, os.SEEK_END)
                ended = f.read(1) == b"\n"
                if not ended:
                    f.write(b"\n")
            f.write((json.dumps(rec) + "\n").encode())
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
