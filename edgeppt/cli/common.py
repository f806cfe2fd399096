"""What every command module shares: the Typer app, the console, and turning EdgepptError into one line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console

from edgeppt.config import load_yaml, validate
from edgeppt.errors import EdgepptError

app = typer.Typer(help="Transfer a private source generator to a few-shot target task and ship it to an edge device.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
console = Console(stderr=True)


def fail(msg: str, code: int = 2) -> None:
    console.print(f"[bold red]error:[/] {msg}")
    raise typer.Exit(code)


def merged(model, config: Optional[Path], overrides: dict[str, Any], sets: list[str]):
    """YAML config < command-line options < --set key=value (dotted keys reach nested fields)."""
    raw: dict[str, Any] = load_yaml(config, model).model_dump(exclude_unset=True) if config else {}
    raw.update({k: v for k, v in overrides.items() if v is not None})
    for item in sets:
        key, eq, value = item.partition("=")
        if not eq:
            raise EdgepptError(f"--set takes key=value, got {item!r}")
        node = raw
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        try:
            node[leaf] = json.loads(value)
        except json.JSONDecodeError:
            node[leaf] = value
    return validate(model, raw, "settings")


def guarded(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except EdgepptError as e:
        fail(str(e))
    except KeyboardInterrupt:
        console.print("[yellow]interrupted:[/] the last checkpoint is saved; run the same command with --resume to continue")
        raise typer.Exit(130)
