"""Ed25519 signatures over a bundle's manifest, and the keys a user trusts.

A signed folder holds `signature.json` beside `manifest.json`. The signature covers the manifest's exact bytes,
and the manifest lists the sha256 of every other file, so one signature covers every file and every manifest
field. Keys are PEM files: `<name>.key` (private, owner-only) and `<name>.pub`. Trusted public keys come from
`--trusted-key` and from the keyring folder `$EDGEPPT_CONFIG_DIR/trusted-keys` (default
`~/.config/edgeppt/trusted-keys`); any `*.pub` there is trusted.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .errors import EdgepptError
from .runs import atomic_write_bytes, atomic_write_json

SIGNATURE_FILE = "signature.json"
MANIFEST_FILE = "manifest.json"
ALGORITHM = "ed25519"


def config_dir() -> Path:
    """The user's edgeppt configuration folder (the keyring lives in it)."""
    env = os.environ.get("EDGEPPT_CONFIG_DIR")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "edgeppt"


def keyring_dir() -> Path:
    return config_dir() / "trusted-keys"


def key_id(public: Ed25519PublicKey) -> str:
    """A short fingerprint: the first 16 hex digits of the sha256 of the raw public key."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


@dataclass(frozen=True)
class TrustedKey:
    name: str  # the key file's stem, e.g. "owner" for owner.pub
    key: Ed25519PublicKey

    @property
    def id(self) -> str:
        return key_id(self.key)


@dataclass(frozen=True)
class Signer:
    """Who signed a verified folder."""
    key_id: str
    name: str | None  # the trusted key's name; None when the key is unknown, so nothing could verify it

    @property
    def trusted(self) -> bool:
        return self.name is not None

    def describe(self) -> str:
        return f"signed by {self.name} (key {self.key_id})" if self.trusted else \
            f"claims an unknown key {self.key_id} (not verified)"


def keygen(out: str | Path) -> tuple[Path, Path]:
    """Write a new key pair: `<out>.key` (private, mode 0600) and `<out>.pub`. Refuses to overwrite a key."""
    out = Path(out)
    priv_path, pub_path = out.with_name(out.name + ".key"), out.with_name(out.name + ".pub")
    for p in (priv_path, pub_path):
        if p.exists():
            raise EdgepptError(f"{p} exists; refusing to overwrite a key (choose another --out)")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    # the public half first: a crash between the two leaves a .pub alone (harmless, and named on the next try),
    # never a private key without its public half; the private key is owner-only from its first byte
    atomic_write_bytes(pub_path, key.public_key().public_bytes(serialization.Encoding.PEM,
                                                               serialization.PublicFormat.SubjectPublicKeyInfo))
    atomic_write_bytes(priv_path, pem, private=True)
    return priv_path, pub_path


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    path = _key_path(path, ".key")
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise EdgepptError(f"{path}: not a readable unencrypted PEM private key ({e})") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise EdgepptError(f"{path}: not an Ed25519 private key")
    return key


def load_public_key(path: str | Path) -> TrustedKey:
    path = _key_path(path, ".pub")
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (OSError, ValueError, UnsupportedAlgorithm) as e:
        raise EdgepptError(f"{path}: not a readable PEM public key ({e})") from e
    if not isinstance(key, Ed25519PublicKey):
        raise EdgepptError(f"{path}: not an Ed25519 public key")
    return TrustedKey(path.name.removesuffix(".pub"), key)


def _key_path(path: str | Path, suffix: str) -> Path:
    """`keys/owner` names `keys/owner.key` or `keys/owner.pub`, as keygen wrote them."""
    path = Path(path)
    if not path.is_file() and path.with_name(path.name + suffix).is_file():
        return path.with_name(path.name + suffix)
    if not path.is_file():
        raise EdgepptError(f"{path}: no such key file")
    return path


def public_key_beside(private_key: str | Path) -> Path:
    """keygen writes <name>.key and <name>.pub side by side: the public half of a private key file."""
    p = Path(private_key)
    pub = p.with_name(p.name.removesuffix(".key") + ".pub")
    if not pub.is_file():
        raise EdgepptError(f"{pub}: the public key beside {p} is missing (keygen writes both)")
    return pub


def trusted_keys(paths: Iterable[str | Path] = ()) -> list[TrustedKey]:
    """The keys given on the command line, then every `*.pub` in the keyring folder."""
    keys = [load_public_key(p) for p in paths]
    ring = keyring_dir()
    if ring.is_dir():
        keys += [load_public_key(p) for p in sorted(ring.glob("*.pub"))]
    return keys


def sign_folder(folder: str | Path, private_key: str | Path) -> Signer:
    """Sign the manifest's bytes; the manifest must already list every file in the folder."""
    folder = Path(folder)
    key = load_private_key(private_key)
    manifest = _manifest_bytes(folder)
    atomic_write_json(folder / SIGNATURE_FILE, {
        "algorithm": ALGORITHM, "key_id": key_id(key.public_key()),
        "signature": base64.b64encode(key.sign(manifest)).decode()})
    return Signer(key_id(key.public_key()), Path(private_key).name.removesuffix(".key"))


def _manifest_bytes(folder: Path) -> bytes:
    try:
        return (folder / MANIFEST_FILE).read_bytes()
    except OSError as e:
        raise EdgepptError(f"{folder}: no readable {MANIFEST_FILE} ({e.strerror})") from e


def verify_folder(folder: str | Path, keys: list[TrustedKey]) -> Signer | None:
    """The signer of a folder, or None if it carries no signature.

    A signature that does not verify against the key it names is always an error (the manifest was altered).
    A signature from a key not in `keys` cannot be verified and is reported as such (Signer.name is None):
    whether that is acceptable is the caller's policy. Checking the files against the manifest is the caller's job too.
    """
    folder = Path(folder)
    sig_path = folder / SIGNATURE_FILE
    if not sig_path.exists():
        return None
    try:
        sig = json.loads(sig_path.read_text())
        signature = base64.b64decode(sig["signature"], validate=True)
        claimed = str(sig["key_id"])
        if sig.get("algorithm") != ALGORITHM:
            raise EdgepptError(f"{sig_path}: algorithm {sig.get('algorithm')!r} is not {ALGORITHM!r}")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise EdgepptError(f"{sig_path}: not a valid signature file ({e})") from e
    manifest = _manifest_bytes(folder)
    for k in keys:
        if k.id == claimed:
            try:
                k.key.verify(signature, manifest)
            except InvalidSignature:
                raise EdgepptError(f"{folder}: the signature does not match the manifest for key {k.name} "
                                   f"({claimed}): the bundle was altered after it was signed") from None
            return Signer(claimed, k.name)
    return Signer(claimed, None)


def require_trusted(folder: str | Path, keys: list[TrustedKey], what: str) -> Signer:
    """Verify and insist on a trusted signer (used before anything in the folder may run code)."""
    signer = verify_folder(folder, keys)
    if signer is None:
        raise EdgepptError(f"{folder}: {what}, and the bundle is not signed")
    if not signer.trusted:
        known = ", ".join(f"{k.name} ({k.id})" for k in keys) or "none (give --trusted-key)"
        raise EdgepptError(f"{folder}: {what}, and it is signed by key {signer.key_id}, which is not trusted "
                           f"(trusted keys: {known})")
    return signer
