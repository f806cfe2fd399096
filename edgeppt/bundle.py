"""The private source bundle: a class-conditional generator G(z, p) and a source classifier C(x),
compiled with `torch.export`, plus a manifest. It loads without the code that trained it and
without the source data.

Contract (checked on load):
  G(z: (N, latent_dim) ~ N(0, 1), p: (N, K) probabilities over the K source classes) -> (N, C, H, W) in [0, 1]
  C(x: (N, C, H, W) in [0, 1]) -> (logits (N, K), features (N, F))
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import EdgepptError
from .runs import atomic_write_json, sha256_file

FORMAT = "edgeppt-source-bundle"
VERSION = 1
GENERATOR_FILE = "generator.pt2"
CLASSIFIER_FILE = "classifier.pt2"


@dataclass
class SourceBundle:
    path: Path
    manifest: dict[str, Any]
    generator: nn.Module
    classifier: nn.Module

    @property
    def classes(self) -> list[str]:
        return list(self.manifest["classes"])

    @property
    def num_classes(self) -> int:
        return len(self.manifest["classes"])

    @property
    def latent_dim(self) -> int:
        return int(self.manifest["latent_dim"])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.manifest["image_shape"])

    def generate(self, p: torch.Tensor, z: torch.Tensor | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Images for class-probability vectors p (N, K); z is drawn from N(0, 1) when not given."""
        if z is None:
            z = torch.randn(len(p), self.latent_dim, generator=generator)
        return self.generator(z, p)

    def sample_classes(self, labels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Images of the given source classes (one-hot conditioning)."""
        p = torch.nn.functional.one_hot(labels, self.num_classes).float()
        return self.generate(p, generator=generator)

    def classify(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.classifier(x)


def _export(module: nn.Module, args: tuple[torch.Tensor, ...]) -> torch.export.ExportedProgram:
    batch = torch.export.Dim("batch", min=1, max=65536)
    return torch.export.export(module.eval(), args, dynamic_shapes=tuple({0: batch} for _ in args))


def check_replaceable(path: str | Path) -> None:
    """save_bundle replaces the whole folder: refuse anything but an earlier bundle or an empty folder."""
    path = Path(path)
    if path.exists() and (not path.is_dir() or (any(path.iterdir()) and not (path / "manifest.json").is_file())):
        raise EdgepptError(f"{path} exists and is not a source bundle; refusing to replace it "
                           "(choose another output path)")


def save_bundle(path: str | Path, generator: nn.Module, classifier: nn.Module, classes: list[str],
                latent_dim: int, image_shape: tuple[int, int, int], info: dict[str, Any] | None = None) -> Path:
    """Compile G and C with torch.export and write the bundle atomically (a temp dir renamed into place)."""
    path = Path(path)
    check_replaceable(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    k = len(classes)
    z = torch.randn(2, latent_dim)
    p = torch.softmax(torch.randn(2, k), 1)
    x = torch.rand(2, *image_shape)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        with torch.no_grad():
            torch.export.save(_export(generator, (z, p)), tmp / GENERATOR_FILE)
            torch.export.save(_export(classifier, (x,)), tmp / CLASSIFIER_FILE)
            feats = classifier(x)[1].shape[1]
        manifest = {
            "format": FORMAT, "version": VERSION,
            "classes": list(classes), "latent_dim": latent_dim, "image_shape": list(image_shape),
            "latent_distribution": "standard normal",
            "normalization": {"pixel_range": [0.0, 1.0], "note": "G outputs and C inputs are images in [0, 1]"},
            "generator": {"file": GENERATOR_FILE, "inputs": {"z": ["N", latent_dim], "p": ["N", k]},
                          "output": ["N", *image_shape]},
            "classifier": {"file": CLASSIFIER_FILE, "input": ["N", *image_shape],
                           "outputs": {"logits": ["N", k], "features": ["N", feats]}},
            "info": info or {},
            "files": {f: sha256_file(tmp / f) for f in (GENERATOR_FILE, CLASSIFIER_FILE)},
        }
        atomic_write_json(tmp / "manifest.json", manifest)
        tmp.chmod(0o755)  # mkdtemp/mkstemp create owner-only (0700/0600) entries; a bundle is meant to be shared
        for f in tmp.iterdir():
            f.chmod(0o644)
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def read_manifest(path: str | Path) -> dict[str, Any]:
    mpath = Path(path) / "manifest.json"
    if not mpath.is_file():
        raise EdgepptError(f"{path}: not a source bundle (no manifest.json)")
    try:
        m = json.loads(mpath.read_text())
    except json.JSONDecodeError as e:
        raise EdgepptError(f"{mpath}: manifest is not valid JSON ({e})") from e
    if m.get("format") != FORMAT:
        raise EdgepptError(f"{mpath}: format is {m.get('format')!r}, expected {FORMAT!r}")
    if m.get("version") != VERSION:
        raise EdgepptError(f"{mpath}: bundle format version {m.get('version')} is not supported "
                           f"(this edgeppt reads {VERSION})")
    missing = [k for k in ("classes", "latent_dim", "image_shape", "files", "generator", "classifier") if k not in m]
    if missing:
        raise EdgepptError(f"{mpath}: manifest lacks {missing}")
    return m


def verify_files(path: str | Path, manifest: dict[str, Any]) -> None:
    path = Path(path)
    for name, digest in manifest["files"].items():
        f = path / name
        if not f.is_file():
            raise EdgepptError(f"{path}: bundle file {name} is missing")
        actual = sha256_file(f)
        if actual != digest:
            raise EdgepptError(f"{path}: {name} does not match its sha256 in the manifest "
                               f"(expected {digest[:12]}…, found {actual[:12]}…): "
                               "the bundle was modified or is corrupt")


def _check_signatures(path: Path, m: dict[str, Any], g: nn.Module, c: nn.Module) -> None:
    k, latent, shape = len(m["classes"]), int(m["latent_dim"]), tuple(m["image_shape"])
    z, p = torch.randn(3, latent), torch.softmax(torch.randn(3, k), 1)
    try:
        with torch.no_grad():
            img = g(z, p)
    except Exception as e:  # a compiled graph raises assorted types on a signature mismatch
        raise EdgepptError(f"{path}: generator does not accept G(z: (N, {latent}), p: (N, {k})): {e}") from e
    if not isinstance(img, torch.Tensor) or tuple(img.shape) != (3, *shape):
        got = tuple(img.shape) if isinstance(img, torch.Tensor) else type(img).__name__
        raise EdgepptError(f"{path}: generator returned {got}, expected images of shape "
                           f"(N, {', '.join(map(str, shape))})")
    try:
        with torch.no_grad():
            out = c(img)
    except Exception as e:
        raise EdgepptError(f"{path}: classifier does not accept images of shape "
                           f"(N, {', '.join(map(str, shape))}): {e}") from e
    if not (isinstance(out, (tuple, list)) and len(out) == 2 and tuple(out[0].shape) == (3, k)):
        raise EdgepptError(f"{path}: classifier must return (logits (N, {k}), features (N, F))")


def load_bundle(path: str | Path, verify: bool = True) -> SourceBundle:
    """Load and check a bundle: manifest, file hashes, then G and C signatures on a dummy batch."""
    path = Path(path)
    m = read_manifest(path)
    if verify:
        verify_files(path, m)
    modules = []
    for part in ("generator", "classifier"):
        f = path / m[part]["file"]
        try:
            modules.append(torch.export.load(f).module())
        except Exception as e:
            raise EdgepptError(f"{f}: cannot load the compiled {part}: {e}") from e
    g, c = modules
    for mod in (g, c):
        for prm in mod.parameters():
            prm.requires_grad_(False)
    _check_signatures(path, m, g, c)
    return SourceBundle(path, m, g, c)
