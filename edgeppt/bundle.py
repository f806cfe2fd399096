"""The private source bundle: a class-conditional generator G(z, y) and a source classifier C(x) as ONNX
graphs, plus a manifest. It loads without the code that trained it, without the source data, and without
unpickling anything: the graphs run in onnxruntime.

The owner's conventions are declared in the manifest and adapted here, so the rest of edgeppt sees one
contract:
  generate(p: (N, K) probabilities over the K source classes) -> (N, C, H, W) images in [0, 1]
  classify(x: (N, C, H, W) in [0, 1]) -> (logits (N, K), features (N, F))

Version 1 bundles held torch.export `.pt2` programs, whose loading unpickles; they load only when signed by
a trusted key or with an explicit `trust_code` (and `edgeppt source pack --from-bundle` converts them).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, ValidationError, field_validator, model_validator

from . import signing
from .bundle_runtime import OnnxPart, Part, TorchPart, load_program
from .config import SourceTrust, Strict
from .data import reshape_images
from .errors import EdgepptError
from .onnxspec import external_files
from .runs import sha256_file

FORMAT = "edgeppt-source-bundle"
VERSION = 2
MANIFEST_FILE = signing.MANIFEST_FILE
GENERATOR_FILE, CLASSIFIER_FILE = "generator.onnx", "classifier.onnx"
BUILTIN_KEYS = Path(__file__).parent / "keys"  # public keys of the bundles shipped with edgeppt

CLASSIFY_CHUNK = 512  # images a call to C


class _Strict(Strict):
    """A manifest's sections: unknown fields, NaN and infinity refused (JSON readers accept NaN and Infinity)."""


class Latent(_Strict):
    size: int = Field(gt=0)
    distribution: Literal["normal", "uniform"] = "normal"  # uniform: on [-1, 1]
    truncation: float | None = Field(None, gt=0, description="|z| above this is redrawn (BigGAN's truncation)")


class GeneratorSpec(_Strict):
    file: str
    z_input: str = "z"
    label_input: str = "p"
    label: Literal["probabilities", "index"] = Field(
        "probabilities", description="probabilities: a (N, K) float input, soft p mixes classes; index: an int64 "
                                     "(N,) class index, and a soft p is sampled as y ~ p")
    output: str = "image"
    output_range: tuple[float, float] = (0.0, 1.0)
    channels_last: bool = Field(False, description="the images are (N, H, W, C), as Keras and TensorFlow make them")


class ClassifierSpec(_Strict):
    file: str
    input: str = "image"
    logits: str = "logits"
    features: str | None = Field("features", description="the output used as features; None: the logits")
    num_features: int = Field(gt=0)
    mean: list[float] = [0.0]  # C sees (x - mean) / std, per channel, for x in [0, 1]
    std: list[float] = [1.0]
    input_size: int | None = Field(None, gt=0, description="side C expects, when G's images must be resized")
    channels_last: bool = Field(False, description="C takes (N, H, W, C) images")
    channels: int | None = Field(None, description="C's own channel count where it is not G's (a colour C behind a "
                                                   "gray G: its images are made colour for it); None: G's")
    softmax_output: bool = Field(False, description="the logits output holds probabilities (the graph ends in a "
                                                   "softmax): their logarithms serve as logits")

    @field_validator("std")
    @classmethod
    def _positive(cls, std: list[float]) -> list[float]:
        if not std or min(std) <= 0:
            raise ValueError(f"{std}: C's input std must be positive (one value, or one per channel)")
        return std


