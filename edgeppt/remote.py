"""How edgeppt reaches a device: plain `ssh`, so the user's keys, agent and ~/.ssh/config apply."""

from __future__ import annotations

from pathlib import Path


def ssh_command(host: str, port: int | None = None, identity: str | Path | None = None,
                options: list[str] | None = None) -> list[str]:
    """`ssh ... host`, ready for a remote command to be appended."""
    # BatchMode: never stop at a password prompt; a remote job must fail fast and say why.
    cmd = ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=15"]
    if port:
        cmd += ["-p", str(port)]
    if identity:
        cmd += ["-i", str(identity)]
    for o in options or []:
        cmd += ["-o", o]
    return [*cmd, "--", host]  # a host (or user) that starts with "-" is a name, never an option
