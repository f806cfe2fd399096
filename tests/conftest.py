"""Shared fixtures: a tiny source bundle over 8x8 digits, built in seconds, so tests need no trained GAN; and a real
OpenSSH server on localhost (deploy, device latency over SSH)."""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from torch import nn

from edgeppt.bundle_write import save_bundle
from edgeppt.models import create_model

# Tiny test models gain nothing from threads, and threads thrash when the machine is busy.
torch.set_num_threads(1)


class TinyGenerator(nn.Module):
    """G(z, p): the class enters through a linear embedding of p, as in the real bundles."""

    def __init__(self, latent: int, k: int, shape=(1, 8, 8)):
        super().__init__()
        self.shape = shape
        self.embed = nn.Linear(k, 16, bias=False)
        self.net = nn.Sequential(nn.Linear(latent + 16, 64), nn.ReLU(), nn.Linear(64, shape[0] * shape[1] * shape[2]))

    def forward(self, z, p):
        return torch.sigmoid(self.net(torch.cat([z, self.embed(p)], 1))).view(-1, *self.shape)


class WithFeatures(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        f = self.model.forward_features(x)
        return self.model.head(f), f


def make_tiny_bundle(path, k: int = 5, latent: int = 8, seed: int = 0, shape=(1, 8, 8)):
    torch.manual_seed(seed)
    g = TinyGenerator(latent, k, shape)
    c = WithFeatures(create_model("resnet_xs", k, shape[0]))
    return save_bundle(path, g, c, [f"src{i}" for i in range(k)], latent, shape, info={"test": True})


def write_huge_png(path, side: int) -> None:
    """A valid all-black grayscale PNG of side x side pixels, cheap to write: zeros compress about 1000:1."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    z = zlib.compressobj(9)
    row = bytes(side + 1)  # filter byte 0, then the row's pixels
    idat = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


@pytest.fixture(scope="session")
def huge_png():
    """write_huge_png, for tests of decompression bombs."""
    return write_huge_png


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory):
    return make_tiny_bundle(tmp_path_factory.mktemp("bundle") / "tiny")


@dataclass(frozen=True)
class SSHServer:
    """How to reach the test sshd: `host` (user@127.0.0.1), `port`, the client key, and `-o` options that keep the
    user's own ssh config and known_hosts out of it. `command(...)` is a ready ssh argv."""
    host: str
    port: int
    identity: Path
    ssh_options: list[str] = field(default_factory=list)
    log: Path | None = None

    def command(self, *remote: str) -> list[str]:
        opts = [a for o in self.ssh_options for a in ("-o", o)]
        return ["ssh", "-F", "/dev/null", "-p", str(self.port), "-i", str(self.identity), *opts, self.host, *remote]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def sshd(tmp_path_factory) -> Iterator[SSHServer]:
    """A real OpenSSH server on 127.0.0.1 for the current user: key authentication only, its own host key, config and
    log in a temporary folder. One server for the whole test session. OpenSSH is a test dependency (scripts/install
    installs it): without it the deploy, calibrate and remote-search tests fail rather than vanish as skips."""
    exe = shutil.which("sshd") or next((p for p in ("/usr/sbin/sshd", "/usr/local/sbin/sshd") if Path(p).exists()),
                                       None)
    if exe is None or shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
        pytest.fail("OpenSSH server/client not installed: run scripts/install (or apt-get install -y openssh-server "
                    "openssh-client)")
    d = tmp_path_factory.mktemp("sshd")
    for key in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / key)], check=True)
    (d / "authorized_keys").write_text((d / "client_key.pub").read_text())
    (d / "authorized_keys").chmod(0o600)
    port = _free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host_key'}\nAuthorizedKeysFile {d / 'authorized_keys'}\n"
        f"PidFile {d / 'sshd.pid'}\nPubkeyAuthentication yes\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\n"
        "MaxStartups 50\nSubsystem sftp internal-sftp\n")  # NNI's remote training service copies files over sftp
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # the privilege-separation folder sshd requires as root
    log = d / "sshd.log"
    with open(log, "w") as err:  # a file, not a pipe: a full pipe would block sshd once it has logged enough
        proc = subprocess.Popen([exe, "-D", "-e", "-f", str(d / "sshd_config")], stdout=err, stderr=err)
    deadline = time.time() + 15
    while True:
        if proc.poll() is not None:
            pytest.fail(f"sshd exited ({proc.returncode}): {log.read_text()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if time.time() > deadline:
                proc.kill()
                pytest.fail(f"sshd did not start listening on port {port}: {log.read_text()[-2000:]}")
            time.sleep(0.1)
    yield SSHServer(host=f"{getpass.getuser()}@127.0.0.1", port=port, identity=d / "client_key", log=log,
                    ssh_options=[f"UserKnownHostsFile={d / 'known_hosts'}", "StrictHostKeyChecking=no",
                                 "IdentitiesOnly=yes", "LogLevel=ERROR"])
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(autouse=True)
def _own_latency_cache(tmp_path, monkeypatch):
    """Each test its own machine-level latency cache (never ~/.cache), so no test sees another's measurements."""
    monkeypatch.setenv("EDGEPPT_CACHE_DIR", str(tmp_path / "edgeppt-cache"))


def ctrl_c_after_checkpoint(monkeypatch, when) -> list:
    """Make training send itself a real SIGINT (the Ctrl-C path: finish the step, checkpoint, stop) right after
    the first checkpoint for which when(phase name, step) holds. Returns the list that records where it fired;
    `monkeypatch.undo()` restores the trainer."""
    import signal

    from edgeppt.train import loop

    original, fired = loop.Trainer._save, list[tuple[str, int]]()

    def save_then_ctrl_c(self, phase, step, opt, ema, raw=None):
        original(self, phase, step, opt, ema, raw)
        if not fired and when(self.phases[phase].name, step):
            fired.append((self.phases[phase].name, step))
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(loop.Trainer, "_save", save_then_ctrl_c)
    return fired