class Manifest(_Strict):
    format: Literal["edgeppt-source-bundle"] = "edgeppt-source-bundle"
    version: Literal[2] = 2
    runtime: Literal["onnx", "pt2"] = "onnx"
    classes: list[str] = Field(min_length=2)
    image_shape: tuple[int, int, int]  # G's images: (channels, height, width)
    latent: Latent
    generator: GeneratorSpec
    classifier: ClassifierSpec
    channel_order: Literal["rgb", "bgr"] = Field("rgb", description="the colour order of G's images and C's input: "
                                                 "bgr for an owner's OpenCV (cv2.imread) pipeline; edgeppt's is rgb")
    info: dict[str, Any] = {}
    files: dict[str, str] = {}  # sha256 of every other file in the bundle folder

    @field_validator("image_shape")
    @classmethod
    def _gray_or_colour(cls, shape: tuple[int, int, int]) -> tuple[int, int, int]:
        if shape[0] not in (1, 3) or min(shape) < 1:
            raise ValueError(f"{list(shape)}: images must have 1 (gray) or 3 (colour) channels and a size")
        if shape[1] != shape[2]:  # every stage resizes to one side; C would be fed squares it was not made for
            raise ValueError(f"{list(shape)}: G draws {shape[1]}x{shape[2]} images; edgeppt needs square ones (crop "
                             "or pad them inside the exported generator, and feed C the same)")
        return shape

    @model_validator(mode="after")
    def _fits(self) -> Manifest:
        lo, hi = self.generator.output_range
        if not lo < hi:
            raise ValueError(f"generator.output_range {[lo, hi]}: the low end must be below the high end")
        c = self.classifier
        if self.channel_order == "bgr" and 3 not in (self.image_shape[0], c.channels):
            raise ValueError("channel_order bgr: neither G's images nor C's input have colour channels")
        if c.channels not in (None, 1, 3):
            raise ValueError(f"classifier.channels {c.channels}: C takes 1 (gray) or 3 (colour) channels")
        if {len(c.mean), len(c.std)} - {1, c.channels or self.image_shape[0]}:
            raise ValueError(f"classifier.mean {c.mean} and std {c.std}: one value, or one per channel "
                             f"({c.channels or self.image_shape[0]})")
        return self


