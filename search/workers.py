"""SSH workers for NNI's remote training service: its configuration, and a check before the experiment that every
worker logs in and reaches this machine. A worker that cannot reach NNI's manager makes NNI wait for it forever."""

from __future__ import annotations

import shlex
import socket
import subprocess
from contextlib import ExitStack
from pathlib import Path

from edgeppt.config import RemoteWorker, SearchConfig
from edgeppt.errors import EdgepptError
from edgeppt.remote import ssh_command

# Run on the worker by its python: connect to each port, print a marked line for each that fails (a login shell's
# own output, e.g. from ~/.bashrc, is not mistaken for one).
_MARK = "edgeppt-unreachable "
_PROBE = ("import socket, sys\n"
          "for port in sys.argv[2:]:\n"
          "    try:\n"
          "        socket.create_connection((sys.argv[1], int(port)), timeout=10).close()\n"
          "    except OSError as e:\n"
          f"        print('{_MARK}' + f'{{sys.argv[1]}}:{{port}}: {{e.strerror or type(e).__name__}}')\n")


def manager_ip(cfg: SearchConfig) -> str:
    """This machine's address as the workers reach it: the one given, else the one NNI itself would guess."""
    if cfg.manager_ip:
        return cfg.manager_ip
    from nni.experiment.config.utils import get_ipv4_address  # NNI's own guess: the check tests what NNI uses

    try:
        return get_ipv4_address()
    except OSError as e:
        raise EdgepptError(f"engine remote: cannot tell this machine's address ({e.strerror or e}); set manager_ip "
                           "to the address the workers reach it at") from None


def remote_service(cfg: SearchConfig):
    """NNI's remote training service over `cfg.workers`: NNI's manager logs in over SSH and runs each trial there
    (`search.run.nni_trial`, which reads the shared run directory); a trial lost with its worker is failed by NNI
    and the search goes on with the others."""
    from nni.experiment.config import RemoteConfig, RemoteMachineConfig

    machines = [RemoteMachineConfig(host=w.host, port=w.port, user=w.user,
                                    ssh_key_file=str(w.ssh_key_file.expanduser()), python_path=w.python_path)
                for w in cfg.workers]
    svc = RemoteConfig(machine_list=machines, reuse_mode=True)
    svc.nni_manager_ip = manager_ip(cfg)
    return svc


def _probe_command(w: RemoteWorker, known_hosts: Path, ip: str, ports: list[int]) -> list[str]:
    # Log in as NNI's own SSH client does: this key only, no ~/.ssh/config (no agent keys, aliases or jump hosts).
    # NNI checks no host key; the keys met here are kept in the run directory, not in ~/.ssh/known_hosts.
    ssh = ssh_command(f"{w.user}@{w.host}", w.port, w.ssh_key_file.expanduser(),
                      ["IdentitiesOnly=yes", "IdentityAgent=none", "StrictHostKeyChecking=accept-new",
                       f'UserKnownHostsFile="{known_hosts}"'])
    ssh[1:1] = ["-F", "/dev/null"]
    path = f"PATH={shlex.quote(w.python_path)}:$PATH " if w.python_path else ""
    return [*ssh, f"{path}python3 -c {shlex.quote(_PROBE)} {shlex.quote(ip)} " + " ".join(map(str, ports))]


def check_workers(cfg: SearchConfig, port: int, run_dir: Path) -> None:
    """Log in to every worker and connect from it to this machine on NNI's two ports (its REST server and, one
    above, the trials' command channel), each held open here meanwhile. Raises a one-line error naming the
    worker and what failed."""
    ip = manager_ip(cfg)
    ports = [port, port + 1]
    known_hosts = run_dir / "known_hosts"
    run_dir.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        for p in ports:
            try:
                stack.enter_context(socket.create_server(("", p)))
            except OSError as e:
                raise EdgepptError(f"engine remote: cannot listen on port {p} ({e.strerror or e})") from None
        for w in cfg.workers:
            who = f"worker {w.user}@{w.host}:{w.port}"
            try:
                done = subprocess.run(_probe_command(w, known_hosts, ip, ports), capture_output=True, text=True,
                                      timeout=60)
            except subprocess.TimeoutExpired:
                raise EdgepptError(f"{who}: no answer over SSH within 60 s") from None
            if done.returncode != 0:
                last = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
                raise EdgepptError(f"{who}: the SSH login or its python3 failed ({last})")
            failed = [ln[len(_MARK):] for ln in done.stdout.splitlines() if ln.startswith(_MARK)]
            if failed:
                raise EdgepptError(f"{who} cannot reach this machine at {failed[0]}; set manager_ip to this "
                                   "machine's address as the workers reach it")
