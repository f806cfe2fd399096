"""`edgeppt export | bench | deploy`: artifacts, a bundle, numbers from the device."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from edgeppt.cli_support import TRUST_CODE_HELP, TRUSTED_KEY_HELP, console, guarded
from edgeppt.devices import DEFAULT_DEVICE

from .formats import BENCH_RUNS, DEVICE_RUNS, FORMATS, THROUGHPUT_BATCH, ExportOptions

app = typer.Typer()  # this stage's commands; cli/ assembles the stages


def _bench_table(title: str, rows: list[dict], accuracy_key: str) -> Table:
    table = Table(title=title)
    floor = any("batch1_floor_pct" in r for r in rows)
    on_test = any(accuracy_key in r for r in rows)  # else the shipped samples': say which
    cols = ("format", "provider", "batch-1 median ms", "batch-1 p90 ms", "img/s (largest batch)",
            "test accuracy" if on_test else "sample accuracy") + (("floor % (b1 / largest)",) if floor else ())
    for col in cols:
        table.add_column(col, justify="left" if col in ("format", "provider") else "right", overflow="fold")
    for r in rows:
        if "error" in r:
            table.add_row(r["format"], "-", "-", "-", "-", f"[yellow]{r['error'][:60]}[/]")
            continue
        big = next((v for k, v in r.items() if k.startswith("batch") and k != "batch1" and isinstance(v, dict)),
                   r["batch1"])
        acc = r.get(accuracy_key, r.get("sample_accuracy"))
        b1 = r["batch1"]
        cells = [r["format"], r.get("provider", "-"), f"{b1['median_ms']:.3f}", f"{b1['p90_ms']:.3f}",
                 f"{big['throughput_ips']:.0f} (b{big['batch']})", "-" if acc is None else f"{100 * acc:.2f}%"]
        if floor:
            pct = [r.get(f"batch{b}_floor_pct") for b in (1, big["batch"])]
            cells.append(" / ".join("-" if p is None else f"{p:.0f}%" for p in pct))
        table.add_row(*cells)
    return table


_OPTION = ExportOptions.model_fields  # the export options' defaults and descriptions live there


def _option(name: str, **kw: Any) -> Any:
    field, text = _OPTION[name], _OPTION[name].description or ""
    return typer.Option(field.default, help=f"{text[:1].upper()}{text[1:]}.", **kw)


@app.command("export")
def export_cmd(
    run: Path = typer.Argument(..., help="Run directory with model.pt and report.json."),
    out: Optional[Path] = typer.Option(None, help="Bundle directory to write (default dist/<run name>)."),
    device: str = typer.Option(DEFAULT_DEVICE, help="Device profile: a built-in name (x86-cpu, arm-cpu, jetson) or a "
                               "profile .yaml; its export section picks default formats, int8 activations "
                               "and threads."),
    formats: Optional[str] = typer.Option(None, help="Comma-separated (default: the device's): " + "; ".join(
        f"{f.name}: {f.description} ({f.runs_on})" for f in FORMATS.values()) + "."),
    int8_calibration: str = _option("int8_calibration"),
    source: Optional[Path] = typer.Option(None, help="Source bundle for --int8-calibration pseudo "
                                          "(default: the run's)."),
    calibration_data: Optional[str] = typer.Option(None, help="Images to calibrate with (default: the run's target "
                                                   "images minus the test split)."),
    calibration_size: int = _option("calibration_size", min=1),
    max_int8_drop: float = _option("max_int8_drop"),
    dynamic_batch: bool = _option("dynamic_batch"),
    threads: Optional[int] = typer.Option(None, help="onnxruntime threads (default: the device's)."),
    bench_runs: int = _option("bench_runs", min=0),
    sign: Optional[Path] = _option("sign"),
    trusted_key: list[Path] = typer.Option([], help=TRUSTED_KEY_HELP + " (--int8-calibration pseudo's source)"),
    trust_code: bool = typer.Option(False, help=TRUST_CODE_HELP),
) -> None:
    """Export a trained run to ONNX / INT8 / FP16 / TensorRT and write a verified, deployable bundle."""
    from edgeppt.config import SourceTrust
    from edgeppt.export import export_run

    m = guarded(export_run, run, out, device=device, formats=formats, int8_calibration=int8_calibration, source=source,
             calibration_data=calibration_data, calibration_size=calibration_size, max_int8_drop=max_int8_drop,
             dynamic_batch=dynamic_batch, threads=threads, bench_runs=bench_runs, sign=sign,
             trust=SourceTrust(trusted_keys=trusted_key, trust_code=trust_code),
             log=lambda s: console.print(f"[cyan]export[/] {s}"))
    rows = [{**r, "provider": "CPU (export host)"} for r in m["results"] if "batch1" in r]
    name = out or "dist/" + run.resolve().name
    Console().print(_bench_table(f"bundle {name} (test split: {m['test_images']} images)",
                                 rows, "accuracy"))
    int8 = m["artifacts"].get("int8", {})
    guard = int8.get("accuracy_guard")
    if guard and not guard["met"]:
        console.print(f"[yellow]warning:[/] INT8 {guard['note']}")
    if int8.get("evaluator") == "reference" and abs(int8["host_accuracy"] - int8["accuracy"]) > 0.01:
        console.print(f"[yellow]note:[/] INT8 accuracy {100 * int8['accuracy']:.2f}% is the exact Q/DQ result (what "
                      f"{m['device']}'s int8 engine computes); onnxruntime's int8 kernels on this host score "
                      f"{100 * int8['host_accuracy']:.2f}%")


@app.command("bench")
def bench_cmd(
    bundle: Path = typer.Argument(..., help="Bundle directory written by edgeppt export."),
    threads: Optional[int] = typer.Option(None, help="onnxruntime threads (default: the bundle's device setting)."),
    runs: int = typer.Option(BENCH_RUNS, min=1, help="Timed runs per model (the median counts)."),
    batch: int = typer.Option(THROUGHPUT_BATCH, min=1, help="Throughput batch (dynamic-batch models only)."),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Latency and accuracy of every artifact of a bundle on this machine."""
    from edgeppt.export import bench_bundle

    report = guarded(bench_bundle, bundle, threads=threads, runs=runs, batch=batch)
    if json_out:
        print(json.dumps(report, indent=2))
        return
    Console().print(_bench_table(f"{bundle} on {report['host']} ({report['threads'] or 'default'} threads)",
                                 report["results"], "test_accuracy"))
    if report.get("accuracy_note"):
        console.print(f"note: {report['accuracy_note']}", soft_wrap=True, highlight=False)
    if report.get("sizes"):  # the bundle's models, and a supermask's over-the-air update beside them
        console.print("size: " + ", ".join(f"{k} {v:,} bytes" for k, v in report["sizes"].items()), highlight=False)
    if report.get("default_format"):
        console.print(f"default artifact: [bold]{report['default_format']}[/]: {report.get('default_reason') or ''}",
                      soft_wrap=True, highlight=False)


