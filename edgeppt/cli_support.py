"""What every stage's command module shares: the console, config merging, and turning EdgepptError into one line."""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, Optional

import typer
from pydantic import BaseModel
from pydantic_core import PydanticUndefined
from rich.console import Console
from rich.markup import escape

from edgeppt.config import load_yaml, validate, without_trust
from edgeppt.errors import EdgepptError

console = Console(stderr=True)


def fail(msg: str, code: int = 2) -> NoReturn:
    # soft_wrap: one line however wide the terminal, so a path in the message stays copyable
    console.print(f"[bold red]error:[/] {escape(msg)}", soft_wrap=True, highlight=False)
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
            if node.get(p) is None:
                node[p] = {}
            if not isinstance(node[p], dict):
                raise EdgepptError(f"--set {key}: {p} is {node[p]!r}, not a group of fields")
            node = node[p]
        try:
            node[leaf] = json.loads(value)
        except json.JSONDecodeError:
            node[leaf] = value
    return validate(model, raw, "settings")


def config_option(model: type[BaseModel], name: str, help: str | None = None, **kw: Any) -> Any:
    """An option for a config field. It stays None unless given, so a --config YAML still sets the field, and
    --help shows the field's own default (not None)."""
    field = model.model_fields[name]
    shown = field.default not in (None, PydanticUndefined)
    return typer.Option(None, help=help, show_default=str(field.default) if shown else False, **kw)


TRUSTED_KEY_HELP = ("A public key (.pub); the source bundle must be signed by one of the keys given (repeat for "
                    "several). Keys in ~/.config/edgeppt/trusted-keys name signers without being required.")
TRUST_CODE_HELP = "Load a .pt2 source bundle without a trusted signature (its loading can run code)."


def trust_overrides(trusted_key: list[Path], trust_code: bool) -> dict[str, Any]:
    """Config fields for the --trusted-key / --trust-code options (a config file never sets them)."""
    return {"trusted_keys": trusted_key or None, "trust_code": trust_code or None}


def resume_hint(command: str, out: Path, trusted_key: list[Path], trust_code: bool) -> str:
    """What Ctrl-C prints for a stage that checkpoints: the exact line that goes on (with the trust given now, which
    a resume never takes from the run folder)."""
    words = ["edgeppt", command, "--resume", str(out)]
    for key in trusted_key:
        words += ["--trusted-key", str(key)]
    return f"the last checkpoint is saved; continue with: {shlex.join(words + ['--trust-code'] * trust_code)}"
NO_WORK_HINT = "nothing was left half-written; run the same command again"


def guarded(fn, *args, interrupted: str = NO_WORK_HINT, **kwargs):
    """Run a stage: its EdgepptError becomes one line (exit 2), Ctrl-C a hint how to go on (exit 130)."""
    try:
        return fn(*args, **kwargs)
    except EdgepptError as e:
        fail(str(e))
    except KeyboardInterrupt:
        console.print(f"[yellow]interrupted:[/] {interrupted}", soft_wrap=True)
        raise typer.Exit(130) from None


def run_dir_and_settings(load_run_config: Callable[[Path], Any], out: Optional[Path], resume: Optional[Path],
                         overrides: dict[str, Any], needs_target: bool) -> tuple[Path, dict[str, Any]]:
    """--out starts a run; --resume continues one with its saved settings, updated by the options given now."""
    if resume:
        base = without_trust(guarded(load_run_config, resume).model_dump(mode="json", exclude_unset=True))
        return resume, {**base, **{k: v for k, v in overrides.items() if v is not None}}
    if out is None:
        fail("give --out (a new run directory) or --resume (an existing one)")
    if needs_target and overrides.get("target") is None:
        fail("give --target (the labelled target images)")
    return out, overrides
