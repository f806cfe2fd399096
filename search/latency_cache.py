"""Measured latencies kept per machine, so that the same search run twice on one machine sees the same costs.

A measurement is keyed by everything that decides it: the architecture, the input shape and classes, the formats
and int8 recipe it was timed in, the threads, the onnxruntime version, the opset and this machine (CPU model and
core count). One small JSON file per key, written atomically; files that do not parse are ignored.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
from pathlib import Path
from typing import Any

from edgeppt.onnxspec import OPSET
from edgeppt.runs import atomic_write_json, json_digest


def cache_dir() -> Path:
    root = os.environ.get("EDGEPPT_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() \
        / "edgeppt"
    return Path(root) / "latency"


def machine() -> dict[str, Any]:
    model = platform.processor()
    try:
        model = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                      if ln.startswith("model name")), model)
    except OSError:
        pass
    import onnxruntime

    return {"cpu": model, "cores": os.cpu_count(), "machine": platform.machine(),
            "onnxruntime": onnxruntime.__version__, "opset": OPSET}


class LatencyCache:
    def __init__(self, folder: Path | None = None):
        self.folder, self.host = folder or cache_dir(), machine()

    def _path(self, key: dict[str, Any]) -> Path:
        return self.folder / f"{json_digest({**key, 'host': self.host}, 24)}.json"

    def get(self, key: dict[str, Any]) -> dict[str, float] | None:
        try:
            data = json.loads(self._path(key).read_text())
            got = {str(k): float(v) for k, v in data["latency_by_format"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None
        # a damaged entry (none, NaN, zero) is measured again: a NaN latency would pass every budget
        return got if got and all(math.isfinite(v) and v > 0 for v in got.values()) else None

    def runs(self, key: dict[str, Any]) -> int:
        """How many measurements the entry is the median of (1 for entries written before this was kept)."""
        try:
            return int(json.loads(self._path(key).read_text()).get("runs", 1))
        except (OSError, ValueError, TypeError, AttributeError):
            return 1

    def put(self, key: dict[str, Any], by_format: dict[str, float], runs: int = 1) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self._path(key), {"key": key, "host": self.host, "latency_by_format": by_format,
                                                "runs": runs})
        except OSError as e:  # a cache that cannot be written only costs the next search a measurement
            print(f"warning: latency cache {self.folder} not written ({e.strerror or e})", file=sys.stderr)
