"""The deployable bundle: a folder with the model files, labels, preprocessing spec, runner, TensorRT build
script, a few sample images and manifest.json (sha256 of every file, the accuracy/latency table).

Written into a temporary folder beside the target and renamed into place, so a failed export never leaves a
half-written bundle, and a bundle is never mixed with an earlier one's files.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from edgeppt import cpu_int8, image_io, ort_timing
from edgeppt.errors import EdgepptError
from edgeppt.runs import atomic_write_bytes, atomic_write_json, atomic_write_text, sha256_file, staged_folder

from . import runner, tensorrt
from .formats import FORMATS

FORMAT, VERSION = "edgeppt-export-bundle", 1
MANIFEST = runner.MANIFEST
RUNNER_FILE, BUILD_SCRIPT, BUILD_SHELL = "runner.py", "build_engine.py", "build_engine.sh"
TIMING_FILE = "ort_timing.py"  # edgeppt.ort_timing, which the runner times with
CPU_FILE = "cpu_int8.py"  # edgeppt.cpu_int8, with which the runner names the device's int8 instructions
IMAGE_FILE = "image_io.py"  # edgeppt.image_io, with which the runner reads an image file as training read it


def check_replaceable(path: Path) -> None:
    """An export replaces the whole folder: refuse anything but an earlier export bundle or an empty folder."""
    if path.exists() and (not path.is_dir() or (any(path.iterdir()) and not _is_bundle(path))):
        raise EdgepptError(f"{path} exists and is not an export bundle; refusing to replace it (choose another --out)")


def check_same_run(path: Path, run: Path) -> None:
    """The default folder (dist/<run name>) is shared by runs of one name in different places: an earlier export
    of another run there is never replaced without an --out that names it."""
    try:
        m = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        return
    earlier = m.get("run") if isinstance(m, dict) else None
    if isinstance(earlier, str) and Path(earlier).resolve() != run.resolve():
        raise EdgepptError(f"{path} holds the export of another run ({earlier}); give --out {path} to replace it, "
                           "or another --out")


def _is_bundle(path: Path) -> bool:
    try:
        m = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):  # ValueError: not JSON, or not UTF-8
        return False
    return isinstance(m, dict) and m.get("format") == FORMAT


@contextmanager
def staging(out: Path) -> Iterator[Path]:
    """A temporary folder that becomes `out` when the block finishes without an error."""
    check_replaceable(Path(out))
    with staged_folder(out) as tmp:
        yield tmp


def preprocess_spec(channels: int, image_size: int) -> dict[str, Any]:
    """How an image file becomes the model input; the runner implements exactly this."""
    return {"image_size": image_size, "channels": channels, "color": "L" if channels == 1 else "RGB",
            "resize": "bilinear", "layout": "NCHW", "dtype": "float32", "scale": 1 / 255,
            "mean": [0.0] * channels, "std": [1.0] * channels,
            "note": "x = (pixel * scale - mean) / std: pixels in [0, 1], no further normalisation"}


def write_support_files(root: Path, classes: list[str], spec: dict[str, Any]) -> None:
    """labels, preprocessing spec, the standalone runner (and its timing helper) and TensorRT build script."""
    atomic_write_text(root / "labels.txt", "".join(c + "\n" for c in classes))
    atomic_write_json(root / "preprocess.json", spec)
    here = Path(__file__).parent
    atomic_write_bytes(root / RUNNER_FILE, (here / "runner.py").read_bytes())
    atomic_write_bytes(root / TIMING_FILE, Path(ort_timing.__file__).read_bytes())
    atomic_write_bytes(root / CPU_FILE, Path(cpu_int8.__file__).read_bytes())
    atomic_write_bytes(root / IMAGE_FILE, Path(image_io.__file__).read_bytes())
    atomic_write_bytes(root / BUILD_SCRIPT, (here / "tensorrt.py").read_bytes())


def write_build_shell(root: Path, commands: list[str]) -> None:
    body = ("#!/usr/bin/env sh\n"
            "# Build TensorRT engines on the device (engines are tied to its GPU and TensorRT version).\n"
            "# Either the trtexec commands below, or: python3 build_engine.py <model.onnx> <model.engine>\n"
            "set -e\ncd \"$(dirname \"$0\")\"\n"
            "# TensorRT 10+ takes the precision from the graph; 8.x (JetPack 5, 6.0) from flags: INT8 only for the\n"
            "# Q/DQ graph (without Q/DQ nodes or a calibrator, 8.x would quantize with made-up scales); a trtexec\n"
            "# that lists neither flag (a TensorRT past 10, where strongly typed is the only mode) gets no flag\n"
            "HELP=$(trtexec --help 2>&1 || true)\n"
            "if echo \"$HELP\" | grep -q -- --stronglyTyped; then INT8=--stronglyTyped; FP16=--stronglyTyped\n"
            "elif echo \"$HELP\" | grep -q -- --int8; then INT8='--int8 --fp16'; FP16=--fp16\n"
            "else INT8=; FP16=; fi\n"
            + "".join(c.replace("--stronglyTyped", "$INT8" if ".int8." in c else "$FP16") + "\n" for c in commands))
    path = atomic_write_text(root / BUILD_SHELL, body)
    path.chmod(0o755)


def write_samples(root: Path, x: np.ndarray, y: np.ndarray, classes: list[str], per_class: int = 4) -> int:
    """A few labelled test images as PNG (samples/<class>/), for a smoke check of accuracy on the device."""
    n = 0
    for k, c in enumerate(classes):
        for i, idx in enumerate(np.flatnonzero(y == k)[:per_class]):
            a = np.clip(np.rint(x[idx] * 255), 0, 255).astype(np.uint8)
            img = Image.fromarray(a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0))
            (root / "samples" / c).mkdir(parents=True, exist_ok=True)
            tmp = root / "samples" / c / f".{i}.png.tmp"
            img.save(tmp, format="PNG")
            tmp.rename(root / "samples" / c / f"{i}.png")
            n += 1
    return n


def write_manifest(root: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Add the sha256 of every file in the bundle (but the manifest itself) and write manifest.json."""
    files = {p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(root.rglob("*"))
             if p.is_file() and p.name not in (MANIFEST, runner.SIGNATURE)}
    manifest = {"format": FORMAT, "version": VERSION, **manifest, "files": files}
    atomic_write_json(root / MANIFEST, manifest)
    return manifest


