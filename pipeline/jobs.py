"""Background jobs: `edgeppt run` as a detached process writing into its run directory.

Everything a front end needs to show a job lives in the run directory (state.json, job.json, job.log, the stages'
metrics), so a reload or a second browser tab sees the same progress, and a job outlives the page that started it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from edgeppt.errors import EdgepptError
from edgeppt.runs import atomic_write_json, atomic_write_text

from .config import PipelineConfig, dump_yaml
from .runner import is_locked
from .state import CONFIG_FILE, STATE_FILE, read_state

JOB_FILE, LOG_FILE = "job.json", "job.log"


def _alive(pid: int) -> bool:
    """True while the process runs (a finished child waiting to be reaped counts as gone)."""
    try:
        os.waitpid(pid, os.WNOHANG)  # reap it if it is our finished child
    except ChildProcessError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def job_info(run: str | Path) -> dict[str, Any] | None:
    p = Path(run) / JOB_FILE
    try:
        return json.loads(p.read_text()) if p.is_file() else None
    except json.JSONDecodeError:
        return None


def is_running(run: str | Path) -> bool:
    run = Path(run)
    job = job_info(run)
    return is_locked(run) or bool(job and _alive(job["pid"]))


def write_config(run: str | Path, cfg: PipelineConfig) -> Path:
    run = Path(run)
    run.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(run / CONFIG_FILE, dump_yaml(cfg))


def start_job(run: str | Path, cfg: PipelineConfig | None = None, until: str | None = None,
              force: tuple[str, ...] = ()) -> dict[str, Any]:
    """Start `edgeppt run <run>/pipeline.yaml --out <run>` in its own process group; returns job.json."""
    run = Path(run).resolve()
    if is_running(run):
        raise EdgepptError(f"a job is already running in {run}")
    if cfg is not None:
        write_config(run, cfg)
    if not (run / CONFIG_FILE).is_file():
        raise EdgepptError(f"{run} has no {CONFIG_FILE}")
    cmd = [sys.executable, "-m", "edgeppt.cli", "run", str(run / CONFIG_FILE), "--out", str(run), "--quiet"]
    if until:
        cmd += ["--until", until]
    for name in force:
        cmd += ["--force", name]
    with open(run / LOG_FILE, "ab") as log:
        log.write(f"\n$ {' '.join(cmd)}\n".encode())
        log.flush()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    job = {"pid": proc.pid, "cmd": cmd, "until": until, "started": time.time(), "status": "running"}
    atomic_write_json(run / JOB_FILE, job)
    return job


def cancel_job(run: str | Path, grace_s: float = 20.0) -> bool:
    """SIGTERM the job's process group (training checkpoints and stops), SIGKILL after `grace_s`."""
    run = Path(run)
    job = job_info(run)
    if not job or not _alive(job["pid"]):
        return False
    os.killpg(job["pid"], signal.SIGTERM)
    deadline = time.time() + grace_s
    while time.time() < deadline and _alive(job["pid"]):
        time.sleep(0.2)
    if _alive(job["pid"]):
        os.killpg(job["pid"], signal.SIGKILL)
        wait_gone(job["pid"])
    state = read_state(run)
    if state.get("status") == "running":  # it died before it could record the stop (SIGKILL, or during start-up)
        state["status"] = "cancelled"
        for entry in state.get("stages", {}).values():
            if entry.get("status") == "running":
                entry["status"] = "cancelled"
        atomic_write_json(run / STATE_FILE, state)
    job["status"] = "cancelled"
    atomic_write_json(run / JOB_FILE, job)
    return True


def wait_gone(pid: int, timeout_s: float = 10.0) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline and _alive(pid):
        time.sleep(0.1)


def job_status(run: str | Path) -> dict[str, Any]:
    """What a front end shows: overall status, each stage's status and the tail of the log."""
    run = Path(run)
    state = read_state(run)
    running = is_running(run)
    status = state.get("status", "new")
    if status == "running" and not running:
        status = "interrupted"  # the process died without recording why (killed, machine restarted)
    elif running:
        status = "running"
    log = run / LOG_FILE
    tail = log.read_text(errors="replace").splitlines()[-30:] if log.is_file() else []
    return {"status": status, "running": running, "stages": state.get("stages", {}), "error": state.get("error"),
            "log": tail}


def list_runs(root: str | Path) -> list[dict[str, Any]]:
    """Run directories under `root`, newest first."""
    root = Path(root)
    runs = [d for d in root.iterdir() if (d / CONFIG_FILE).is_file()] if root.is_dir() else []
    out = []
    for d in sorted(runs, key=lambda d: (d / CONFIG_FILE).stat().st_mtime, reverse=True):
        s = job_status(d)
        out.append({"name": d.name, "path": d, "status": s["status"],
                    "stages": {k: v.get("status") for k, v in s["stages"].items()},
                    "modified": (d / CONFIG_FILE).stat().st_mtime})
    return out