@app.command("deploy")
def deploy_cmd(
    bundle: Path = typer.Argument(..., help="Bundle directory written by edgeppt export."),
    host: str = typer.Option(..., help="user@device (anything ssh accepts)."),
    port: Optional[int] = typer.Option(None, help="SSH port."),
    identity: Optional[Path] = typer.Option(None, help="SSH private key."),
    ssh_option: list[str] = typer.Option([], "--ssh-option", "-o",
                                         help="Extra ssh -o option, e.g. -o StrictHostKeyChecking=accept-new."),
    remote_dir: Optional[str] = typer.Option(None, help="Folder on the device "
                                             "(default ~/edgeppt-bundles/<bundle name>)."),
    python: str = typer.Option("python3", help="Python on the device (needs numpy, onnxruntime, pillow)."),
    threads: Optional[int] = typer.Option(None, help="onnxruntime threads on the device (default: the bundle's "
                                          "device setting)."),
    runs: int = typer.Option(DEVICE_RUNS, min=1, help="Timed runs per model on the device (the median counts)."),
    trusted_key: list[Path] = typer.Option([], help="Public key that must have signed the bundle (edgeppt export "
                                           "--sign); checked here and on the device before any model loads."),
) -> None:
    """Copy a bundle over SSH, verify its hashes (and signature) on the device, benchmark there, print the numbers."""
    from edgeppt.export import deploy_bundle

    report = guarded(deploy_bundle, bundle, host, remote_dir=remote_dir, port=port, identity=identity,
                     ssh_options=ssh_option, python=python, threads=threads, runs=runs, trusted_keys=trusted_key,
                     interrupted="the device runs its earlier bundle or the whole new one, never a mix; run the "
                                 "same command again")
    console.print(f"[green]deployed:[/] {report['remote']} ({report['verified_files']} files verified on the device)")
    Console().print(_bench_table(f"on {report['host']} ({report['machine']}, onnxruntime {report['onnxruntime']})",
                                 report["results"], "test_accuracy"))
    console.print(report["on_device"]["note"], soft_wrap=True, highlight=False)
