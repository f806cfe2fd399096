"""Writing a source bundle: ONNX graphs, a manifest listing every file's sha256, an optional signature.

The folder is staged beside its destination, checked by loading it as a user would, and renamed into place,
so a failed write never leaves half a bundle and never replaces a good one.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from . import signing
from .bundle import (
    CLASSIFIER_FILE,
    GENERATOR_FILE,
    MANIFEST_FILE,
    ClassifierSpec,
    GeneratorSpec,
    Latent,
    Manifest,
    SourceBundle,
    load_bundle,
)
from .errors import EdgepptError
from .ort_timing import open_session
from .runs import atomic_write_json, sha256_file, staged_folder


def check_replaceable(path: str | Path) -> None:
    """A bundle write replaces the whole folder: refuse anything but an earlier bundle or an empty folder."""
    path = Path(path)
    if path.exists() and (not path.is_dir() or (any(path.iterdir()) and not (path / MANIFEST_FILE).is_file())):
        raise EdgepptError(f"{path} exists and is not a source bundle; refusing to replace it "
                           "(choose another output path)")


def export_onnx(module: nn.Module, args: tuple[torch.Tensor, ...], input_names: list[str],
                output_names: list[str], out: Path) -> Path:
    """A torch module -> one self-contained ONNX file whose batch dimension is dynamic."""
    batch = torch.export.Dim("batch", min=1, max=65536)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if not isinstance(module, torch.fx.GraphModule):  # a loaded torch.export program has no train mode
            module.eval()
        try:
            program = torch.onnx.export(module, args, input_names=input_names, output_names=output_names,
                                        dynamic_shapes=tuple({0: batch} for _ in args), dynamo=True, verbose=False)
        except Exception as e:  # the owner's module: a batch fixed at export (torch.export's default), an op...
            first = " ".join(str(e).split())[:300]
            raise EdgepptError(f"{out.stem}: cannot export the module to ONNX with a free batch dimension ({first}); "
                               "export it with a dynamic batch (torch.export.Dim) or pack an ONNX graph") from None
    if program is None:
        raise EdgepptError(f"torch.onnx.export produced no program for {out.name}")
    program.save(str(out), external_data=False)
    onnx.checker.check_model(str(out))
    _check_parity(module, args, input_names, out)
    return out


def _check_parity(module: nn.Module, args: tuple[torch.Tensor, ...], input_names: list[str], path: Path,
                  tolerance: float = 1e-4) -> None:
    """The graph computes what the module does on the export's own inputs (relative to the outputs' scale): an
    exporter fault is refused here, not shipped under a README that describes the torch module."""
    with torch.no_grad():
        want = module(*args)
    want = [want] if isinstance(want, torch.Tensor) else list(want)
    got = open_session(path).run(None, {n: a.numpy() for n, a in zip(input_names, args)})
    for w, o in zip(want, got):
        # a float16 module rounds differently in the graph's kernels: its own precision sets the tolerance
        tol = max(tolerance, 4 * torch.finfo(w.dtype).eps) if w.is_floating_point() else tolerance
        w, o = w.detach().float().numpy(), o.astype("float32")
        if o.shape != w.shape or float(abs(o - w).max()) > tol * max(1.0, float(abs(w).max())):
            raise EdgepptError(f"{path.name}: the ONNX graph does not compute what the torch module does "
                               f"(shape {o.shape} vs {w.shape}, max difference "
                               f"{float(abs(o - w).max()) if o.shape == w.shape else float('nan'):.3g})")


def write_bundle(out: str | Path, stage: Callable[[Path], Manifest],
                 extras: Callable[[Path, SourceBundle], None] | None = None,
                 sign_key: str | Path | None = None) -> Path:
    """Stage a bundle: `stage(tmp)` writes the model files and returns the manifest (without `files`);
    `extras(tmp, bundle)` adds previews and notes from the loaded bundle; then every file is hashed into the
    manifest, the manifest is signed, and the folder is renamed into place."""
    out = Path(out)
    check_replaceable(out)
    with staged_folder(out) as tmp:
        manifest = stage(tmp)
        _seal(tmp, manifest)
        if extras is not None:
            extras(tmp, load_bundle(tmp))
            _seal(tmp, manifest)
        if sign_key is not None:
            signing.sign_folder(tmp, sign_key)
        load_bundle(tmp, trusted_keys=[signing.public_key_beside(sign_key)] if sign_key else (),
                    require_signature=sign_key is not None)  # exactly what a user will load
        tmp.chmod(0o755)  # mkdtemp/mkstemp make owner-only entries; a bundle is meant to be shared
        for f in tmp.rglob("*"):
            f.chmod(0o755 if f.is_dir() else 0o644)
    return out


def _seal(folder: Path, manifest: Manifest) -> None:
    files = sorted(f for f in folder.rglob("*") if f.is_file() and not f.name.startswith(".")
                   and f.name not in (MANIFEST_FILE, signing.SIGNATURE_FILE))
    manifest.files = {f.relative_to(folder).as_posix(): sha256_file(f) for f in files}
    # classifier.channels only where set: a bundle that needs no new field stays readable by an earlier edgeppt
    unset: dict[str, Any] = {}
    if manifest.classifier.channels is None:
        unset["classifier"] = {"channels"}
    if manifest.channel_order == "rgb":
        unset["channel_order"] = True
    atomic_write_json(folder / MANIFEST_FILE, manifest.model_dump(mode="json", exclude=unset or None))


def save_bundle(path: str | Path, generator: nn.Module, classifier: nn.Module, classes: list[str],
                latent_dim: int, image_shape: tuple[int, int, int], info: dict[str, Any] | None = None,
                extras: Callable[[Path, SourceBundle], None] | None = None,
                sign_key: str | Path | None = None) -> Path:
    """A bundle from torch modules of edgeppt's own convention: G(z ~ N(0, 1), p) -> [0, 1] images and
    C([0, 1] images) -> (logits, features)."""
    k = len(classes)

    def stage(tmp: Path) -> Manifest:
        z, p = torch.randn(2, latent_dim), torch.softmax(torch.randn(2, k), 1)
        x = torch.rand(2, *image_shape)
        export_onnx(generator, (z, p), ["z", "p"], ["image"], tmp / GENERATOR_FILE)
        export_onnx(classifier, (x,), ["image"], ["logits", "features"], tmp / CLASSIFIER_FILE)
        with torch.no_grad():
            feats = classifier.eval()(x)[1].flatten(1).shape[1]
        return Manifest(classes=list(classes), image_shape=image_shape, latent=Latent(size=latent_dim),
                        generator=GeneratorSpec(file=GENERATOR_FILE),
                        classifier=ClassifierSpec(file=CLASSIFIER_FILE, num_features=feats), info=info or {})

    return write_bundle(path, stage, extras, sign_key)
