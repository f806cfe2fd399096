"""The run directory's record of its stages, `state.json`, and the names of the files the pipeline keeps there.

Read by the runner (which writes it), the report, the background jobs and the wizard; it imports nothing else of
the pipeline, so each of them can import it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

STATE_FILE, CONFIG_FILE, LOCK_FILE = "state.json", "pipeline.yaml", ".lock"
BUNDLE_DIR, BUNDLE_ZIP = "bundle", "bundle.zip"  # under the run's export/: the export bundle, and it zipped


def export_bundle(run: str | Path) -> Path:
    """The export bundle of a pipeline run."""
    return Path(run) / "export" / BUNDLE_DIR


def read_state(run: str | Path) -> dict[str, Any]:
    """Per stage: its input key, the settings it ran with, status, seconds and summary (empty before any run)."""
    p = Path(run) / STATE_FILE
    try:
        state = json.loads(p.read_text()) if p.is_file() else {}
    except ValueError:  # never half-written (atomic), but a hand edit could break it
        state = {}
    ok = isinstance(state, dict) and isinstance(state.get("stages"), dict)
    return state if ok else {"stages": {}}
