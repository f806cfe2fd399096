"""`edgeppt source train | inspect`: make a source bundle, look at what it draws."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from edgeppt.cli_support import config_option, console, guarded, merged
from edgeppt.config import SourceTrainConfig

app = typer.Typer()  # this stage's commands; cli/ assembles the stages

source_app = typer.Typer(help="Source bundles: train one from labelled images, inspect what it draws.",
                         no_args_is_help=True)
app.add_typer(source_app, name="source")


@source_app.command("train")
def source_train(
    data: Optional[str] = typer.Option(None, help="Labelled source images: built-in name[:classes], class folders "
                                       "or .npz."),
    out: Optional[Path] = typer.Option(None, help="Bundle directory to write."),
    config: Optional[Path] = typer.Option(None, help="YAML with SourceTrainConfig fields."),
    gan_steps: Optional[int] = config_option(SourceTrainConfig, "gan_steps", help="Generator updates."),
    seed: Optional[int] = config_option(SourceTrainConfig, "seed", help="Seed of the split, the networks' "
                                        "initialisation and the batches."),
    set_: list[str] = typer.Option([], "--set", help="Any config field, e.g. --set lr_g=1e-4."),
) -> None:
    """Train a class-conditional GAN and a classifier, and write them as a compiled source bundle."""
    from edgeppt.source.train import train_source

    overrides = {"data": data, "out": out, "gan_steps": gan_steps, "seed": seed}
    cfg = guarded(merged, SourceTrainConfig, config, overrides, set_)
    path = guarded(train_source, cfg, log=lambda line: console.print(f"[yellow]{escape(line)}[/]", soft_wrap=True,
                                                                      highlight=False))
    console.print(f"[green]bundle written:[/] {path}")


def command_line(cfg: SourceTrainConfig) -> str:
    """The `edgeppt source train` line that makes cfg, built from this command's own options so it always runs:
    a field with an option of its own uses it, any other non-default field goes through --set."""
    train = typer.main.get_group(source_app).commands["train"]
    flags = {p.name: p.opts[0] for p in train.params if p.param_type_name == "option"}
    parts = ["edgeppt", "source", "train"]
    for name, field in SourceTrainConfig.model_fields.items():
        value = getattr(cfg, name)
        if value == field.default and name not in ("data", "out"):  # data and out have no default
            continue
        text = json.dumps(value) if isinstance(value, bool) or value is None else str(value)
        parts += [flags[name], text] if name in flags else ["--set", f"{name}={text}"]
    return shlex.join(parts)


@source_app.command("inspect")
def source_inspect(
    bundle: Path = typer.Argument(..., help="Source bundle directory."),
    out: Path = typer.Option(Path("grid.png"), help="PNG to write: a row of samples per source class."),
    per_class: int = typer.Option(8, min=1, max=64),
    seed: int = typer.Option(0),
) -> None:
    """Verify a bundle and draw what its generator makes for each class."""
    from edgeppt.bundle import load_bundle
    from edgeppt.source.inspect import sample_grid

    b = guarded(load_bundle, bundle)
    guarded(sample_grid, bundle, out, per_class=per_class, seed=seed)
    m = b.manifest
    table = Table(title=f"source bundle {bundle}")
    for k in ("classes", "latent_dim", "image_shape"):
        table.add_row(k, str(m[k]))
    for f, h in m["files"].items():
        table.add_row(f, f"sha256 {h[:16]}… ok")
    Console().print(table)
    console.print(f"[green]samples:[/] {out}")