def read_manifest(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not (path / MANIFEST).is_file():
        raise EdgepptError(f"{path}: not an export bundle (no {MANIFEST})")
    try:
        m = json.loads((path / MANIFEST).read_text())
    except ValueError as e:  # not JSON, or not UTF-8
        raise EdgepptError(f"{path / MANIFEST}: not valid JSON ({e})") from e
    if not isinstance(m, dict):
        raise EdgepptError(f"{path / MANIFEST}: not a JSON object")
    if m.get("format") != FORMAT:
        raise EdgepptError(f"{path / MANIFEST}: format is {m.get('format')!r}, expected {FORMAT!r}")
    if m.get("version") != VERSION:
        raise EdgepptError(f"{path / MANIFEST}: bundle version {m.get('version')} is not supported "
                           f"(this edgeppt reads {VERSION})")
    missing = [k for k in runner.MANIFEST_KEYS if k not in m]
    if missing:
        raise EdgepptError(f"{path / MANIFEST}: lacks {', '.join(missing)}")
    return m


def verify_bundle(path: str | Path, trusted_keys: list[Path] | None = None) -> dict[str, Any]:
    """The manifest, after checking every listed file against its sha256 and the signature (the runner's check,
    shared)."""
    m = read_manifest(path)
    problems = runner.verify(Path(path), trusted_keys)
    if problems:
        raise EdgepptError(f"{path}: bundle verification failed: " + "; ".join(problems))
    return m


def trtexec_commands(artifacts: dict[str, dict[str, Any]], input_name: str, shape: list[int],
                     dynamic: bool) -> list[str]:
    """One trtexec line per GPU-ready ONNX model (QDQ INT8 with symmetric activations, FP16)."""
    cmds = []
    for fmt in FORMATS["tensorrt"].built_from:
        a = artifacts.get(fmt)
        if a and a.get("tensorrt_ready", fmt == "fp16"):
            engine = a["file"].replace(".onnx", ".engine")
            cmds.append(tensorrt.trtexec_command(a["file"], engine, input_name, shape, dynamic))
    return cmds
