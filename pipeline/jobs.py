"""Background jobs: `edgeppt run` as a detached process writing into its run directory.

Everything a front end needs to show a job lives in the run directory (state.json, job.json, job.log, the stages'
metrics), so a reload or a second browser tab sees the same progress, and a job outlives the page that started it.
"""

from __future__ import annotations

import fcntl
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

JOB_FILE, LOG_FILE, START_LOCK = "job.json", "job.log", ".job.lock"


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


def _started(pid: int) -> str | None:
    """When the process started (clock ticks since boot, /proc/<pid>/stat's 22nd field): a pid the system handed
    to another process since has another start."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _job_alive(job: dict[str, Any]) -> bool:
    """The job's own process still runs (not a later process that was given its pid)."""
    return _alive(job["pid"]) and job.get("start") in (None, _started(job["pid"]))


def job_info(run: str | Path) -> dict[str, Any] | None:
    p = Path(run) / JOB_FILE
    try:
        return json.loads(p.read_text()) if p.is_file() else None
    except json.JSONDecodeError:
        return None


def is_running(run: str | Path) -> bool:
    run = Path(run)
    job = job_info(run)
    return is_locked(run) or bool(job and _job_alive(job))


def write_config(run: str | Path, cfg: PipelineConfig) -> Path:
    run = Path(run)
    run.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(run / CONFIG_FILE, dump_yaml(cfg))


def start_job(run: str | Path, cfg: PipelineConfig | None = None, until: str | None = None) -> dict[str, Any]:
    """Start `edgeppt run <run>/pipeline.yaml --out <run>` in its own process group; returns job.json."""
    run = Path(run).resolve()
    run.mkdir(parents=True, exist_ok=True)
    with open(run / START_LOCK, "a+") as lock:  # two tabs' clicks: one checks, writes and spawns at a time
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _start(run, cfg, until)


def _start(run: Path, cfg: PipelineConfig | None, until: str | None) -> dict[str, Any]:
    if is_running(run):
        raise EdgepptError(f"a job is already running in {run}")
    if cfg is not None:
        write_config(run, cfg)
    if not (run / CONFIG_FILE).is_file():
        raise EdgepptError(f"{run} has no {CONFIG_FILE}")
    cmd = [sys.executable, "-m", "edgeppt.cli", "run", str(run / CONFIG_FILE), "--out", str(run), "--quiet"]
    if until:
        cmd += ["--until", until]
    with open(run / LOG_FILE, "ab") as log:
        log.write(f"\n$ {' '.join(cmd)}\n".encode())
        log.flush()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True,  # its log is read in a browser, not the launching terminal:
                                env={**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "120"})  # its width, not theirs
    job = {"pid": proc.pid, "start": _started(proc.pid), "cmd": cmd, "until": until, "started": time.time(),
           "status": "running"}
    atomic_write_json(run / JOB_FILE, job)
    return job


def cancel_job(run: str | Path, grace_s: float = 20.0) -> bool:
    """SIGTERM the job's process group (training checkpoints and stops), SIGKILL after `grace_s`."""
    run = Path(run)
    job = job_info(run)
    if not job or not _job_alive(job):
        pid = read_state(run).get("pid")  # a run started from a terminal (`edgeppt run`): its own process only,
        if not (isinstance(pid, int) and is_locked(run) and _alive(pid)):  # not the terminal's process group
            return False
        os.kill(pid, signal.SIGTERM)  # the CLI stops as on Ctrl-C: the stage checkpoints, the state says so
        wait_gone(pid, grace_s)
        return not _alive(pid)
    try:
        os.killpg(job["pid"], signal.SIGTERM)
        deadline = time.time() + grace_s
        while time.time() < deadline and _alive(job["pid"]):
            time.sleep(0.2)
        if _alive(job["pid"]):
            os.killpg(job["pid"], signal.SIGKILL)
            wait_gone(job["pid"])
    except ProcessLookupError:  # it ended on its own meanwhile
        pass
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
    status, error = state.get("status", "new"), state.get("error")
    tail = _log_tail(run / LOG_FILE)
    job = job_info(run)
    if status == "running" and not running:
        status = "interrupted"  # the process died without recording why (killed, machine restarted)
    elif running:
        status = "running"
    elif job and job.get("status") != "cancelled" and job.get("started", 0) > state.get("started", 0):
        # it ended before the pipeline recorded a start (a config or input refused in preflight, the run locked)
        status = "failed"  # and the log says why
        error = next((line.split("error:", 1)[1].strip() for line in reversed(tail) if "error:" in line),
                     "it stopped before its first stage; see the job log")
    return {"status": status, "running": running, "stages": state.get("stages", {}), "error": error, "log": tail}


def _log_tail(path: Path, lines: int = 30, window: int = 1 << 16) -> list[str]:
    """The log's last lines, read from its end (a log grows with every job the run has had)."""
    if not path.is_file():
        return []
    with open(path, "rb") as f:
        f.seek(max(0, f.seek(0, os.SEEK_END) - window))
        return f.read().decode(errors="replace").splitlines()[-lines:]


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
