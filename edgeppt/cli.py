"""The `edgeppt` command. A front end: it parses, validates at the edge and calls the stages."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from .config import METHODS, SourceTrainConfig, TransferConfig, load_yaml, validate
from .errors import EdgepptError

app = typer.Typer(help="Transfer a private source generator to a few-shot target task and ship it to an edge device.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
source_app = typer.Typer(help="Source bundles: train one from labelled images, inspect what it draws.",
                         no_args_is_help=True)
app.add_typer(source_app, name="source")
console = Console(stderr=True)


def _fail(msg: str, code: int = 2) -> None:
    console.print(f"[bold red]error:[/] {msg}")
    raise typer.Exit(code)


def _merged(model, config: Optional[Path], overrides: dict[str, Any], sets: list[str]):
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


def _run(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except EdgepptError as e:
        _fail(str(e))
    except KeyboardInterrupt:
        console.print("[yellow]interrupted:[/] the last checkpoint is saved; run the same command with --resume to continue")
        raise typer.Exit(130)


@source_app.command("train")
def source_train(
    data: Optional[str] = typer.Option(None, help="Labelled source images: built-in name[:classes], class folders or .npz."),
    out: Optional[Path] = typer.Option(None, help="Bundle directory to write."),
    config: Optional[Path] = typer.Option(None, help="YAML with SourceTrainConfig fields."),
    gan_steps: Optional[int] = typer.Option(None, help="Generator updates."),
    seed: Optional[int] = typer.Option(None),
    set_: list[str] = typer.Option([], "--set", help="Any config field, e.g. --set lr_g=1e-4."),
) -> None:
    """Train a class-conditional GAN and a classifier, and write them as a compiled source bundle."""
    from source.train import train_source

    cfg = _run(_merged, SourceTrainConfig, config, {"data": data, "out": out, "gan_steps": gan_steps, "seed": seed}, set_)
    path = _run(train_source, cfg)
    console.print(f"[green]bundle written:[/] {path}")


@source_app.command("inspect")
def source_inspect(
    bundle: Path = typer.Argument(..., help="Source bundle directory."),
    out: Path = typer.Option(Path("grid.png"), help="PNG to write: a row of samples per source class."),
    per_class: int = typer.Option(8, min=1, max=64),
    seed: int = typer.Option(0),
) -> None:
    """Verify a bundle and draw what its generator makes for each class."""
    from edgeppt.bundle import load_bundle
    from source.inspect import sample_grid

    b = _run(load_bundle, bundle)
    _run(sample_grid, bundle, out, per_class=per_class, seed=seed)
    m = b.manifest
    table = Table(title=f"source bundle {bundle}")
    for k in ("classes", "latent_dim", "image_shape"):
        table.add_row(k, str(m[k]))
    for f, h in m["files"].items():
        table.add_row(f, f"sha256 {h[:16]}… ok")
    Console().print(table)
    console.print(f"[green]samples:[/] {out}")


@app.command()
def transfer(
    source: Optional[Path] = typer.Option(None, help="Source bundle directory."),
    target: Optional[str] = typer.Option(None, help="Target images: built-in name[:classes], class folders or .npz."),
    test: Optional[str] = typer.Option(None, help="Test images (default: a fixed 20% split of --target)."),
    labels_per_class: Optional[int] = typer.Option(None, help="Labelled target images per class."),
    arch: Optional[str] = typer.Option(None, help="Registered architecture name or frozen-architecture JSON."),
    method: Optional[str] = typer.Option(None, help=f"One of {', '.join(METHODS)}."),
    ssl: Optional[str] = typer.Option(None, help="P-SSL algorithm: fixmatch, uda, pseudolabel, meanteacher."),
    seed: Optional[int] = typer.Option(None),
    out: Optional[Path] = typer.Option(None, help="Run directory."),
    resume: Optional[Path] = typer.Option(None, help="Continue the run in this directory (its saved settings are used)."),
    config: Optional[Path] = typer.Option(None, help="YAML with TransferConfig fields."),
    pp_cache: Optional[Path] = typer.Option(None, help="Folder to reuse pseudo pre-training weights across runs."),
    set_: list[str] = typer.Option([], "--set", help="Any config field, e.g. --set pssl.z_search_steps=10."),
    quiet: bool = typer.Option(False, help="No progress bars."),
) -> None:
    """Train a target architecture with PP and/or P-SSL; writes model.pt, metrics.jsonl and report.json."""
    from transfer.run import load_run_config, run_transfer

    overrides = {"source": source, "target": target, "test": test, "labels_per_class": labels_per_class,
                 "arch": arch, "method": method, "seed": seed}
    if ssl:
        set_ = [f"pssl.algorithm={ssl}", *set_]
    if resume:
        out = resume
        base = _run(load_run_config, resume).model_dump(mode="json", exclude_unset=True)
        base.update({k: v for k, v in overrides.items() if v is not None})
        overrides = base
    if out is None:
        _fail("give --out (a new run directory) or --resume (an existing one)")
    if not resume and target is None and config is None:
        _fail("give --target (the labelled target images)")
    cfg = _run(_merged, TransferConfig, config, overrides, set_)
    report = _run(run_transfer, cfg, out, resume=resume is not None, progress=not quiet, pp_cache=pp_cache)
    if report:
        _print_report(report, out)


def _print_report(report: dict, out: Path) -> None:
    table = Table(title=f"{report['settings']['method']} on {report['settings']['target']} "
                        f"({report['settings']['labels_per_class']} labels/class)")
    table.add_column("class")
    table.add_column("test accuracy", justify="right")
    for name, acc in report["per_class_accuracy"].items():
        table.add_row(name, f"{100 * acc:.1f}%")
    table.add_row("[bold]all[/]", f"[bold]{100 * report['test_accuracy']:.2f}%[/]")
    Console().print(table)
    console.print(f"time {report['timings_s']['total']:.1f}s; report: {out / 'report.json'}")


@app.command()
def models() -> None:
    """List the registered target architectures."""
    import torch

    from .models import arch_spec, create_model, list_models

    table = Table(title="architectures (--arch NAME, or a frozen-architecture JSON)")
    for col in ("name", "family", "parameters (10 classes, 1 channel)"):
        table.add_column(col)
    for name in list_models():
        m = create_model(name, 10, 1)
        table.add_row(name, arch_spec(name)["family"], f"{sum(p.numel() for p in m.parameters()):,}")
    del torch
    Console().print(table)


def main() -> None:  # pragma: no cover
    sys.exit(app())
