"""`edgeppt app`: launch the Streamlit wizard."""

from __future__ import annotations

import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import typer

from edgeppt.cli_support import console

app = typer.Typer()


@app.command("app")
def app_cmd(
    port: int = typer.Option(8501, help="Port to listen on."),
    runs: Path = typer.Option(Path("runs"), help="Folder of run directories the wizard lists and writes."),
    address: str = typer.Option("127.0.0.1", help="Address to bind (localhost by default; 0.0.0.0 in a container)."),
) -> None:
    """Launch the Streamlit wizard in the browser."""
    spec = find_spec("edgeppt.app.wizard")
    if spec is None or spec.origin is None:
        console.print("[bold red]error:[/] the wizard (app/wizard.py) is not installed")
        raise typer.Exit(2)
    cmd = [sys.executable, "-m", "streamlit", "run", spec.origin, "--server.address", address,
           "--server.port", str(port), "--server.headless", "true", "--browser.gatherUsageStats", "false",
           "--client.toolbarMode", "minimal",
           "--", "--runs", str(runs.resolve())]
    console.print(f"wizard on http://{address}:{port} (runs in {runs})")
    raise typer.Exit(subprocess.call(cmd))
