"""The `edgeppt` command, a front end: it parses, validates at the edge and calls the stages.

One module per stage registers its commands on the shared Typer app, in pipeline order.
"""

import sys

from . import source, search, transfer, export, pipeline  # noqa: F401,I001  (register their commands, in this order)
from .common import app


def main() -> None:  # pragma: no cover
    sys.exit(app())


__all__ = ["app", "main"]
