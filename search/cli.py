"""`edgeppt devices ...` and `edgeppt search`: device profiles and architecture search."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
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
from edgeppt.config import SearchConfig

app = typer.Typer()  # this stage's commands; cli/ assembles the stages

devices_app = typer.Typer(help="Device profiles: budgets, runtimes, latency predictors.", no_args_is_help=True)
app.add_typer(devices_app, name="devices")


@devices_app.command("list")
def devices_list() -> None:
    """The built-in and user device profiles ($EDGEPPT_DEVICES) with their budgets."""
    from edgeppt.devices import list_profiles

    table = Table(title="device profiles (--device NAME, or a profile .yaml)",
                  caption="predicted: from a predictor file; `edgeppt devices calibrate` fits one")
    for col in ("name", "runtime", "latency", "threads", "budgets"):
        table.add_column(col, overflow="fold")
    for p in guarded(list_profiles):
        b = p.budgets
        # Short numbers (2M params, not 2,000,000) so the table fits an 80-column terminal.
        budgets = [f"{b.latency_ms:g} ms" if b.latency_ms else "", f"{b.params / 1e6:g}M params" if b.params else "",
                   f"{b.macs / 1e6:g}M MACs" if b.macs else "",
                   f"{b.peak_activation_kib:g} KiB peak" if b.peak_activation_kib else ""]
        table.add_row(p.name, p.runtime, p.latency, str(p.threads or "all"), ", ".join(x for x in budgets if x) or "-")
    Console().print(table)


@devices_app.command("calibrate")
def devices_calibrate(
    device: str = typer.Argument(..., help="Profile to calibrate (name or .yaml): its runtime, threads, input size."),
    host: str = typer.Option(..., help="user@host of the device, reachable with `ssh` (keys, no password prompt)."),
    out: Path = typer.Option(..., help="Writes OUT.yaml (a profile that predicts latency) and OUT.predictor.json."),
    port: Optional[int] = typer.Option(None, help="SSH port."),
    identity: Optional[Path] = typer.Option(None, help="SSH private key."),
    ssh_option: list[str] = typer.Option([], "--ssh-option", "-o",
                                         help="Extra `ssh -o` options, e.g. StrictHostKeyChecking=accept-new."),
    python: str = typer.Option("python3", help="Python on the device (with numpy and onnxruntime)."),
    probes: int = typer.Option(24, help="Probe models to time (a quarter is held out to report the error)."),
    repeats: int = typer.Option(30, help="Timed runs per probe (the median counts)."),
) -> None:
    """Time probe models on the real device over SSH and fit its latency predictor."""
    from edgeppt.search.calibrate import calibrate

    rep = guarded(calibrate, device, host, out, port=port, identity=identity, ssh_options=ssh_option, python=python,
                  probes=probes, repeats=repeats)
    h = rep["heldout"]
    console.print(f"held-out error on {h['probes']} probes: mean {h['mape_pct']:.1f}%, worst {h['max_ape_pct']:.1f}%, "
                  f"{100 * h['within_10pct']:.0f}% of them within +-10%")
    console.print(f"profile: {rep['profile']}  predictor: {rep['predictor']}  (use --device {rep['profile']})")


@app.command()
def search(
    device: Optional[str] = config_option(SearchConfig, "device", help="Device profile name or .yaml."),
    latency_ms: Optional[float] = typer.Option(None, help="Latency budget (ms, batch 1); default: the profile's."),
    params: Optional[int] = typer.Option(None, help="Parameter budget."),
    macs: Optional[int] = typer.Option(None, help="MAC budget."),
    peak_kib: Optional[float] = typer.Option(None, help="Peak activation memory budget (KiB)."),
    source: Optional[Path] = typer.Option(None, help="Source bundle (its samples pre-train each candidate briefly)."),
    target: Optional[str] = typer.Option(None, help="Target images: built-in name[:classes], class folders or .npz."),
    test: Optional[str] = typer.Option(None, help="Test images (default: a fixed 20% split of --target), as "
                                       "transfer takes them: never used to rank, only kept out of what does."),
    labels_per_class: Optional[int] = config_option(SearchConfig, "labels_per_class",
                                                    help="Labelled target images per class for training."),
    val_per_class: Optional[int] = config_option(SearchConfig, "val_per_class",
                                                 help="Extra labelled images per class that rank candidates "
                                                 "(0: cross-validation over --labels-per-class alone; it ranked "
                                                 "worse, see docs/search.md)."),
    trials: Optional[int] = config_option(SearchConfig, "trials",
                                          help="Candidates to train (over-budget ones are rejected first)."),
    strategy: Optional[str] = config_option(SearchConfig, "strategy", help="evolution, random or tpe."),
    engine: Optional[str] = config_option(SearchConfig, "engine", help="sequential (in this process), local "
                                          "(NNI's training service: trial processes, --set concurrency=N) or "
                                          "remote (SSH workers: --set workers=..., docs/search.md)."),
    seed: Optional[int] = config_option(SearchConfig, "seed", help="Seed of the strategy, splits and training."),
    out: Optional[Path] = typer.Option(None, help="Run directory."),
    resume: Optional[Path] = typer.Option(None, help="Continue the search in this directory "
                                          "(finished trials are kept)."),
    config: Optional[Path] = typer.Option(None, help="YAML with SearchConfig fields."),
    set_: list[str] = typer.Option([], "--set", help="Any config field, e.g. --set proxy.finetune_steps=50."),
    trusted_key: list[Path] = typer.Option([], help=TRUSTED_KEY_HELP),
    trust_code: bool = typer.Option(False, help=TRUST_CODE_HELP),
    quiet: bool = typer.Option(False, help="No per-trial lines."),
) -> None:
    """Search the architecture for a device's budgets; writes best.json, trials.csv/json and pareto.png."""
    from edgeppt.search.run import load_run_config, run_search

    overrides = {"device": device, "latency_ms": latency_ms, "params": params, "macs": macs,
                 "peak_activation_kib": peak_kib, "source": source, "target": target, "test": test,
                 "labels_per_class": labels_per_class, "val_per_class": val_per_class, "trials": trials,
                 "strategy": strategy, "engine": engine, "seed": seed, **trust_overrides(trusted_key, trust_code)}
    out, overrides = run_dir_and_settings(load_run_config, out, resume, overrides, needs_target=config is None)
    cfg = guarded(merged, SearchConfig, config, overrides, set_)
    hint = resume_hint("search", out, trusted_key, trust_code)
    s = guarded(run_search, cfg, out, interrupted=hint, resume=resume is not None,
                progress=not quiet)
    b = s["best"]
    table = Table(title=f"best of {s['trained']} candidates on {s['device']} ({s['rejected']} rejected over budget)")
    for col in ("proxy accuracy", "latency ms", "MACs", "params", "peak activation KiB"):
        table.add_column(col, justify="right", overflow="fold")
    seeds = len(b.get("proxy_seed_accuracies") or [0])
    table.add_row(f"{100 * b['proxy_accuracy']:.1f}%" + (f" ({seeds} seeds)" if seeds > 1 else ""),
                  f"{b['latency_ms']:.3f} ({b['latency_kind']})", f"{b['macs']:,}",
                  f"{b['params']:,}", f"{b['peak_activation_kib']:.1f}")
    Console().print(table)
    console.print(f"chosen: {s['why']}", soft_wrap=True)
    if (ref := s.get("reference")) is not None:
        console.print(f"{ref['name']} (trained as a candidate): proxy accuracy {100 * ref['proxy_accuracy']:.1f}%, "
                      f"{ref['latency_ms']:.3f} ms, {ref['macs']:,} MACs"
                      + ("; it is the pick" if ref["chosen"] else ""), soft_wrap=True)
    ranked = (f"{cfg.folds}-fold cross-validation over the {cfg.labels_per_class} training labels per class" if not
              cfg.val_per_class else f"{cfg.val_per_class} extra validation labels per class")
    console.print(f"labels used: {cfg.labels_per_class + cfg.val_per_class} per class; candidates ranked by {ranked}",
                  soft_wrap=True)
    console.print(f"best architecture: {out / 'best.json'}  (edgeppt transfer --arch {out / 'best.json'} ...)")
