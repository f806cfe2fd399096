"""`edgeppt devices ...` and `edgeppt search`: device profiles and architecture search."""

from __future__ import annotations

from .common import app  # noqa: F401
