"""Bad input at every entry point, as one table: each case is refused with exactly one line starting with "error:"
that names what is wrong, never a traceback, and an earlier good output the command runs over is left byte for byte.

The good outputs (a transfer run, its export bundle, a pipeline run, a sample grid) are made once for the module;
each case writes its bad input under its own tmp_path. Cases that need the test sshd fail where OpenSSH is not
installed, as every test on that server does.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import socket
import subprocess
import sys
import threading
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

from edgeppt.app.uploads import extract_bundle, extract_image_folders
from edgeppt.cli import app
from edgeppt.errors import EdgepptError

DIGITS = "digits:0,1,2"


@dataclass
class World:
    """What a case's argv and setup may use: its own folder, the tiny source bundle and the module's good outputs."""
    tmp: Path
    bundle: Path
    run: Path          # a finished transfer run
    dist: Path         # its export bundle
    pipeline: Path     # a finished `edgeppt run` directory
    pipeline_yaml: dict
    grid: Path         # a sample grid from `source inspect`
    closed_port: int   # nothing listens there
    drop_port: int     # accepts a connection and closes it at once
    ssh: object = None  # the sshd fixture, for cases that need it

    def copy_bundle(self, name: str = "src") -> Path:
        shutil.copytree(self.bundle, self.tmp / name)
        return self.tmp / name

    def manifest(self, folder: Path, drop: str | None = None, **changes: object) -> None:
        m = json.loads((folder / "manifest.json").read_text())
        m.update(changes)
        m.pop(drop, None)
        (folder / "manifest.json").write_text(json.dumps(m))

    def pipeline_config(self, **changes: object) -> Path:
        path = self.tmp / "pipeline.yaml"
        path.write_text(yaml.safe_dump({**self.pipeline_yaml, **changes}))
        return path


Argv = Callable[[World], list[str]]


@dataclass(frozen=True)
class Case:
    id: str
    argv: Argv | None               # an `edgeppt` command line (None: `call` instead)
    error: str                      # a regex the one error line must match
    setup: Callable[[World], object] = lambda w: None
    keep: Callable[[World], list[Path]] = lambda w: []  # earlier outputs that must be left byte for byte
    call: Callable[[World], object] | None = None        # a function the wizard calls, instead of a command
    process: bool = False           # a real `python -m edgeppt.cli` process rather than CliRunner
    sshd: bool = False              # needs the test sshd (skipped without OpenSSH)
    code: int = 2


# ---------------------------------------------------------------- bad inputs written by the cases' setups
def gray_png(path: Path, value: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8), value, np.uint8)).save(path)


def png_bytes(value: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def make_zip(members: dict[str, bytes], mode: int | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            info = zipfile.ZipInfo(name)
            if mode is not None:
                info.external_attr = mode << 16
            zf.writestr(info, data)
    return buf.getvalue()


GOOD_IMAGES = {f"{c}/{i}.png": png_bytes(40 * k + i) for k, c in enumerate(["cat", "dog"]) for i in range(3)}


def one_class_folder(w: World) -> None:
    for i in range(4):
        gray_png(w.tmp / "target" / "only" / f"{i}.png", i)


def two_labels_per_class_folder(w: World) -> None:
    for c in ("cat", "dog"):
        for i in range(2):
            gray_png(w.tmp / "target" / c / f"{i}.png", 100 * (c == "dog") + i)


def damaged_run_config(w: World) -> None:
    (w.tmp / "r").mkdir()
    (w.tmp / "r" / "config.json").write_text("{oops")


def dangling_class_link(w: World) -> None:
    two_labels_per_class_folder(w)
    (w.tmp / "target" / "zebra").symlink_to(w.tmp / "nowhere")


def corrupt_class_folder(w: World) -> None:
    for i in range(4):
        gray_png(w.tmp / "target" / "good" / f"{i}.png", i)
        (w.tmp / "target" / "bad").mkdir(exist_ok=True)
        (w.tmp / "target" / "bad" / f"{i}.png").write_bytes(b"not a png")


def tamper(w: World) -> None:
    f = w.copy_bundle() / "generator.onnx"
    data = bytearray(f.read_bytes())
    data[-10] ^= 1
    f.write_bytes(bytes(data))


def signed_by_one_key(w: World) -> None:
    from edgeppt.signing import keygen, sign_folder

    keygen(w.tmp / "owner")
    keygen(w.tmp / "other")
    sign_folder(w.copy_bundle(), w.tmp / "owner.key")


def good_upload(w: World) -> None:
    extract_image_folders(make_zip(GOOD_IMAGES), w.tmp / "upload")


def good_bundle_upload(w: World) -> None:
    extract_bundle(make_zip({f"tiny/{p.name}": p.read_bytes() for p in w.bundle.iterdir() if p.is_file()}),
                   w.tmp / "upload")


def transfer(w: World, *extra: str, target: str = DIGITS) -> list[str]:
    return ["transfer", "--source", str(w.bundle), "--target", target, "--method", "scratch", "--arch", "resnet_xs",
            "--labels-per-class", "2", "--out", str(w.tmp / "out"), "--quiet", "--set", "finetune_steps=2", *extra]


def search(w: World, *extra: str) -> list[str]:
    return ["search", "--source", str(w.bundle), "--target", DIGITS, "--trials", "1", "--out", str(w.tmp / "out"),
            "--quiet", *extra]


def pack(w: World, *extra: str, classes: str = "a,b,c,d,e") -> list[str]:
    return ["source", "pack", "--generator", str(w.bundle / "generator.onnx"), "--classifier",
            str(w.bundle / "classifier.onnx"), "--classes", classes, "--out", str(w.tmp / "packed"), *extra]


def inspect(w: World, bundle: Path, *extra: str) -> list[str]:
    return ["source", "inspect", str(bundle), "--out", str(w.grid), *extra]


def deploy(w: World, port: int, *extra: str) -> list[str]:
    return ["deploy", str(w.dist), "--host", "nobody@127.0.0.1", "--port", str(port), "-o", "BatchMode=yes",
            "-o", "ConnectTimeout=10", "--remote-dir", str(w.tmp / "device"), *extra]


def bad_profile(w: World) -> Path:
    (w.tmp / "board.yaml").write_text("name: board\nthreads: many\n")
    return w.tmp / "board.yaml"


def ssh_wrong_key(w: World) -> list[str]:
    s = w.ssh
    opts = [a for o in s.ssh_options for a in ("-o", o)]  # type: ignore[attr-defined]
    return ["deploy", str(w.dist), "--host", s.host, "--port", str(s.port),  # type: ignore[attr-defined]
            "--identity", str(s.identity.with_name("host_key")), *opts,  # type: ignore[attr-defined]
            "--remote-dir", str(w.tmp / "device")]


def bundle_copy(w: World, change: Callable[[Path], object]) -> None:
    shutil.copytree(w.dist, w.tmp / "b")
    change(w.tmp / "b")


def model_file(w: World, content: object) -> None:
    (w.tmp / "r").mkdir()
    torch.save(content, w.tmp / "r" / "model.pt")


def pipeline_outputs(w: World) -> list[Path]:
    return [w.pipeline / "transfer", w.pipeline / "export"]


CASES = [
    # ---- transfer
    Case("transfer-one-class", lambda w: transfer(w, target=str(w.tmp / "target")),
         r"needs at least two classes with images; found \['only'\]", one_class_folder),
    Case("transfer-class-of-corrupt-files", lambda w: transfer(w, target=str(w.tmp / "target")),
         r"class 'bad' in .* has no readable image", corrupt_class_folder),
    Case("transfer-missing-source", lambda w: [*transfer(w), "--method", "pp", "--source", str(w.tmp / "nowhere")],
         r"nowhere: not a source bundle \(no manifest\.json\)"),
    Case("transfer-target-is-a-file", lambda w: transfer(w, target=str(w.run / "report.json")),
         r"report\.json: not a folder of class folders"),
    Case("transfer-corrupt-npz", lambda w: transfer(w, target=str(w.tmp / "x.npz")),
         r"x\.npz: not a \.npz file", lambda w: (w.tmp / "x.npz").write_bytes(b"PK not a zip")),
    Case("transfer-unlabeled-npz-of-no-images", lambda w: transfer(w, "--unlabeled", str(w.tmp / "u.npz")),
         r"--unlabeled: .*u\.npz: x holds no images \(shape \(0, 28, 28\)\)",
         lambda w: np.savez(w.tmp / "u.npz", x=np.zeros((0, 28, 28)))),
    Case("transfer-class-folder-links-to-nothing", lambda w: transfer(w, target=str(w.tmp / "target")),
         r"target: zebra link\(s\) to nothing; fix or remove the link", dangling_class_link),
    Case("transfer-npz-single-values", lambda w: transfer(w, target=str(w.tmp / "t.npz")),
         r"t\.npz: 'x' and 'y' must be arrays with one entry per image",
         lambda w: np.savez(w.tmp / "t.npz", x=np.float32(1), y=np.int64(0))),
    Case("transfer-npz-names-of-two-columns", lambda w: transfer(w, target=str(w.tmp / "t.npz")),
         r"t\.npz: 'y' has shape \(8, 2\); labels are one number \(or name\) per image",
         lambda w: np.savez(w.tmp / "t.npz", x=np.zeros((8, 8, 8)), y=np.array([["a", "b"]] * 8))),
    Case("transfer-set-into-a-value", lambda w: transfer(w, "--set", "augment=1", "--set", "augment.hflip=false"),
         r"--set augment\.hflip: augment is 1, not a group of fields"),
    Case("transfer-set-infinite", lambda w: transfer(w, "--set", "lr=Infinity"),
         r"lr: Input should be a finite number"),
    Case("transfer-arch-config-not-a-mapping",
         lambda w: transfer(w, "--set", 'arch={"family": "resnet", "config": 5}'),
         r"architecture resnet: config is 5, not a mapping of settings"),
    Case("transfer-arch-even-kernel",
         lambda w: transfer(w, "--set", 'arch={"family": "mobilenet", "config": {"stages": [{"width": 8, '
                                        '"kernel": 2}]}}'),
         r"bad mobilenet architecture config .*kernel odd"),
    Case("transfer-resume-damaged-config", lambda w: ["transfer", "--resume", str(w.tmp / "r")],
         r"r/config\.json: cannot read it to resume",
         lambda w: damaged_run_config(w)),
    Case("transfer-only-the-test-share-takes-the-labels", lambda w: transfer(w, target=str(w.tmp / "target")),
         r"class 'cat' has 2 images, and the 20% held out for testing leaves fewer than labels-per-class=2: give "
         r"test images with --test", two_labels_per_class_folder),
    Case("transfer-labels-per-class-over-the-class", lambda w: [*transfer(w), "--labels-per-class", "500"],
         r"class '0' has \d+ training images, fewer than labels-per-class=500"),
    Case("transfer-unknown-arch", lambda w: [*transfer(w), "--arch", "resnet_xxl"],
         r"unknown architecture 'resnet_xxl'; choose one of \[.*'resnet_xs'"),
    Case("transfer-arch-json-not-json", lambda w: [*transfer(w), "--arch", str(w.tmp / "arch.json")],
         r"cannot read architecture file .*arch\.json", lambda w: (w.tmp / "arch.json").write_text("{oops")),
    Case("transfer-set-wrong-type", lambda w: transfer(w, "--set", "finetune_steps=many"),
         r"finetune_steps: Input should be a valid integer"),
    Case("transfer-set-without-value", lambda w: transfer(w, "--set", "finetune_steps"),
         r"--set takes key=value, got 'finetune_steps'"),
    Case("transfer-out-over-a-finished-run", lambda w: [*transfer(w), "--out", str(w.run)],
         r"already holds a run; pass --resume", keep=lambda w: [w.run]),
    Case("transfer-resume-with-a-bad-set", lambda w: ["transfer", "--resume", str(w.run), "--set", "seed=x"],
         r"seed: Input should be a valid integer", keep=lambda w: [w.run]),
    # ---- source train / inspect / pack
    Case("source-train-missing-data",
         lambda w: ["source", "train", "--data", str(w.tmp / "nodata"), "--out", str(w.tmp / "b")],
         r"dataset '.*nodata' not found"),
    Case("source-train-over-a-run", lambda w: ["source", "train", "--data", DIGITS, "--out", str(w.run)],
         r"exists and is not a source bundle; refusing to replace it", keep=lambda w: [w.run]),
    Case("inspect-manifest-not-json", lambda w: inspect(w, w.tmp / "src"),
         r"manifest\.json: manifest is not valid JSON",
         lambda w: (w.copy_bundle() / "manifest.json").write_text("{oops"), keep=lambda w: [w.grid]),
    Case("inspect-unsupported-version", lambda w: inspect(w, w.tmp / "src"),
         r"bundle format version 99 is not supported", lambda w: w.manifest(w.copy_bundle(), version=99),
         keep=lambda w: [w.grid]),
    Case("inspect-manifest-without-classes", lambda w: inspect(w, w.tmp / "src"), r"classes: Field required",
         lambda w: w.manifest(w.copy_bundle(), drop="classes"),
         keep=lambda w: [w.grid]),
    Case("inspect-tampered-file", lambda w: inspect(w, w.tmp / "src"),
         r"generator\.onnx does not match its sha256 in the manifest", tamper, keep=lambda w: [w.grid]),
    Case("inspect-unlisted-extra-file", lambda w: inspect(w, w.tmp / "src"),
         r"notes\.txt is not covered by the manifest", lambda w: (w.copy_bundle() / "notes.txt").write_text("hi"),
         keep=lambda w: [w.grid]),
    Case("inspect-unknown-trusted-key-path",
         lambda w: inspect(w, w.bundle, "--trusted-key", str(w.tmp / "nokey.pub")), r"nokey\.pub: no such key file",
         keep=lambda w: [w.grid]),
    Case("inspect-trusted-key-not-the-signer",
         lambda w: inspect(w, w.tmp / "src", "--trusted-key", str(w.tmp / "other.pub")),
         r"signed by key \w+, which is not trusted", signed_by_one_key, keep=lambda w: [w.grid]),
    Case("pack-missing-onnx", lambda w: [*pack(w), "--generator", str(w.tmp / "G.onnx")],
         r"G\.onnx: no such ONNX file"),
    Case("pack-not-onnx", lambda w: [*pack(w), "--generator", str(w.tmp / "G.onnx")],
         r"G\.onnx: not a loadable ONNX model", lambda w: (w.tmp / "G.onnx").write_text("hello")),
    Case("pack-pt2-without-trust-code", lambda w: [*pack(w), "--generator", str(w.tmp / "G.pt2")],
         r"G\.pt2: loading a \.pt2 program unpickles and can run code; pass --trust-code",
         lambda w: (w.tmp / "G.pt2").write_bytes(b"PK")),
    Case("pack-output-range-not-numbers", lambda w: pack(w, "--output-range", "0,x"),
         r"--output-range '0,x': expected two numbers"),
    Case("pack-input-range-falling", lambda w: pack(w, "--input-range", "1,0"), r"output range 1\.0,0\.0 must rise"),
    Case("pack-mean-not-numbers", lambda w: pack(w, "--mean", "0.5,x"), r"--mean '0\.5,x': expected comma-separated"),
    Case("pack-classes-do-not-match-g-over-a-bundle", lambda w: pack(w, classes="a,b"),
         r"input 'p' takes 5 values per image, but --classes gives 2",
         lambda w: shutil.copytree(w.bundle, w.tmp / "packed"), keep=lambda w: [w.tmp / "packed"]),
    # ---- search and device profiles
    Case("search-unknown-device", lambda w: search(w, "--device", "tpu9"),
         r"unknown device 'tpu9'; choose one of \[.*'x86-cpu'\]"),
    Case("search-profile-bad-field", lambda w: search(w, "--device", str(bad_profile(w))),
         r"board\.yaml: threads: Input should be a valid integer"),
    Case("search-profile-yaml-syntax", lambda w: search(w, "--device", str(w.tmp / "board.yaml")),
         r"cannot read device profile .*board\.yaml: .* at line 2, column \d+",
         lambda w: (w.tmp / "board.yaml").write_text("name: board\n  budgets: [\n")),
    Case("search-unknown-strategy", lambda w: search(w, "--strategy", "grid"),
         r"strategy: Input should be 'evolution', 'random' or 'tpe'"),
    Case("search-validation-split-too-large",
         lambda w: search(w, "--labels-per-class", "100", "--val-per-class", "100"),
         r"validation split: class '0' has \d+ training images, fewer than labels-per-class=100"),
    Case("search-unknown-field-in-a-list-item",
         lambda w: search(w, "--set", 'space.stages=[{"widths": [8], "wdiths": [8]}]'),
         r"unknown field 'space\.stages\.0\.wdiths'; allowed: \['depths', 'expands', 'kernels', 'se', 'stride', "
         r"'widths'\]"),
    Case("search-negative-space-width", lambda w: search(w, "--set", "space.stems=[-8, 8]"),
         r"space\.stems\.0: Input should be greater than 0"),
    Case("search-device-name-too-long", lambda w: search(w, "--device", "d" * 300), r"unknown device 'd{300}'"),
    Case("search-resume-nothing", lambda w: ["search", "--resume", str(w.tmp / "none")], r"none: nothing to resume"),
    Case("calibrate-nothing-listens",
         lambda w: ["devices", "calibrate", "x86-cpu", "--host", "nobody@127.0.0.1", "--port", str(w.closed_port),
                    "--out", str(w.tmp / "cal"), "--probes", "6", "--repeats", "1", "--ssh-option", "BatchMode=yes"],
         r"timing over ssh failed \(exit 255\): .*Connection refused"),
    # ---- export, bench, deploy
    Case("export-folder-without-a-model", lambda w: ["export", str(w.tmp), "--out", str(w.tmp / "e")],
         r"no model\.pt, so nothing to export"),
    Case("export-unknown-format-over-a-bundle",
         lambda w: ["export", str(w.run), "--formats", "onnx,tflite", "--out", str(w.dist)],
         r"unknown format\(s\) \['tflite'\]", keep=lambda w: [w.dist]),
    Case("export-bad-profile-over-a-bundle",
         lambda w: ["export", str(w.run), "--device", str(bad_profile(w)), "--out", str(w.dist)],
         r"board\.yaml: threads: Input should be a valid integer", keep=lambda w: [w.dist]),
    Case("export-missing-calibration-data-over-a-bundle",
         lambda w: ["export", str(w.run), "--formats", "onnx,int8", "--calibration-data", str(w.tmp / "nope"),
                    "--bench-runs", "0", "--out", str(w.dist)],
         r"dataset '.*nope' not found", keep=lambda w: [w.dist]),
    Case("bench-a-run-not-a-bundle", lambda w: ["bench", str(w.run)], r"not an export bundle \(no manifest\.json\)"),
    Case("bench-tampered-bundle", lambda w: ["bench", str(w.tmp / "b"), "--runs", "1"],
         r"labels\.txt: sha256 differs from the manifest",
         lambda w: shutil.copytree(w.dist, w.tmp / "b") and (w.tmp / "b" / "labels.txt").write_text("x\n")),
    Case("bench-manifest-not-an-object", lambda w: ["bench", str(w.tmp / "b"), "--runs", "1"],
         r"manifest\.json: not a JSON object",
         lambda w: bundle_copy(w, lambda b: (b / "manifest.json").write_text("[]"))),
    Case("bench-manifest-without-preprocess", lambda w: ["bench", str(w.tmp / "b"), "--runs", "1"],
         r"manifest\.json: lacks preprocess",
         lambda w: bundle_copy(w, lambda b: w.manifest(b, drop="preprocess"))),
    Case("bench-manifest-files-not-a-mapping", lambda w: ["bench", str(w.tmp / "b"), "--runs", "1"],
         r"manifest\.json's files is not a mapping",
         lambda w: bundle_copy(w, lambda b: w.manifest(b, files=None))),
    Case("export-model-pt-not-a-dict", lambda w: ["export", str(w.tmp / "r"), "--out", str(w.tmp / "e")],
         r"model\.pt: not an edgeppt model \(holds a Tensor, not a dict\)",
         lambda w: model_file(w, torch.zeros(3))),
    Case("export-out-cannot-be-written",
         lambda w: ["export", str(w.run), "--formats", "onnx", "--out", "/proc/edgeppt-dist"],
         r"cannot write /proc/edgeppt-dist: ", keep=lambda w: [w.run]),
    Case("deploy-nothing-listens", lambda w: deploy(w, w.closed_port), r"copying to .* failed .*Connection refused",
         process=True),
    Case("deploy-host-drops-the-connection", lambda w: deploy(w, w.drop_port),
         r"copying to .* failed .*Connection (closed|reset)"),
    Case("deploy-wrong-key", ssh_wrong_key, r"copying to .* failed \(exit 255\): .*Permission denied", sshd=True),
    # ---- pipeline.yaml and `edgeppt run`
    Case("run-yaml-syntax", lambda w: ["run", str(w.tmp / "p.yaml"), "--out", str(w.pipeline)],
         r"cannot read config .*p\.yaml: .* at line 2, column \d+",
         lambda w: (w.tmp / "p.yaml").write_text("source: x\n target: [\n"), keep=pipeline_outputs, process=True),
    Case("run-unknown-key", lambda w: ["run", str(w.pipeline_config(transfr={})), "--out", str(w.pipeline)],
         r"unknown field 'transfr'; allowed: \[.*'transfer'", keep=pipeline_outputs),
    Case("run-wrong-type", lambda w: ["run", str(w.pipeline_config(labels_per_class="four")), "--out", str(w.pipeline)],
         r"labels_per_class: Input should be a valid integer", keep=pipeline_outputs),
    Case("run-not-a-mapping", lambda w: ["run", str(w.tmp / "p.yaml"), "--out", str(w.pipeline)],
         r"p\.yaml: a config is a mapping of fields, not a list", lambda w: (w.tmp / "p.yaml").write_text("- a\n"),
         keep=pipeline_outputs),
    Case("run-yaml-grants-trust", lambda w: ["run", str(w.pipeline_config(trust_code=True)), "--out", str(w.pipeline)],
         r"trust_code are not read from a config file .*--trust-code", keep=lambda w: [w.pipeline]),
    Case("transfer-yaml-grants-trust", lambda w: ["transfer", "--config", str(w.tmp / "t.yaml"), "--out",
                                                  str(w.tmp / "t")],
         r"t\.yaml: trusted_keys are not read from a config file", setup=lambda w: (w.tmp / "t.yaml").write_text(
             f"target: {DIGITS}\ntrusted_keys: [{w.tmp / 'theirs.pub'}]\n")),
    Case("run-unknown-device", lambda w: ["run", str(w.pipeline_config(device="tpu9")), "--out", str(w.pipeline)],
         r"device: .*unknown device 'tpu9'", keep=pipeline_outputs),
    Case("run-profile-bad-field",
         lambda w: ["run", str(w.pipeline_config(device=str(bad_profile(w)))), "--out", str(w.pipeline)],
         r"board\.yaml: threads: Input should be a valid integer", keep=pipeline_outputs),
    Case("run-one-class-over-a-run", lambda w: ["run", str(w.pipeline_config(target="digits:0")), "--out",
                                                str(w.pipeline), "--quiet"],
         r"digits:0: a classifier needs at least two classes", keep=pipeline_outputs),
    Case("run-unknown-arch-over-a-run",
         lambda w: ["run", str(w.pipeline_config(transfer={**w.pipeline_yaml["transfer"], "arch": "resnet_zz"})),
                    "--out", str(w.pipeline), "--quiet"],
         r"unknown architecture 'resnet_zz'", keep=pipeline_outputs),
    Case("run-remote-search-without-workers",
         lambda w: ["run", str(w.pipeline_config(search={"enabled": True, "engine": "remote"})), "--out",
                    str(w.pipeline)],
         r"pipeline\.yaml search: .*engine remote needs at least one SSH worker", keep=pipeline_outputs),
    Case("run-remote-worker-user-is-an-ssh-option",
         lambda w: ["run", str(w.pipeline_config(search={"enabled": True, "engine": "remote", "workers": [
             {"host": "127.0.0.1", "user": "-oProxyCommand=touch pwned"}]})), "--out", str(w.pipeline)],
         r"search\.workers\.0\.user: .*'-oProxyCommand=touch pwned' is not a user name", keep=pipeline_outputs),
    Case("run-profile-not-utf8", lambda w: ["run", str(w.pipeline_config(device=str(w.tmp / "board.yaml"))), "--out",
                                            str(w.pipeline)],
         r"cannot read device profile .*board\.yaml: .*codec can't decode",
         lambda w: (w.tmp / "board.yaml").write_bytes(b"\xff\xfename: board\n"), keep=pipeline_outputs),
    Case("run-unknown-until-stage",
         lambda w: ["run", str(w.pipeline_config()), "--out", str(w.pipeline), "--until", "trasnfer"],
         r"unknown stage 'trasnfer'; choose one of", keep=pipeline_outputs),
    # ---- the wizard's uploads (the functions its upload widgets call), each over an earlier good upload
    Case("upload-not-a-zip", None, r"refused: not a zip archive", good_upload, keep=lambda w: [w.tmp / "upload"],
         call=lambda w: extract_image_folders(b"PK-but-not-really", w.tmp / "upload")),
    Case("upload-path-traversal", None, r"refused: '\.\./evil/0\.png' points outside the archive", good_upload,
         keep=lambda w: [w.tmp / "upload"],
         call=lambda w: extract_image_folders(make_zip({**GOOD_IMAGES, "../evil/0.png": png_bytes()}),
                                              w.tmp / "upload")),
    Case("upload-executable-file", None, r"refused: 'dog/run' is not an image", good_upload,
         keep=lambda w: [w.tmp / "upload"],
         call=lambda w: extract_image_folders(make_zip({**GOOD_IMAGES, "dog/run": b"\x7fELF"}, mode=0o100755),
                                              w.tmp / "upload")),
    Case("upload-one-class-folder", None, r"refused: found 1 class folder\(s\)", good_upload,
         keep=lambda w: [w.tmp / "upload"],
         call=lambda w: extract_image_folders(make_zip({"cat/0.png": png_bytes()}), w.tmp / "upload")),
    Case("upload-tampered-bundle-over-a-good-one", None, r"refused: .*generator\.onnx does not match its sha256",
         good_bundle_upload, keep=lambda w: [w.tmp / "upload"],
         call=lambda w: extract_bundle(make_zip({f"tiny/{p.name}": p.read_bytes() + (b"x" if p.name == "generator.onnx"
                                                                                     else b"")
                                                 for p in w.bundle.iterdir() if p.is_file()}), w.tmp / "upload")),
    Case("upload-script-in-a-bundle", None, r"refused: 'tiny/hook\.py' is not a bundle file", good_bundle_upload,
         keep=lambda w: [w.tmp / "upload"],
         call=lambda w: extract_bundle(make_zip({"tiny/manifest.json": b"{}", "tiny/hook.py": b"import os"}),
                                       w.tmp / "upload")),
]


# ---------------------------------------------------------------- the good outputs, made once
def _listening(handler: Callable[[socket.socket], None] | None) -> Iterator[int]:
    """A port on 127.0.0.1: with a handler, each connection is handed to it; without, nothing listens there."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    if handler is None:
        srv.close()
        yield port
        return
    srv.listen()

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            handler(conn)

    threading.Thread(target=serve, daemon=True).start()
    yield port
    srv.close()


