"""`edgeppt run | demo | app`: the whole pipeline from a config, and the wizard."""

from __future__ import annotations

from .common import app  # noqa: F401
