"""`edgeppt deploy`: copy a bundle to a device over SSH, verify its hashes there, run the runner's benchmark there
and bring the numbers back. Plain OpenSSH (ssh + tar), so the device needs nothing but sshd, tar and Python."""

from __future__ import annotations

import io
import json
import shlex
import subprocess
import tarfile
from pathlib import Path
from typing import Any

from edgeppt.errors import EdgepptError
from edgeppt.remote import ssh_command
from edgeppt.signing import MANIFEST_FILE, SIGNATURE_FILE

from .bundle import RUNNER_FILE, verify_bundle
from .default import on_device
from .formats import DEVICE_RUNS


def _remote(base: list[str], script: str, stdin: bytes | None = None,
            timeout: float = 600) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(base + [script], input=stdin, capture_output=True, timeout=timeout)
    except FileNotFoundError as e:
        raise EdgepptError("ssh is not installed on this machine (apt-get install openssh-client)") from e
    except subprocess.TimeoutExpired as e:
        raise EdgepptError(f"the device did not answer within {timeout:.0f}s") from e


def _tar(path: Path, manifest: dict[str, Any]) -> bytes:
    """The bundle's own files: those its manifest lists, the manifest and its signature. Anything else in the
    folder (a file put there after the export) stays here: the device runs only what was verified."""
    names = [MANIFEST_FILE] + [SIGNATURE_FILE] * (path / SIGNATURE_FILE).is_file() + sorted(manifest["files"])
    buf = io.BytesIO()
    try:
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for name in names:
                tar.add(path / name, arcname=name, recursive=False)
    except OSError as e:
        raise EdgepptError(f"cannot pack {path}: {e}") from e
    return buf.getvalue()


def deploy_bundle(path: str | Path, host: str, remote_dir: str | None = None, port: int | None = None,
                  identity: str | Path | None = None, ssh_options: list[str] | None = None, python: str = "python3",
                  threads: int | None = None, runs: int = DEVICE_RUNS, max_seconds: float = 10.0,
                  trusted_keys: list[Path] | None = None) -> dict[str, Any]:
    """Returns the benchmark report produced on the device (with the remote path and host). With trusted_keys,
    the bundle must be signed by one of them, here and on the device, before any model is loaded there."""
    path = Path(path)
    keys = [Path(k) for k in trusted_keys or []]
    manifest = verify_bundle(path, keys)  # never ship a bundle that is already wrong
    remote_dir = (remote_dir or f"edgeppt-bundles/{path.resolve().name}").rstrip("/")  # relative: the login's home
    if remote_dir in ("", "~"):
        raise EdgepptError(f"--remote-dir {remote_dir or '/'!r}: give a folder for the bundle, not the home or root")
    base = ssh_command(host, port, identity, ssh_options)
    d, new, old = (_word(remote_dir + suffix) for suffix in ("", ".new", ".old"))
    # Unpacked and verified beside the bundle the device runs now, then swapped in: a copy cut short or a bundle
    # that fails verification there leaves the running one as it was, and no stale file of it survives the swap.
    r = _remote(base, f"rm -rf {new} && mkdir -p {new} && tar -C {new} -xf -", stdin=_tar(path, manifest))
    if r.returncode != 0:
        raise EdgepptError(f"copying to {host}:{remote_dir} failed (exit {r.returncode}): {_err(r)}")
    py = shlex.quote(python)
    key_args = ""
    for i, key in enumerate(keys):  # the keys travel beside the bundle, not in it: the bundle cannot vouch for itself
        keydir = _word(remote_dir + ".trusted-keys")
        r = _remote(base, f"mkdir -p {keydir} && cat > {keydir}/{i}.pub", stdin=key.read_bytes())
        if r.returncode != 0:
            raise EdgepptError(f"copying the trusted key {key} to {host} failed: {_err(r)}")
        key_args += f" --trusted-key {shlex.quote('../' + Path(remote_dir).name + f'.trusted-keys/{i}.pub')}"
    r = _remote(base, f"cd {new} && {py} {RUNNER_FILE} verify{key_args}")
    if r.returncode != 0:
        _remote(base, f"rm -rf {new}")
        raise EdgepptError(f"verification on {host} failed (the bundle there is unchanged): {_err(r)}")
    # TensorRT engines the device built for the running bundle move across: ONNX Runtime names them by the model's
    # hash, so a changed model builds anew and an unchanged one skips minutes of building.
    r = _remote(base, f"rm -rf {old} && {{ [ ! -d {d}/trt_cache ] || [ -e {new}/trt_cache ] || "
                      f"mv {d}/trt_cache {new}/trt_cache; }} && {{ [ ! -e {d} ] || mv {d} {old}; }} && "
                      f"mv {new} {d} && rm -rf {old}")
    if r.returncode != 0:
        raise EdgepptError(f"moving the new bundle into {host}:{remote_dir} failed: {_err(r)}")
    bench = f"cd {d} && {py} {RUNNER_FILE} bench --json --runs {int(runs)} --max-seconds {float(max_seconds)}"
    if threads is not None:
        bench += f" --threads {int(threads)}"
    r = _remote(base, bench)
    if r.returncode != 0:
        raise EdgepptError(f"the benchmark on {host} failed (exit {r.returncode}): {_err(r)}")
    try:
        report = json.loads(r.stdout.decode().strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError) as e:
        raise EdgepptError(f"the device's benchmark printed no JSON report: {r.stdout[-500:]!r}") from e
    report.update(remote=f"{host}:{remote_dir}", verified_files=len(manifest["files"]),
                  on_device=on_device(manifest, report))
    return report


def _word(remote_path: str) -> str:
    """A remote path as one shell word; a leading ~/ is the login's home (quoting alone would keep the ~)."""
    if remote_path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(remote_path[2:])
    return shlex.quote(remote_path)


def _err(r: subprocess.CompletedProcess) -> str:
    return _one_line(r.stderr or r.stdout)[-1000:] or "no output"


def _one_line(output: bytes) -> str:
    """A command's output as one line of an error message (ssh and the runner may print several)."""
    return "; ".join(s for s in (line.strip() for line in output.decode(errors="replace").splitlines()) if s)
