"""The source stage: GAN shapes, bundle round trip and refusals, the preview grid, checkpoint resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import ctrl_c_after_checkpoint
from PIL import Image

import edgeppt.source.train as st
from edgeppt.bundle import GENERATOR_FILE, load_bundle
from edgeppt.bundle_write import save_bundle
from edgeppt.config import SourceTrainConfig
from edgeppt.errors import EdgepptError
from edgeppt.models import create_model
from edgeppt.runs import CHECKPOINT_FILE, sha256_file
from edgeppt.source import Discriminator, Generator, SourceClassifier, sample_grid, train_source

TINY = dict(data="digits", latent_dim=8, gen_channels=8, disc_channels=8, batch_size=16, classifier_arch="resnet_xs",
            classifier_steps=4, gan_steps=6, checkpoint_every=2, hflip=False)


def tiny_cfg(out: Path, **kw) -> SourceTrainConfig:
    return SourceTrainConfig(out=out, **{**TINY, **kw})


def tiny_bundle(path: Path, latent: int = 8, k: int = 3, shape: tuple[int, int, int] = (1, 8, 8)) -> Path:
    torch.manual_seed(0)
    g = Generator(latent, k, 8, shape)
    c = SourceClassifier(create_model("resnet_xs", k, shape[0]))
    return save_bundle(path, g, c, [f"c{i}" for i in range(k)], latent, shape)


def rehash(path: Path) -> None:
    m = json.loads((path / "manifest.json").read_text())
    m["files"] = {f: sha256_file(path / f) for f in m["files"]}
    (path / "manifest.json").write_text(json.dumps(m))


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    return train_source(tiny_cfg(tmp_path_factory.mktemp("src") / "bundle"), progress=False)


def test_gan_shapes_and_range():
    for shape in [(1, 28, 28), (3, 32, 32), (1, 8, 8)]:
        g, d = Generator(16, 4, 8, shape), Discriminator(4, 8, shape)
        x = g(torch.randn(5, 16), torch.softmax(torch.randn(5, 4), 1))
        assert x.shape == (5, *shape) and 0 <= x.min() and x.max() <= 1
        assert d(x, torch.eye(4)[torch.arange(5) % 4]).shape == (5,)
    with pytest.raises(ValueError):
        Generator(16, 4, 8, (1, 30, 30))


def test_train_writes_bundle(trained: Path):
    b = load_bundle(trained)
    assert b.classes == [str(i) for i in range(10)] and b.image_shape == (1, 8, 8) and b.latent_dim == 8
    info = b.manifest.info
    # the recorded held-out accuracy is the shipped classifier's on the same split, recomputed here
    from edgeppt.data import load_dataset, train_test_split
    cfg = tiny_cfg(trained)
    _, test = train_test_split(load_dataset(cfg.data, cfg.image_size), cfg.test_fraction, cfg.seed)
    logits, _ = b.classify(test.x)
    assert info["classifier_test_size"] == len(test)
    # (recorded from the torch classifier, recomputed from the shipped ONNX one: one image may fall either way)
    assert info["classifier_test_accuracy"] == pytest.approx((logits.argmax(1) == test.y).float().mean().item(),
                                                             abs=1 / len(test) + 1e-4)
    assert info["command"] is None  # made through the API; the CLI's line is checked in test_cli
    assert "Made through the Python API" in (trained / "README.md").read_text()
    assert set(b.manifest.files) == {"generator.onnx", "classifier.onnx", "samples.png", "README.md"}
    assert (trained / "samples.png").is_file() and (trained / "README.md").is_file()
    assert not st.work_dir(trained).exists()  # the work dir goes once the bundle is written
    logits, feats = b.classify(b.sample_classes(torch.arange(10)))
    assert logits.shape == (10, 10) and feats.ndim == 2


def test_out_that_is_not_a_bundle_refused(tmp_path: Path):
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(EdgepptError, match="not a source bundle"):
        train_source(tiny_cfg(tmp_path), progress=False)
    assert (tmp_path / "notes.txt").exists()


def test_save_load_identical(tmp_path: Path):
    torch.manual_seed(0)
    g = Generator(8, 3, 8, (1, 8, 8)).eval()
    c = SourceClassifier(create_model("resnet_xs", 3, 1)).eval()
    b = load_bundle(save_bundle(tmp_path / "b", g, c, ["a", "b", "c"], 8, (1, 8, 8)))
    z, p = torch.randn(7, 8), torch.softmax(torch.randn(7, 3), 1)
    x = torch.rand(7, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(b.generate(p, z), g(z, p), atol=1e-6)
        assert torch.allclose(b.classify(x)[0], c(x)[0], atol=1e-5)


def test_tampered_generator_refused(tmp_path: Path):
    path = tiny_bundle(tmp_path / "b")
    with open(path / GENERATOR_FILE, "ab") as f:
        f.write(b"\0")
    with pytest.raises(EdgepptError, match="sha256"):
        load_bundle(path)


def test_wrong_generator_signature_refused(tmp_path: Path):
    a, b = tiny_bundle(tmp_path / "a", latent=8), tiny_bundle(tmp_path / "b", latent=12)
    shutil.copy(b / GENERATOR_FILE, a / GENERATOR_FILE)  # a generator for z of size 12 in a bundle that says 8
    rehash(a)
    with pytest.raises(EdgepptError, match=r"generator does not take z \(8\)"):
        load_bundle(a)


def test_manifest_class_count_mismatch_refused(tmp_path: Path):
    path = tiny_bundle(tmp_path / "b", k=3)
    m = json.loads((path / "manifest.json").read_text())
    m["classes"] = ["x", "y", "z", "w"]
    (path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(EdgepptError, match=r"class label for 4 classes"):
        load_bundle(path)


def test_conditioning_and_soft_labels(trained: Path):
    b = load_bundle(trained)
    z = torch.randn(4, b.latent_dim, generator=torch.Generator().manual_seed(1))
    eye = torch.eye(b.num_classes)
    xa, xb = b.generate(eye[0].expand(4, -1), z), b.generate(eye[1].expand(4, -1), z)
    assert not torch.allclose(xa, xb)  # the class changes the image
    mix = b.generate((0.5 * eye[0] + 0.5 * eye[1]).expand(4, -1), z)
    assert mix.shape == xa.shape and torch.isfinite(mix).all() and 0 <= mix.min() and mix.max() <= 1
    assert not torch.allclose(mix, xa) and not torch.allclose(mix, xb)


def test_sample_grid(trained: Path, tmp_path: Path):
    png = sample_grid(trained, tmp_path / "grid.png", per_class=4, interpolate=("3", "8"))
    with Image.open(png) as im:
        assert im.height == 11 * (8 * 8 + 2)  # 10 class rows + the interpolation row, 64 px tiles
    with pytest.raises(EdgepptError, match="not in this bundle"):
        sample_grid(trained, tmp_path / "bad.png", interpolate=("3", "cat"))


def _gan_checkpoint(out: Path) -> dict:
    return torch.load(st.work_dir(out) / "gan" / CHECKPOINT_FILE, weights_only=True)


def test_resume_after_interruption(tmp_path: Path, monkeypatch):
    def run(out: Path, stop: int, **kw) -> dict:  # Ctrl-C right after the GAN's checkpoint at step `stop`
        ctrl_c_after_checkpoint(monkeypatch, lambda phase, step: phase == "gan" and step == stop)
        with pytest.raises(KeyboardInterrupt):
            train_source(tiny_cfg(out, **kw), progress=False)
        monkeypatch.undo()
        return _gan_checkpoint(out)

    ref = run(tmp_path / "ref", 6)  # the whole run uninterrupted, stopped before export
    ck = run(tmp_path / "b", 2)  # classifier (4 steps) done, 2 GAN steps done
    assert ck["step"] == 2
    assert torch.load(st.work_dir(tmp_path / "b") / "classifier" / CHECKPOINT_FILE, weights_only=True)["step"] == 4
    with pytest.raises(EdgepptError, match="different config"):
        train_source(tiny_cfg(tmp_path / "b", latent_dim=9), progress=False)
    ck = run(tmp_path / "b", 6)  # resumed from step 2
    assert ck["step"] == 6
    # resuming changes nothing: the same draws, optimiser and EMA state; G (its EMA), D and D's Adam state
    for part in ("model", "objective", "ema"):
        assert all(torch.equal(ck[part][n], ref[part][n]) for n in ref[part] if torch.is_tensor(ref[part][n])), part
    for adam in (lambda c: c["optimizer"]["state"], lambda c: c["objective"]["_extra_state"]["d_opt"]["state"]):
        a, b = adam(ck), adam(ref)  # G's Adam state, then D's: every moment equal
        assert a and a.keys() == b.keys()
        assert all(torch.equal(torch.as_tensor(a[i][k]), torch.as_tensor(b[i][k])) for i in a for k in a[i])


def test_more_gan_steps_continue_and_fewer_than_trained_are_refused(tmp_path: Path, monkeypatch):
    """Resumed with more GAN steps, the GAN trains on; with fewer than it has trained, it is refused (G's average over
    4 steps cannot be shipped as a 2-step GAN: the bundle's record would contradict its weights)."""
    out = tmp_path / "b"
    ctrl_c_after_checkpoint(monkeypatch, lambda phase, step: phase == "gan" and step == 4)
    with pytest.raises(KeyboardInterrupt):
        train_source(tiny_cfg(out), progress=False)
    monkeypatch.undo()
    with pytest.raises(EdgepptError, match="trained the GAN for 4 steps, more than gan_steps=2"):
        train_source(tiny_cfg(out, gan_steps=2), progress=False)
    b = load_bundle(train_source(tiny_cfg(out, gan_steps=10), progress=False))  # asking for more steps resumes too
    assert b.manifest.info["resumed_from_step"] == 8 and b.manifest.info["config"]["gan_steps"] == 10


def test_nan_loss_stops_and_keeps_checkpoint(tmp_path: Path, monkeypatch):
    out = tmp_path / "b"
    calls = {"n": 0}

    def bad_loss(fake):
        calls["n"] += 1
        return fake.mean() * (float("nan") if calls["n"] > 3 else -1.0)

    monkeypatch.setattr(st, "g_hinge_loss", bad_loss)
    with pytest.raises(EdgepptError, match="the generator's loss became nan .* last good checkpoint"):
        train_source(tiny_cfg(out), progress=False)
    assert _gan_checkpoint(out)["step"] == 2 and not out.exists()


def test_manifest_image_shape_mismatch_refused(tmp_path: Path):
    path = tiny_bundle(tmp_path / "b", shape=(1, 8, 8))
    m = json.loads((path / "manifest.json").read_text())
    m["image_shape"] = [3, 16, 16]
    (path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(EdgepptError,
                       match=r"generator returned shape \(3, 1, 8, 8\), expected \(N, 3, 16, 16\)"):
        load_bundle(path)


def test_uneven_classes_give_the_discriminator_class_balanced_real_batches():
    """Fake labels are uniform over the classes; with 10 images of one class to 100 of another, the real batches
    are drawn class-balanced too (each a class, then one of its images), so a label alone does not say fake."""
    from edgeppt.data import ImageSet

    y = torch.cat([torch.zeros(100, dtype=torch.long), torch.ones(10, dtype=torch.long)])
    x = y.float()[:, None, None, None].expand(-1, 1, 8, 8).clone()  # each image shows its class
    adv = st.Adversarial(ImageSet(x, y, ["common", "rare"]), tiny_cfg(Path("unused"), batch_size=200))
    xs, ys = adv._real(torch.Generator().manual_seed(0))
    assert 0.4 < ys.float().mean() < 0.6 and torch.equal(xs[:, 0, 0, 0], ys.float())  # images stay with labels
    even = ImageSet(x[:20], torch.arange(20) % 2, ["a", "b"])
    assert st.Adversarial(even, tiny_cfg(Path("unused")))._order is None  # even classes: drawn as they come


def test_the_generator_widens_its_first_stages_for_larger_images():
    """Each upsampling halves the width down to channels // 2 at the image: the same network at 28 and 32 px,
    no stages of 16 channels at 64 px and more."""
    def widths(side: int) -> list[int]:
        g = Generator(8, 3, 32, (1, side, side))
        return [conv.out_channels for conv in g.convs]

    assert widths(28) == widths(32) == [32, 16]
    assert widths(64) == [64, 32, 16] and widths(96) == [128, 64, 32, 16]


def test_the_owners_photos_train_at_a_side_a_cpu_can_train(tmp_path: Path):
    """Large photos are read at 64 px (not trained at their own 300), photos of mixed sizes at the median side (a
    multiple of 4), and image_size decides over both."""
    import numpy as np
    from PIL import Image

    from edgeppt.config import SourceTrainConfig
    from edgeppt.source.train import source_data

    rng = np.random.default_rng(0)
    for name, sides in (("big", (300, 300)), ("mixed", (40, 45, 50))):
        for c in ("a", "b"):
            (tmp_path / name / c).mkdir(parents=True)
            for i, s in enumerate(sides):
                Image.fromarray(rng.integers(0, 256, (s, s), dtype=np.uint8)).save(tmp_path / name / c / f"{i}.png")
    cfg = SourceTrainConfig(data=str(tmp_path / "big"), out=tmp_path / "out")
    assert source_data(cfg).shape == (1, 64, 64)
    assert source_data(cfg.model_copy(update={"data": str(tmp_path / "mixed")})).shape == (1, 44, 44)
    assert source_data(cfg.model_copy(update={"image_size": 32})).shape == (1, 32, 32)


def test_a_bundle_of_many_classes_previews_a_spread_of_them_and_a_class_file_may_be_one_line(tmp_path: Path):
    """The preview shows at most GRID_CLASSES_MAX classes, spread over the list (a 1,000-class bundle's was 66,000
    px tall); a --classes file may hold the comma-separated list as the command line does."""
    from edgeppt.bundle import load_bundle
    from edgeppt.source import inspect
    from edgeppt.source.pack import parse_classes

    b = load_bundle(tiny_bundle(tmp_path / "b", k=40))
    rows = inspect.grid_rows(b, per_class=2)
    assert len(rows) == inspect.GRID_CLASSES_MAX + 1 and rows[0][0] == b.classes[0] and rows[-2][0] == b.classes[-1]
    (tmp_path / "classes.txt").write_text("cat, dog,bird\n")
    assert parse_classes(str(tmp_path / "classes.txt")) == ["cat", "dog", "bird"]