@dataclass
class SourceBundle:
    path: Path
    manifest: Manifest
    generator: Part
    classifier: Part
    signer: signing.Signer | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def classes(self) -> list[str]:
        return list(self.manifest.classes)

    @property
    def num_classes(self) -> int:
        return len(self.manifest.classes)

    @property
    def latent_dim(self) -> int:
        return self.manifest.latent.size

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.manifest.image_shape

    @property
    def classifier_channels(self) -> int:
        """The channels C takes: G's, unless the manifest names C's own."""
        return self.manifest.classifier.channels or self.image_shape[0]

    @property
    def provenance(self) -> str:
        return self.signer.describe() if self.signer else "unsigned"

    def sample_latents(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """z as G was trained with, drawn on the CPU (seeded runs give the same z on any device)."""
        lat = self.manifest.latent
        if lat.distribution == "uniform":
            return torch.rand(n, lat.size, generator=generator) * 2 - 1
        z = torch.randn(n, lat.size, generator=generator)
        if lat.truncation is not None:
            t = lat.truncation
            for _ in range(100):  # redraw the tail; a handful of rounds suffice for any sane threshold
                bad = z.abs() > t
                if not bad.any():
                    break
                z[bad] = torch.randn(int(bad.sum()), generator=generator)
            z = z.clamp(-t, t)
        return z

    @torch.no_grad()
    def generate(self, p: torch.Tensor, z: torch.Tensor | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Images in [0, 1] for class-probability vectors p (N, K), on the bundle's device."""
        spec = self.manifest.generator
        if z is None:
            z = self.sample_latents(len(p), generator)
        p = p.float()
        if spec.label == "index":  # a class-index generator: a soft p is a distribution to draw classes from
            label = torch.multinomial(p.cpu(), 1, generator=generator).squeeze(1)
        else:
            label = p
        out = self.generator({spec.z_input: z.float(), spec.label_input: label}, self.device)[spec.output]
        if spec.channels_last:
            out = out.permute(0, 3, 1, 2)
        lo, hi = spec.output_range
        out = ((out - lo) / (hi - lo)).clamp(0, 1)
        return out.flip(1) if self.manifest.channel_order == "bgr" and out.shape[1] == 3 else out  # to RGB

    def sample_classes(self, labels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Images of the given source classes (one-hot conditioning)."""
        return self.generate(F.one_hot(labels.cpu(), self.num_classes).float(), generator=generator)

    @torch.no_grad()
    def probabilities(self, x: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        """softmax(C(x) / T): which source classes images in [0, 1] resemble (P-SSL's condition, kd's teacher)."""
        with torch.no_grad():
            return F.softmax(self.classify(x)[0] / temperature, dim=1)

    def classify(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, features) of images in [0, 1], on the bundle's device; CLASSIFY_CHUNK images a call to C, so
        a target of many labels never holds C's activations for all of them at once."""
        if len(x) > CLASSIFY_CHUNK:
            parts = [self.classify(x[i:i + CLASSIFY_CHUNK]) for i in range(0, len(x), CLASSIFY_CHUNK)]
            return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        spec = self.manifest.classifier
        x = x.to(self.device, torch.float32)
        # C sees its own channels and side, whatever the images': a colour target for a grayscale bundle (or the
        # reverse), target images at their own side (kd's), G's images at the side C was trained at (input_size)
        x = reshape_images(x, None, self.classifier_channels)
        if self.manifest.channel_order == "bgr" and x.shape[1] == 3:  # RGB images, in the owner's order
            x = x.flip(1)
        side = spec.input_size or self.image_shape[1]
        # Plain bilinear, as C has always been fed (the caches of its outputs stay valid) and as the trainable C of
        # ft resizes inside its exported graph (an antialiased Resize is not every runtime's). A 2x shrink averages
        # 2x2 pixels anyway; a target kept at up to 4x the bundle's side reaches C with some aliasing.
        if x.shape[-1] != side:
            x = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False)
        mean = torch.tensor(spec.mean, device=self.device)[None, :, None, None]
        std = torch.tensor(spec.std, device=self.device)[None, :, None, None]
        x = (x - mean) / std
        out = self.classifier({spec.input: x.permute(0, 2, 3, 1) if spec.channels_last else x}, self.device)
        logits = out[spec.logits].clamp_min(1e-12).log() if spec.softmax_output else out[spec.logits]
        return logits, out[spec.features].flatten(1) if spec.features else logits


def read_manifest(path: str | Path) -> Manifest:
    """The manifest of a version-2 bundle, or of a version-1 bundle translated (runtime "pt2")."""
    mpath = Path(path) / MANIFEST_FILE
    if not mpath.is_file():
        raise EdgepptError(f"{path}: not a source bundle (no {MANIFEST_FILE})")
    try:
        raw = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EdgepptError(f"{mpath}: manifest is not valid JSON ({e})") from e
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        got = raw.get("format") if isinstance(raw, dict) else type(raw).__name__
        raise EdgepptError(f"{mpath}: format is {got!r}, expected {FORMAT!r}")
    if raw.get("version") == 1:
        raw = _from_version_1(raw, mpath)
    elif raw.get("version") != VERSION:
        raise EdgepptError(f"{mpath}: bundle format version {raw.get('version')!r} is not supported "
                           f"(this edgeppt reads 1 and {VERSION})")
    try:
        return Manifest.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"]) or "manifest"
        raise EdgepptError(f"{mpath}: {where}: {err['msg']}") from e


def _from_version_1(m: dict[str, Any], mpath: Path) -> dict[str, Any]:
    """Version 1: torch.export programs G(z, p) -> [0, 1] images and C(x) -> (logits, features)."""
    try:
        return {"runtime": "pt2", "classes": m["classes"], "image_shape": m["image_shape"],
                "latent": {"size": m["latent_dim"]}, "info": m.get("info", {}), "files": m["files"],
                "generator": {"file": m["generator"]["file"]},
                "classifier": {"file": m["classifier"]["file"],
                               "num_features": m["classifier"]["outputs"]["features"][1]}}
    except (KeyError, TypeError, IndexError) as e:
        raise EdgepptError(f"{mpath}: version-1 manifest lacks {e}") from e


def verify_files(path: str | Path, manifest: Manifest) -> None:
    """Every file the manifest lists is present and matches its sha256, and no other file is there."""
    path = Path(path)
    for name, digest in manifest.files.items():
        f = path / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise EdgepptError(f"{path}: manifest lists {name!r}, which is outside the bundle")
        if not f.is_file():
            raise EdgepptError(f"{path}: bundle file {name} is missing")
        actual = sha256_file(f)
        if actual != digest:
            raise EdgepptError(f"{path}: {name} does not match its sha256 in the manifest "
                               f"(expected {digest[:12]}…, found {actual[:12]}…): "
                               "the bundle was modified or is corrupt")
    for part in (manifest.generator.file, manifest.classifier.file):
        if part not in manifest.files:
            raise EdgepptError(f"{path}: the manifest has no sha256 for {part}")
    if manifest.runtime == "onnx":  # version 1 (.pt2) bundles listed only their two models
        extra = sorted(f.relative_to(path).as_posix() for f in path.rglob("*") if f.is_file()
                       and not f.name.startswith(".") and f.name not in (MANIFEST_FILE, signing.SIGNATURE_FILE))
        unlisted = [f for f in extra if f not in manifest.files]
        if unlisted:
            raise EdgepptError(f"{path}: {unlisted[0]} is not covered by the manifest (a bundle lists every file)")


def trust_keys(paths: Iterable[str | Path] = ()) -> list[signing.TrustedKey]:
    """The keys given, the user's keyring, and the keys of the bundles shipped with edgeppt."""
    return signing.trusted_keys(paths) + [signing.load_public_key(p) for p in sorted(BUILTIN_KEYS.glob("*.pub"))]


def load_bundle(path: str | Path, device: str | torch.device = "cpu", trusted_keys: Iterable[str | Path] = (),
                require_signature: bool = False, trust_code: bool = False) -> SourceBundle:
    """Load and check a bundle: manifest, signature, file hashes, then the G and C contract on a dummy batch.

    require_signature: refuse a bundle that is not signed by a trusted key (what `--trusted-key` asks for).
    trust_code: allow a `.pt2` bundle (its loading unpickles) without a trusted signature.
    """
    path, device, trusted_keys = Path(path), torch.device(device), list(trusted_keys)
    m = read_manifest(path)
    keys = trust_keys(trusted_keys)
    signer = signing.verify_folder(path, keys)  # an altered signed manifest fails here, before any hash is read
    if require_signature:  # the signer must be one of the keys given, not any key of the keyring
        signer = signing.require_trusted(path, [signing.load_public_key(k) for k in trusted_keys],
                                         "a signature from one of the given keys is required")
    verify_files(path, m)
    if m.runtime == "pt2" and not trust_code and not (signer and signer.trusted):
        signing.require_trusted(path, keys, "its models are .pt2 programs whose loading can run code "
                                "(convert it with `edgeppt source pack --from-bundle`, or pass --trust-code)")
    parts: list[Part] = []
    for spec in (m.generator, m.classifier):
        f = path / spec.file
        for data in external_files(f, path) if m.runtime == "onnx" else []:  # weights kept beside the graph
            if data.relative_to(path.resolve()).as_posix() not in m.files:
                raise EdgepptError(f"{path}: {spec.file} keeps its weights in {data.name}, which the manifest "
                                   "does not list")
        try:
            parts.append(OnnxPart(f, device) if m.runtime == "onnx" else TorchPart(load_program(f), device))
        except EdgepptError:
            raise
        except Exception as e:  # onnxruntime and torch.export raise assorted types on a bad file
            raise EdgepptError(f"{f}: cannot load the compiled model: {str(e).splitlines()[0][:300]}") from e
    bundle = SourceBundle(path, m, parts[0], parts[1], signer, device)
    check_contract(bundle)
    return bundle


def open_source(path: str | Path, trust: SourceTrust, device: str | torch.device = "cpu") -> SourceBundle:
    """load_bundle with a stage config's trust settings: given keys are required keys."""
    return load_bundle(path, device, trust.trusted_keys, require_signature=bool(trust.trusted_keys),
                       trust_code=trust.trust_code)


def check_contract(bundle: SourceBundle) -> None:
    """G and C work on a dummy batch with soft labels and give the declared shapes."""
    k, shape, where = bundle.num_classes, bundle.image_shape, bundle.path
    p = torch.softmax(torch.randn(3, k, generator=torch.Generator().manual_seed(0)), 1)
    try:
        img = bundle.generate(p, generator=torch.Generator().manual_seed(0))
    except Exception as e:  # a graph raises assorted types on an input mismatch
        raise EdgepptError(f"{where}: the generator does not take z ({bundle.latent_dim}) and a class label "
                           f"for {k} classes: {str(e).splitlines()[0][:300]}") from e
    if tuple(img.shape) != (3, *shape):
        raise EdgepptError(f"{where}: the generator returned shape {tuple(img.shape)}, expected "
                           f"(N, {', '.join(map(str, shape))})")
    try:
        logits, feats = bundle.classify(img)
    except Exception as e:
        raise EdgepptError(f"{where}: the classifier does not accept the generator's images "
                           f"(N, {', '.join(map(str, shape))}): {str(e).splitlines()[0][:300]}") from e
    if tuple(logits.shape) != (3, k):
        raise EdgepptError(f"{where}: the classifier's logits have shape {tuple(logits.shape)}, expected (N, {k})")
    if feats.shape[1] != bundle.manifest.classifier.num_features and bundle.manifest.classifier.features:
        raise EdgepptError(f"{where}: the classifier's features have {feats.shape[1]} values, the manifest says "
                           f"{bundle.manifest.classifier.num_features}")