@pytest.fixture(scope="module")
def good(tiny_bundle, tmp_path_factory) -> Iterator[dict]:
    root = tmp_path_factory.mktemp("good")
    runner = CliRunner()

    def ok(argv: list[str]) -> None:
        res = runner.invoke(app, argv)
        assert res.exit_code == 0, res.output

    ok(["transfer", "--source", str(tiny_bundle), "--target", DIGITS, "--method", "scratch", "--arch", "resnet_xs",
        "--labels-per-class", "3", "--out", str(root / "run"), "--quiet", "--set", "finetune_steps=3",
        "--set", "threads=1"])
    ok(["export", str(root / "run"), "--formats", "onnx", "--bench-runs", "0", "--out", str(root / "dist")])
    ok(["source", "inspect", str(tiny_bundle), "--out", str(root / "grid.png"), "--per-class", "2"])
    raw = {"source": str(tiny_bundle), "target": DIGITS, "labels_per_class": 3, "threads": 1,
           "search": {"enabled": False},
           "transfer": {"arch": "resnet_xs", "method": "scratch", "finetune_steps": 3},
           "export": {"formats": ["onnx"], "bench_runs": 0}}
    (root / "pipeline.yaml").write_text(yaml.safe_dump(raw))
    ok(["run", str(root / "pipeline.yaml"), "--out", str(root / "pipeline"), "--quiet"])
    closed = _listening(None)
    drop = _listening(lambda conn: conn.close())
    yield {"bundle": Path(tiny_bundle), "run": root / "run", "dist": root / "dist", "pipeline": root / "pipeline",
           "pipeline_yaml": raw, "grid": root / "grid.png", "closed_port": next(closed), "drop_port": next(drop)}
    for gen in (closed, drop):
        next(gen, None)


