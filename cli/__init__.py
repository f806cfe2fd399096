"""The `edgeppt` command: it only assembles the commands each stage owns, in pipeline order.

It sits above the stages (nothing imports it); `python -m edgeppt.cli` and `torchrun -m edgeppt.cli` run it too.
"""

import sys

import typer

from edgeppt.app.cli import app as app_commands
from edgeppt.export.cli import app as export_commands
from edgeppt.pipeline.cli import app as pipeline_commands
from edgeppt.search.cli import app as search_commands
from edgeppt.source.cli import app as source_commands
from edgeppt.transfer.cli import app as transfer_commands

app = typer.Typer(help="Transfer a private source generator to a few-shot target task and ship it to an edge device.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
for stage in (source_commands, search_commands, transfer_commands, export_commands, pipeline_commands, app_commands):
    app.add_typer(stage)


def main() -> None:  # pragma: no cover
    sys.exit(app())


__all__ = ["app", "main"]
