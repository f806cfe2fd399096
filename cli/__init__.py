"""The `edgeppt` command: it only assembles the commands each stage owns, in pipeline order.

It sits above the stages (nothing imports it); `python -m edgeppt.cli` and `torchrun -m edgeppt.cli` run it too.
"""

import os
import sys
import tempfile
import traceback

import typer
from rich.markup import escape

from edgeppt.app.cli import app as app_commands
from edgeppt.cli_support import console
from edgeppt.export.cli import app as export_commands
from edgeppt.pipeline.cli import app as pipeline_commands
from edgeppt.search.cli import app as search_commands
from edgeppt.source.cli import app as source_commands
from edgeppt.transfer.cli import app as transfer_commands

app = typer.Typer(help="Transfer a private source generator to a few-shot target task and ship it to an edge device.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
for stage in (source_commands, search_commands, transfer_commands, export_commands, pipeline_commands, app_commands):
    app.add_typer(stage)


# The exception classes of the click that typer runs on (recent typer releases vendor their own copy of click).
_CLICK: dict[str, type[Exception]] = {c.__name__: c for c in typer.BadParameter.__mro__ if issubclass(c, Exception)}
UsageError, ClickException = _CLICK["UsageError"], _CLICK["ClickException"]


def main() -> None:
    """Run the command; a usage error (a missing or malformed option) is one line like every other error, not
    a framed usage box, so that it stays copyable at any terminal width."""
    command = typer.main.get_command(app)
    try:
        code = command.main(standalone_mode=False)
    except UsageError as e:
        ctx = getattr(e, "ctx", None)
        where = f" (see {ctx.command_path} --help)" if ctx is not None else ""
        console.print(f"[bold red]error:[/] {escape(getattr(e, 'format_message', e.__str__)())}{escape(where)}",
                      soft_wrap=True, highlight=False)
        sys.exit(2)
    except ClickException as e:
        console.print(f"[bold red]error:[/] {escape(getattr(e, 'format_message', e.__str__)())}", soft_wrap=True,
                      highlight=False)
        sys.exit(getattr(e, "exit_code", 1))
    except (typer.Abort, KeyboardInterrupt):  # click turns Ctrl-C outside a stage (e.g. `edgeppt app`) into Abort
        console.print("[yellow]interrupted[/]")
        sys.exit(130)
    except Exception as e:  # anything a stage did not turn into an EdgepptError: one line, the traceback in a file
        if os.environ.get("EDGEPPT_DEBUG"):
            raise
        sys.exit(_unexpected(e))
    sys.exit(code if isinstance(code, int) else 0)


def _unexpected(e: Exception) -> int:
    """An OSError names the file it failed on (a folder that cannot be made, a full disk): that is the message. Any
    other exception is a fault of ours: the line says where its traceback was written, for a bug report."""
    if isinstance(e, OSError):
        console.print(f"[bold red]error:[/] {escape(str(e))}", soft_wrap=True, highlight=False)
        return 2
    with tempfile.NamedTemporaryFile("w", prefix="edgeppt-error-", suffix=".log", delete=False) as f:
        traceback.print_exception(e, file=f)
    console.print(f"[bold red]error:[/] internal error, {escape(type(e).__name__)}: {escape(str(e))} (traceback in "
                  f"{escape(f.name)}; EDGEPPT_DEBUG=1 prints it)", soft_wrap=True, highlight=False)
    return 1


__all__ = ["app", "main"]