def snapshot(paths: list[Path]) -> dict[str, str]:
    """sha256 of every file under the given paths (files or folders)."""
    files = [q for p in paths for q in ([p] if p.is_file() else sorted(p.rglob("*"))) if q.is_file()]
    return {str(f): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def invoke(case: Case, w: World) -> tuple[int, str]:
    """Exit code and everything printed (stdout and stderr together)."""
    if case.call is not None:
        try:
            case.call(w)
        except EdgepptError as e:
            return 2, f"error: {e}"  # the wizard shows the message as it is
        return 0, ""
    assert case.argv is not None
    argv = case.argv(w)
    if case.process:
        r = subprocess.run([sys.executable, "-m", "edgeppt.cli", *argv], capture_output=True, text=True, timeout=120)
        return r.returncode, r.stdout + r.stderr
    res = CliRunner().invoke(app, argv)
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        import traceback

        return 1, res.output + "".join(traceback.format_exception(res.exception))
    return res.exit_code, res.output


def test_the_corpus_covers_every_entry_point(tmp_path):
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)) and len(CASES) >= 30
    # Paths are enough to read a case's command and what it keeps (a command line may write its config file).
    w = World(tmp_path, *[tmp_path / n for n in ("b", "r", "d", "p")], {"transfer": {}}, tmp_path / "g", 1, 2)
    words = {c.argv(w)[0] for c in CASES if c.argv is not None and not c.sshd}
    assert {"transfer", "source", "search", "devices", "export", "bench", "deploy", "run"} <= words
    assert sum(c.call is not None for c in CASES) >= 4  # the wizard's uploads
    assert sum(bool(c.keep(w)) for c in CASES) >= 10  # re-runs over an earlier good output


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_and_loses_nothing(case: Case, good: dict, tmp_path: Path,
                                                 request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("EDGEPPT_CONFIG_DIR", str(tmp_path / "config"))  # no user trusted keys or profiles
    w = World(tmp_path, **good)
    if case.sshd:
        w.ssh = request.getfixturevalue("sshd")
    case.setup(w)
    before = snapshot(case.keep(w))
    assert before or not case.keep(w), "the earlier output to keep was not made"
    code, output = invoke(case, w)
    assert "Traceback" not in output, output
    assert code == case.code, output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output
    assert re.search(case.error, errors[0]), (case.error, errors[0])
    assert snapshot(case.keep(w)) == before, "an earlier output was changed"
