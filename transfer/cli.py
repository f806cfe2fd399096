"""`edgeppt transfer` and `edgeppt models`: train a target architecture from a source bundle."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from edgeppt.cli_support import (
    TRUST_CODE_HELP,
    TRUSTED_KEY_HELP,
    config_option,
    console,
    guarded,
    merged,
    resume_hint,
    run_dir_and_settings,
    trust_overrides,
)
from edgeppt.config import METHODS, SSL_ALGORITHMS, PSSLConfig, TransferConfig

app = typer.Typer()  # this stage's commands; cli/ assembles the stages


@app.command()
def transfer(
    source: Optional[Path] = typer.Option(None, help="Source bundle directory."),
    target: Optional[str] = typer.Option(None, help="Target images: built-in name[:classes], class folders or .npz."),
    test: Optional[str] = typer.Option(None, help="Test images (default: a fixed 20% split of --target)."),
    unlabeled: Optional[str] = typer.Option(None, help="Unlabelled target images for SSL: a folder, .npz or "
                                            "built-in spec, or 'rest' (the target images left unlabelled)."),
    labels_per_class: Optional[int] = config_option(TransferConfig, "labels_per_class",
                                                    help="Labelled target images per class."),
    arch: Optional[str] = config_option(TransferConfig, "arch",
                                        help="Registered architecture name or frozen-architecture JSON."),
    method: Optional[str] = config_option(TransferConfig, "method", help=f"One of {', '.join(METHODS)} (auto: "
                                          "chosen from how well the source covers the target)."),
    ssl: Optional[str] = config_option(PSSLConfig, "algorithm", help=f"SSL algorithm: {', '.join(SSL_ALGORITHMS)}."),
    seed: Optional[int] = config_option(TransferConfig, "seed", help="Seed of the labelled draw, initialisation "
                                        "and batches."),
    out: Optional[Path] = typer.Option(None, help="Run directory."),
    resume: Optional[Path] = typer.Option(None, help="Continue the run in this directory (its saved settings are "
                                          "used)."),
    config: Optional[Path] = typer.Option(None, help="YAML with TransferConfig fields."),
    pp_cache: Optional[Path] = typer.Option(None, help="Folder to reuse pseudo pre-training weights, pseudo-sample "
                                            "pools and labels-only phases across runs."),
    set_: list[str] = typer.Option([], "--set", help="Any config field, e.g. --set pssl.z_candidates=4."),
    trusted_key: list[Path] = typer.Option([], help=TRUSTED_KEY_HELP),
    trust_code: bool = typer.Option(False, help=TRUST_CODE_HELP),
    quiet: bool = typer.Option(False, help="No progress bars."),
) -> None:
    """Train a target architecture with PP and/or P-SSL; writes model.pt, metrics.jsonl and report.json."""
    from edgeppt.transfer.run import load_run_config, run_transfer

    overrides = {"source": source, "target": target, "test": test, "unlabeled": unlabeled,
                 "labels_per_class": labels_per_class,
                 "arch": arch, "method": method, "seed": seed, **trust_overrides(trusted_key, trust_code)}
    if ssl:
        set_ = [f"pssl.algorithm={ssl}", *set_]
    out, overrides = run_dir_and_settings(load_run_config, out, resume, overrides, needs_target=config is None)
    cfg = guarded(merged, TransferConfig, config, overrides, set_)
    hint = resume_hint("transfer", out, trusted_key, trust_code)
    report = guarded(run_transfer, cfg, out, interrupted=hint, resume=resume is not None,
                     progress=not quiet, pp_cache=pp_cache,
                     log=lambda line: console.print(f"[cyan]{line}[/]", soft_wrap=True))
    if report:
        _print_report(report, out)


def _print_report(report: dict, out: Path) -> None:
    # The target spec can be a long path: on its own line (never wrapped), not in the table's narrow title.
    k = report["settings"]["labels_per_class"]
    Console().print(f"[bold]{report['method']}[/] on {report['settings']['target']} "
                    f"({k} label{'' if k == 1 else 's'} per class)", soft_wrap=True, highlight=False)
    table = Table()
    table.add_column("class", overflow="fold")
    table.add_column("test accuracy", justify="right", overflow="fold")
    for name, acc in report["per_class_accuracy"].items():
        table.add_row(name, f"{100 * acc:.1f}%")
    table.add_row("[bold]all[/]", f"[bold]{100 * report['test_accuracy']:.2f}%[/]")
    Console().print(table)
    skipped = report["data"]["skipped_files"]
    if skipped:
        from edgeppt.data import skipped_summary

        console.print(f"[yellow]{escape(skipped_summary(skipped))}[/] (all listed in report.json)", soft_wrap=True,
                      highlight=False)
    console.print(f"time {report['timings_s']['total']:.1f}s; report: {out / 'report.json'}")


@app.command()
def models() -> None:
    """List the registered target architectures."""
    import torch

    from edgeppt.models import arch_spec, create_model, list_models

    table = Table(title="architectures (--arch NAME, or a frozen-architecture JSON)")
    for col in ("name", "family", "parameters (10 classes, 1 channel)"):
        table.add_column(col, overflow="fold")
    for name in list_models():
        m = create_model(name, 10, 1)
        table.add_row(name, arch_spec(name)["family"], f"{sum(p.numel() for p in m.parameters()):,}")
    del torch
    Console().print(table)
