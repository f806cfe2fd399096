"""RGB bundles at 32 and 64 px: source train, pack, transfer and export on synthetic colour images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from edgeppt.bundle import load_bundle
from edgeppt.bundle_write import export_onnx
from edgeppt.config import SourceTrainConfig, TransferConfig
from edgeppt.export import export_run
from edgeppt.models import create_model
from edgeppt.source import Generator, SourceClassifier, train_source
from edgeppt.source.pack import PackConfig, pack
from edgeppt.transfer.run import run_transfer

COLOURS = {"red": (1.0, 0.1, 0.1), "green": (0.1, 1.0, 0.1), "blue": (0.1, 0.1, 1.0), "yellow": (1.0, 1.0, 0.1)}


def colour_folders(root: Path, classes: list[str], side: int, per_class: int = 24, seed: int = 0) -> Path:
    """Class folders of RGB PNGs: a coloured square at a random place on noise, one colour per class."""
    rng = np.random.default_rng(seed)
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            a = rng.uniform(0, 0.3, (side, side, 3))
            s = side // 2
            x0, y0 = rng.integers(0, side - s, 2)
            a[y0:y0 + s, x0:x0 + s] = COLOURS[name]
            Image.fromarray((a * 255).astype(np.uint8), "RGB").save(root / name / f"{i}.png")
    return root


@pytest.mark.parametrize("side", [32, 64])
def test_rgb_source_train_transfer_and_export(tmp_path: Path, side: int):
    src = colour_folders(tmp_path / "src", ["red", "green", "blue"], side)
    bundle = train_source(SourceTrainConfig(
        data=str(src), out=tmp_path / "bundle", latent_dim=8, gen_channels=8, disc_channels=8, batch_size=8,
        classifier_steps=3, gan_steps=3, checkpoint_every=10), progress=False)
    b = load_bundle(bundle)
    assert b.image_shape == (3, side, side)
    assert b.generate(torch.eye(3)).shape == (3, 3, side, side)
    target = colour_folders(tmp_path / "target", ["yellow", "red"], side, per_class=12, seed=1)
    cfg = TransferConfig(source=bundle, target=str(target), method="pp+pssl", arch="resnet_xs", labels_per_class=3,
                         pretrain_steps=3, finetune_steps=3, pretrain_batch=8, batch_size=8,
                         eval_every=100, checkpoint_every=100, pssl={"pool_size": 16, "real_steps": 2})
    from edgeppt.runs import peak_rss_mib

    before = peak_rss_mib()
    report = run_transfer(cfg, tmp_path / "run", progress=False)
    after = peak_rss_mib()
    assert report["model"]["in_chans"] == 3 and report["model"]["image_size"] == side
    assert before <= after and report["peak_rss_mib"] == pytest.approx(after, abs=1.0)  # the peak as the run ended
    assert report["source"]["runtime"] == "onnx"
    manifest = export_run(tmp_path / "run", tmp_path / "dist", formats=["onnx"], bench_runs=0, log=lambda s: None)
    s = ort.InferenceSession(str(tmp_path / "dist" / manifest["artifacts"]["onnx"]["file"]))
    assert s.get_inputs()[0].shape[1:] == [3, side, side]


def test_pack_an_rgb_generator_at_64_px_with_imagenet_normalisation(tmp_path: Path):
    torch.manual_seed(0)
    g = Generator(16, 4, 8, (3, 64, 64))
    c = SourceClassifier(create_model("resnet_xs", 4, 3))
    export_onnx(g, (torch.randn(2, 16), torch.softmax(torch.randn(2, 4), 1)), ["z", "p"], ["image"],
                tmp_path / "G.onnx")
    out, summary = pack(PackConfig(generator=str(tmp_path / "G.onnx"), classifier="-", classes=list("abcd"),
                                   out=tmp_path / "b", mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
                        c=c)
    b = load_bundle(out)
    assert b.image_shape == (3, 64, 64) and b.manifest.classifier.mean == [0.485, 0.456, 0.406]
    x = b.generate(torch.eye(4))
    with torch.no_grad():
        mean = torch.tensor([0.485, 0.456, 0.406])[None, :, None, None]
        std = torch.tensor([0.229, 0.224, 0.225])[None, :, None, None]
        assert torch.allclose(b.classify(x)[0], c((x - mean) / std)[0], atol=1e-4)
    assert summary["num_features"] == b.manifest.classifier.num_features


def test_a_colour_target_stays_in_colour_with_a_grayscale_bundle(tmp_path: Path, tiny_bundle):
    """Red, green and blue squares have the same gray level: only a network that sees colour can tell them apart.
    The bundle is grayscale (1x8x8); its samples are widened to colour for PP and pools, and C reads the target in
    gray."""
    from edgeppt.config import SearchConfig
    from edgeppt.search.proxy import prepare

    target = colour_folders(tmp_path / "target", ["red", "green", "blue"], 8, per_class=20, seed=2)
    cfg = TransferConfig(source=tiny_bundle, target=str(target), labels_per_class=4, pretrain_steps=20,
                         pretrain_batch=32, finetune_steps=80, batch_size=12, eval_every=10**6,
                         checkpoint_every=10**6, pssl={"pool_size": 32, "steps": 10},
                         augment={"hflip": True, "max_shift": 0.0})
    for method in ("auto", "kd", "pp+pssl"):
        report = run_transfer(cfg.model_copy(update={"method": method}), tmp_path / method, progress=False)
        assert report["model"]["in_chans"] == 3, method
        assert report["test_accuracy"] > 0.8, (method, report["per_class_accuracy"])  # chance 1/3, gray is blind
    manifest = export_run(tmp_path / "auto", tmp_path / "dist", formats=["onnx", "int8"], source=tiny_bundle,
                          bench_runs=0, log=lambda s: None)
    s = ort.InferenceSession(str(tmp_path / "dist" / manifest["artifacts"]["int8"]["file"]))
    assert s.get_inputs()[0].shape[1:] == [3, 8, 8]
    proxy = prepare(SearchConfig(target=str(target), source=tiny_bundle, labels_per_class=4, val_per_class=0,
                                 folds=2))  # the search ranks on the same colour images, PP on widened samples
    assert proxy.in_shape == (3, 8, 8) and proxy.pool is not None and proxy.pool[0].shape[1] == 3
    from edgeppt.search import run_search  # and the search, whose C is costed at its own (gray) input

    s = run_search(SearchConfig(target=str(target), source=tiny_bundle, labels_per_class=4, val_per_class=0,
                                folds=2, strategy="random", trials=1, latency_warmup=1, latency_repeats=3,
                                proxy={"pretrain_steps": 0, "finetune_steps": 4, "batch_size": 8}),
                   tmp_path / "search", progress=False)
    assert s["source_classifier"]["macs"] > 0 and s["source_classifier"]["latency_ms"] > 0
