"""`edgeppt run | demo`: the whole pipeline from a config, and the built-in example."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from edgeppt.cli_support import TRUST_CODE_HELP, TRUSTED_KEY_HELP, console, guarded
from edgeppt.errors import EdgepptError

from .config import STAGE_NAMES
from .example import budget_help
from .state import CONFIG_FILE, STATE_FILE, export_bundle

app = typer.Typer()  # this stage's commands; cli/ assembles the stages


def _sigterm_as_interrupt() -> None:
    """A cancelled background job gets SIGTERM: stop like Ctrl-C (stages checkpoint, state says cancelled)."""
    def handler(*_):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, handler)


def _run(cfg, out: Path, until: Optional[str], force: list[str], quiet: bool, origin: Optional[Path] = None) -> None:
    from edgeppt.pipeline.runner import run_pipeline

    _sigterm_as_interrupt()
    state = guarded(run_pipeline, cfg, out, until=until, force=tuple(force), progress=not quiet, origin=origin,
                    log=lambda s: console.print(f"[cyan]pipeline[/] {s}", soft_wrap=True),
                    interrupted="the stage's last checkpoint is saved; run the same command again to resume "
                                "(finished stages are skipped)")
    Console().print(run_table(state, f"run {out}"))
    console.print(f"report: {out / 'report' / 'index.md'}")
    bundle = export_bundle(out)
    if state["stages"].get("export", {}).get("status") == "done":  # what to do with it next
        console.print(f"bundle: {bundle} (edgeppt bench {bundle}; edgeppt deploy {bundle} --host user@device)",
                      soft_wrap=True)


def run_table(state: dict, title: str) -> Table:
    """The stages of a run and what each produced: one result item per line, so a narrow terminal wraps between
    items and never cuts one."""
    from edgeppt.pipeline.report import summary_items

    table = Table(title=title)
    for col in ("stage", "status", "seconds", "result"):
        table.add_column(col, overflow="fold")
    for name, s in state["stages"].items():
        table.add_row(name, s["status"], f"{s.get('seconds', 0):.1f}", "\n".join(summary_items(s.get("summary"))))
    return table


@app.command("run")
def run_cmd(
    config: Path = typer.Argument(..., help="pipeline.yaml: source, target, device and each stage's budget."),
    out: Optional[Path] = typer.Option(None, help="Run directory (default: the config's own folder when it is a "
                                       "run's pipeline.yaml, else runs/<config name>)."),
    until: Optional[str] = typer.Option(None, help=f"Stop after this stage: {', '.join(STAGE_NAMES)}."),
    force: list[str] = typer.Option([], help="Re-run this stage even if its inputs did not change (repeatable)."),
    quiet: bool = typer.Option(False, help="No progress bars."),
    trusted_key: list[Path] = typer.Option([], help=TRUSTED_KEY_HELP),
    trust_code: bool = typer.Option(False, help=TRUST_CODE_HELP),
) -> None:
    """Run search -> transfer -> export into one directory; unchanged stages are skipped, interrupted ones resume."""
    from edgeppt.pipeline.config import load_config

    cfg = guarded(load_config, config)  # trust comes from these options only, never from the file
    cfg = cfg.model_copy(update={"trusted_keys": trusted_key, "trust_code": trust_code})
    _run(cfg, out or guarded(default_run_dir, config), until, force, quiet, origin=config)


def default_run_dir(config: Path) -> Path:
    """A run's own pipeline.yaml (what demo, the wizard and every run write) runs in its folder again; another
    config in runs/<its name>, unless that run was started from another file of the same name (projA/p.yaml and
    projB/p.yaml): its outputs are never replaced without an --out that names the folder."""
    if config.name == CONFIG_FILE and (config.parent / STATE_FILE).is_file():
        return config.parent
    run = Path("runs") / config.stem
    try:
        origin = json.loads((run / STATE_FILE).read_text()).get("origin")
    except (OSError, ValueError, AttributeError):
        origin = None
    if isinstance(origin, str) and Path(origin) != config.resolve():
        raise EdgepptError(f"{run} holds the run of {origin}; give --out {run} to run {config} there (its stages "
                           "would replace that run's outputs), or another --out")
    return run


@app.command("demo")
def demo_cmd(
    out: Path = typer.Option(Path("runs/demo"), help="Run directory."),
    budget: str = typer.Option("demo", help=f"{budget_help()} (on 2 CPU cores)."),
    quiet: bool = typer.Option(False, help="No progress bars."),
) -> None:
    """The built-in example end to end: animals bundle -> elephant, giraffe, horse, sheep, zebra on an x86 CPU."""
    from edgeppt.pipeline.example import example_config

    cfg = guarded(example_config, budget)
    console.print(f"config: {out / CONFIG_FILE}")  # written by the run, under its lock: never a running run's
    _run(cfg, out, None, [], quiet)
