"""Source bundles from the owner's own models: pack from ONNX, .pt2 and a factory, each convention adapter,
signatures (forged, wrong, unknown, missing keys), and .pt2 bundles that would run code."""

from __future__ import annotations

import io
import json
import pickle
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from edgeppt.bundle import load_bundle, read_manifest
from edgeppt.bundle_write import export_onnx
from edgeppt.errors import EdgepptError
from edgeppt.onnxspec import OPSET, external_files
from edgeppt.runs import sha256_file
from edgeppt.signing import keygen
from edgeppt.source.pack import PackConfig, from_bundle, pack

K, LATENT = 3, 6


class OwnerGenerator(nn.Module):
    """An owner's G in other conventions: images in [-1, 1], optionally a class-index input."""

    def __init__(self, index: bool = False, side: int = 8, channels: int = 1):
        super().__init__()
        self.index, self.shape = index, (channels, side, side)
        self.embed = nn.Embedding(K, 8) if index else nn.Linear(K, 8, bias=False)
        self.net = nn.Linear(LATENT + 8, channels * side * side)

    def forward(self, z, y):
        return torch.tanh(self.net(torch.cat([z, self.embed(y)], 1))).view(-1, *self.shape)


class LogitsOnly(nn.Module):
    """An owner's C that expects normalised input at its own resolution and returns logits only."""

    def __init__(self, side: int = 8, channels: int = 1):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(channels * side * side, K))

    def forward(self, x):
        return self.net(x)


def cfg(tmp_path: Path, g: str, c: str, **kw) -> PackConfig:
    return PackConfig(generator=g, classifier=c, classes=["a", "b", "c"], **{"out": tmp_path / "bundle", **kw})


def onnx_pair(tmp_path: Path, index: bool = False, side: int = 8, c_side: int = 8) -> tuple[str, str]:
    torch.manual_seed(0)
    g, c = OwnerGenerator(index, side), LogitsOnly(c_side)
    y = torch.tensor([0, 1]) if index else torch.softmax(torch.randn(2, K), 1)
    export_onnx(g, (torch.randn(2, LATENT), y), ["noise", "label"], ["img"], tmp_path / "G.onnx")
    export_onnx(c, (torch.rand(2, 1, c_side, c_side),), ["x"], ["scores"], tmp_path / "C.onnx")
    return str(tmp_path / "G.onnx"), str(tmp_path / "C.onnx")


def test_pack_from_onnx_applies_the_declared_conventions(tmp_path: Path):
    g, c = onnx_pair(tmp_path)
    out, summary = pack(cfg(tmp_path, g, c, output_range=(-1, 1), mean=[0.5], std=[0.5]))
    b = load_bundle(out)
    m = b.manifest
    assert (m.generator.z_input, m.generator.label_input, m.generator.output) == ("noise", "label", "img")
    assert m.latent.size == LATENT and m.classifier.features is None and m.classifier.num_features == K
    assert set(m.files) == {"generator.onnx", "classifier.onnx", "samples.png", "README.md"}
    assert "channels" not in json.loads((out / "manifest.json").read_text())["classifier"]  # earlier edgeppt reads it
    torch.manual_seed(0)
    owner_g, owner_c = OwnerGenerator(), LogitsOnly()
    z, p = torch.randn(4, LATENT), torch.softmax(torch.randn(4, K), 1)
    x = b.generate(p, z)
    with torch.no_grad():
        assert torch.allclose(x, (owner_g(z, p) + 1) / 2, atol=1e-5)  # [-1, 1] -> [0, 1]
        logits, feats = b.classify(x)
        assert torch.allclose(logits, owner_c((x - 0.5) / 0.5), atol=1e-5)  # C sees its own normalisation
    assert torch.equal(feats, logits)  # a logits-only classifier: the logits serve as features
    assert summary["soft_label_change"] > 0 and summary["num_features"] == K


def test_declared_range_is_checked(tmp_path: Path):
    g, c = onnx_pair(tmp_path)
    with pytest.raises(EdgepptError, match=r"outside the declared --output-range 0.0,1.0"):
        pack(cfg(tmp_path, g, c))  # tanh outputs reach below 0
    assert not (tmp_path / "bundle").exists()  # nothing half-written is left


def test_index_generator_samples_soft_labels_and_resized_classifier(tmp_path: Path):
    g, c = onnx_pair(tmp_path, index=True, side=8, c_side=12)
    out, summary = pack(cfg(tmp_path, g, c, output_range=(-1, 1), input_size=12))
    b = load_bundle(out)
    assert b.manifest.generator.label == "index" and summary["soft_label_change"] is None
    one_hot = b.generate(torch.eye(K)[[1, 1]], torch.zeros(2, LATENT))
    assert torch.allclose(one_hot[0], one_hot[1])  # a one-hot p is a fixed class
    mix = torch.full((400, K), 1 / K)
    x = b.generate(mix, torch.zeros(400, LATENT), generator=torch.Generator().manual_seed(0))
    distinct = {tuple(v.flatten()[:4].round(decimals=4).tolist()) for v in x}
    assert len(distinct) == K  # a uniform p draws every class
    assert b.classify(x[:5])[0].shape == (5, K)  # 8 px images resized to the classifier's 12 px


def test_latent_conventions(tmp_path: Path):
    g, c = onnx_pair(tmp_path)
    b = load_bundle(pack(cfg(tmp_path, g, c, output_range=(-1, 1), latent="uniform"))[0])
    z = b.sample_latents(5000, torch.Generator().manual_seed(0))
    assert z.min() >= -1 and z.max() <= 1 and abs(z.mean()) < 0.05
    b = load_bundle(pack(cfg(tmp_path, g, c, output_range=(-1, 1), truncation=0.5))[0])
    z = b.sample_latents(5000, torch.Generator().manual_seed(0))
    assert z.abs().max() <= 0.5 and z.std() > 0.2


def test_a_generator_that_ignores_soft_labels_is_refused(tmp_path: Path):
    class Deaf(nn.Module):
        def forward(self, z, p):
            return torch.sigmoid(z[:, :1, None, None].expand(-1, 1, 8, 8) + 0 * p.sum(1)[:, None, None, None])

    with pytest.raises(EdgepptError, match="ignores soft labels"):
        pack(cfg(tmp_path, "-", "-", latent_dim=LATENT), g=Deaf(), c=LogitsOnly())


def test_pack_from_a_factory_and_from_pt2(tmp_path: Path, monkeypatch):
    pkg = tmp_path / "ownerpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "models.py").write_text(textwrap.dedent(f"""
        import torch
        from torch import nn

        class G(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear({LATENT} + {K}, 64)
            def forward(self, z, p):
                return torch.sigmoid(self.fc(torch.cat([z, p], 1))).view(-1, 1, 8, 8)

        class C(nn.Module):
            def __init__(self):
                super().__init__()
                self.f = nn.Sequential(nn.Flatten(), nn.Linear(64, 16))
                self.head = nn.Linear(16, {K})
            def forward(self, x):
                f = self.f(x)
                return self.head(f), f

        def make_generator():
            torch.manual_seed(0)
            return G()

        def make_classifier():
            return C()
    """))
    monkeypatch.chdir(tmp_path)
    out, _ = pack(cfg(tmp_path, "ownerpkg.models:make_generator", "ownerpkg.models:make_classifier",
                      latent_dim=LATENT))
    b = load_bundle(out)
    assert b.manifest.classifier.features == "features" and b.manifest.classifier.num_features == 16
    assert b.manifest.info["packed_from"]["generator"] == "ownerpkg.models:make_generator"
    with pytest.raises(EdgepptError, match="cannot import the factory"):
        pack(cfg(tmp_path, "ownerpkg.nothing:make", "ownerpkg.models:make_classifier", latent_dim=LATENT))

    from ownerpkg.models import make_generator
    prog = torch.export.export(make_generator().eval(), (torch.randn(2, LATENT), torch.rand(2, K)),
                               dynamic_shapes=({0: torch.export.Dim("b")}, {0: torch.export.Dim("b")}))
    torch.export.save(prog, tmp_path / "G.pt2")
    with pytest.raises(EdgepptError, match="pass --trust-code"):
        pack(cfg(tmp_path, str(tmp_path / "G.pt2"), "ownerpkg.models:make_classifier", latent_dim=LATENT))
    out, _ = pack(cfg(tmp_path, str(tmp_path / "G.pt2"), "ownerpkg.models:make_classifier", latent_dim=LATENT,
                      trust_code=True))
    z, p = torch.randn(3, LATENT), torch.softmax(torch.randn(3, K), 1)
    with torch.no_grad():
        assert torch.allclose(load_bundle(out).generate(p, z), make_generator()(z, p), atol=1e-5)

    fixed = torch.export.export(make_generator().eval(), (torch.randn(1, LATENT), torch.rand(1, K)))  # batch 1
    torch.export.save(fixed, tmp_path / "G1.pt2")
    with pytest.raises(EdgepptError, match="generator: cannot export the module to ONNX with a free batch"):
        pack(cfg(tmp_path, str(tmp_path / "G1.pt2"), "ownerpkg.models:make_classifier", latent_dim=LATENT,
                 trust_code=True))


class Int32Labels(OwnerGenerator):
    """Keras/tf2onnx's habit: class ids as int32; and G also returns its latents, before the image."""

    def forward(self, z, y):
        return z, super().forward(z, y.long())


def test_owner_graph_conventions_int32_ids_a_second_output_and_bgr_on_gray(tmp_path: Path):
    g, c = onnx_pair(tmp_path)
    export_onnx(Int32Labels(index=True), (torch.randn(2, LATENT), torch.tensor([0, 1], dtype=torch.int32)),
                ["noise", "label"], ["latents", "img"], tmp_path / "G32.onnx")
    out, _ = pack(cfg(tmp_path, str(tmp_path / "G32.onnx"), c, output_range=(-1, 1)))
    b = load_bundle(out)
    assert b.manifest.generator.label == "index" and b.manifest.generator.output == "img"
    assert b.generate(torch.eye(K)).shape == (K, 1, 8, 8)
    with pytest.raises(EdgepptError, match="--channel-order bgr: neither"):
        pack(cfg(tmp_path, g, c, output_range=(-1, 1), channel_order="bgr", out=tmp_path / "bgr"))


# ---------------------------------------------------------------- signatures
@pytest.fixture()
def keys(tmp_path: Path, monkeypatch) -> dict[str, Path]:
    monkeypatch.setenv("EDGEPPT_CONFIG_DIR", str(tmp_path / "config"))  # an empty keyring
    keygen(tmp_path / "owner")
    keygen(tmp_path / "other")
    return {"owner": tmp_path / "owner", "other": tmp_path / "other"}


def signed_bundle(tmp_path: Path, keys: dict[str, Path]) -> Path:
    g, c = onnx_pair(tmp_path)
    return pack(cfg(tmp_path, g, c, output_range=(-1, 1), sign=keys["owner"].with_suffix(".key")))[0]


def test_signed_bundle_verifies_and_names_its_signer(tmp_path: Path, keys):
    out = signed_bundle(tmp_path, keys)
    b = load_bundle(out, trusted_keys=[keys["owner"].with_suffix(".pub")], require_signature=True)
    assert b.provenance.startswith("signed by owner (key ")
    assert load_bundle(out).provenance.startswith("claims an unknown key")  # no key asked for: still loads
    (tmp_path / "config" / "trusted-keys").mkdir(parents=True)
    (tmp_path / "config" / "trusted-keys" / "acme.pub").write_bytes(keys["owner"].with_suffix(".pub").read_bytes())
    assert load_bundle(out).provenance.startswith("signed by acme")  # the keyring names it
    with pytest.raises(EdgepptError, match="not trusted"):  # --trusted-key K: K's signature, not the keyring's
        load_bundle(out, trusted_keys=[keys["other"].with_suffix(".pub")], require_signature=True)


def test_forged_manifest_with_recomputed_hashes_is_refused(tmp_path: Path, keys):
    out = signed_bundle(tmp_path, keys)
    (out / "README.md").write_text("forged")
    m = json.loads((out / "manifest.json").read_text())
    m["files"]["README.md"] = sha256_file(out / "README.md")
    (out / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(EdgepptError, match="altered after it was signed"):
        load_bundle(out, trusted_keys=[keys["owner"].with_suffix(".pub")])
    (out / "signature.json").unlink()  # stripping the signature does not help when a key is required
    with pytest.raises(EdgepptError, match="not signed"):
        load_bundle(out, trusted_keys=[keys["owner"].with_suffix(".pub")], require_signature=True)


def test_a_private_key_is_owner_only_before_it_has_its_name(tmp_path: Path, monkeypatch):
    """The key's bytes are never readable by others, not even in the temporary file renamed into place."""
    import os

    modes: dict[str, int] = {}
    replace = os.replace

    def spy(src, dst):
        modes[Path(dst).suffix] = os.stat(src).st_mode & 0o777
        return replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    keygen(tmp_path / "k")
    assert modes[".key"] == 0o600 and modes[".pub"] != 0o600 and list(modes) == [".pub", ".key"]


def test_wrong_unknown_and_bad_keys(tmp_path: Path, keys):
    out = signed_bundle(tmp_path, keys)
    with pytest.raises(EdgepptError, match="which is not trusted"):
        load_bundle(out, trusted_keys=[keys["other"].with_suffix(".pub")], require_signature=True)
    with pytest.raises(EdgepptError, match="no such key file"):
        load_bundle(out, trusted_keys=[tmp_path / "missing.pub"], require_signature=True)
    (tmp_path / "junk.pub").write_text("not a key")
    with pytest.raises(EdgepptError, match="not a readable PEM public key"):
        load_bundle(out, trusted_keys=[tmp_path / "junk.pub"], require_signature=True)
    with pytest.raises(EdgepptError, match="refusing to overwrite a key"):
        keygen(keys["owner"])
    assert oct(keys["owner"].with_suffix(".key").stat().st_mode & 0o777) == "0o600"
    sig = json.loads((out / "signature.json").read_text())
    sig["signature"] = "!!"
    (out / "signature.json").write_text(json.dumps(sig))
    with pytest.raises(EdgepptError, match="not a valid signature file"):
        load_bundle(out)


def test_an_unlisted_file_is_refused(tmp_path: Path, keys):
    out = signed_bundle(tmp_path, keys)
    (out / "hook.py").write_text("import os")
    with pytest.raises(EdgepptError, match="hook.py is not covered by the manifest"):
        load_bundle(out)


class RunsCode:
    """A pickle payload that would leave a marker file behind if it were ever unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def v1_bundle_that_runs_code(path: Path, marker: Path) -> Path:
    """A version-1 bundle whose .pt2 files carry a pickle that runs code on load."""
    path.mkdir()
    for name in ("generator.pt2", "classifier.pt2"):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            z.writestr("archive/data.pkl", pickle.dumps(RunsCode(marker)))
        (path / name).write_bytes(buf.getvalue())
    manifest = {"format": "edgeppt-source-bundle", "version": 1, "classes": ["a", "b"], "latent_dim": 4,
                "image_shape": [1, 8, 8], "generator": {"file": "generator.pt2"},
                "classifier": {"file": "classifier.pt2", "outputs": {"features": ["N", 4]}},
                "files": {n: sha256_file(path / n) for n in ("generator.pt2", "classifier.pt2")}}
    (path / "manifest.json").write_text(json.dumps(manifest))
    return path


def test_a_pt2_bundle_is_refused_unless_trusted_and_nothing_runs(tmp_path: Path, keys, monkeypatch):
    marker = tmp_path / "ran"
    old = v1_bundle_that_runs_code(tmp_path / "old", marker)
    assert read_manifest(old).runtime == "pt2"
    calls: list[Path] = []
    import edgeppt.bundle as B
    def loader(f: Path) -> nn.Module:
        calls.append(f)
        raise ValueError("not a program")

    monkeypatch.setattr(B, "load_program", loader)
    with pytest.raises(EdgepptError, match="can run code"):
        load_bundle(old)
    with pytest.raises(EdgepptError, match="can run code"):
        from_bundle(old, cfg(tmp_path, "-", "-"))
    assert not calls and not marker.exists()  # refused before anything was unpickled
    with pytest.raises(EdgepptError, match="cannot load the compiled model"):
        load_bundle(old, trust_code=True)  # an explicit --trust-code does reach the loader
    assert calls == [old / "generator.pt2"]


def test_an_unsigned_pt2_upload_is_refused_by_the_wizard(tmp_path: Path, keys):
    from edgeppt.app.uploads import extract_bundle
    from edgeppt.app.wizard import bundle_preview

    marker = tmp_path / "ran"
    old = v1_bundle_that_runs_code(tmp_path / "old", marker)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for f in old.iterdir():
            z.write(f, f"old/{f.name}")
    with pytest.raises(EdgepptError, match="refused: .*can run code"):  # (UploadError) before it replaces anything
        extract_bundle(buf.getvalue(), tmp_path / "upload")
    assert not marker.exists() and not (tmp_path / "upload").exists()
    with pytest.raises(EdgepptError, match="can run code"):  # and the preview refuses it as ever
        bundle_preview.__wrapped__(str(old), str(tmp_path / "grid.png"))
    assert not marker.exists()
    signed = signed_bundle(tmp_path, keys)
    info = bundle_preview.__wrapped__(str(signed), str(tmp_path / "grid.png"))
    assert info["provenance"].startswith("claims an unknown key") and (tmp_path / "grid.png").is_file()


def test_the_documented_biggan_example_packs(tmp_path: Path, monkeypatch):
    """docs/source-bundle.md's worked example, run exactly as printed there (from docs/examples/)."""
    import re
    import shlex

    from typer.testing import CliRunner

    from edgeppt.cli import app

    docs = Path(__file__).resolve().parents[1] / "docs"
    text = (docs / "source-bundle.md").read_text()
    block = re.search(r"### Worked example.*?```bash\n(.*?)```", text, re.S)
    assert block, "the worked example's command is missing from docs/source-bundle.md"
    argv = shlex.split(block.group(1).replace("\\\n", " "))
    assert argv[:3] == ["edgeppt", "source", "pack"]
    argv[argv.index("--out") + 1] = str(tmp_path / "owner-src")
    monkeypatch.chdir(docs / "examples")
    r = CliRunner().invoke(app, argv[1:])
    assert r.exit_code == 0, r.output
    b = load_bundle(tmp_path / "owner-src")
    assert b.image_shape == (3, 32, 32) and b.manifest.latent.truncation == 2.0
    assert b.manifest.classifier.features is None and b.manifest.generator.output_range == (-1.0, 1.0)


def test_a_gpu_without_onnxruntimes_cuda_provider_runs_the_graphs_on_the_cpu(monkeypatch):
    """torch on a GPU beside the plain `onnxruntime` package (no CUDA provider), as on an H200 with the default
    install: G and C run on the CPU's provider and their outputs move to torch's device, instead of failing."""
    import onnxruntime as ort

    from edgeppt.bundle_runtime import OnnxPart, providers_for

    assert providers_for(torch.device("cpu")) == ["CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert providers_for(torch.device("cuda")) == ["CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert providers_for(torch.device("cuda")) == ["CUDAExecutionProvider"]
    monkeypatch.undo()
    # "meta" stands for any device that is not onnxruntime's: the graph runs on the CPU, the output lands there
    g = OnnxPart(Path(__file__).resolve().parents[1] / "bundles" / "animals-src" / "generator.onnx",
                 torch.device("meta"))
    assert not g.on_gpu
    out = g({"z": torch.randn(3, 64), "p": torch.eye(5)[:3]}, torch.device("meta"))["image"]
    assert out.device.type == "meta" and out.shape == (3, 1, 28, 28)


def _fix_batch(path: Path, b: int) -> None:
    """Make every graph input and output's first dimension the number b: an export without dynamic axes."""
    import onnx

    m = onnx.load(str(path))
    for v in [*m.graph.input, *m.graph.output]:
        d = v.type.tensor_type.shape.dim[0]
        d.Clear()
        d.dim_value = b
    onnx.save(m, str(path))


@pytest.mark.parametrize("b", [1, 4])
def test_graphs_exported_with_a_fixed_batch_pack_and_sample_any_batch(tmp_path: Path, b: int):
    """An owner's G and C exported with a fixed batch size (torch.onnx.export without dynamic axes) are run in
    chunks of it, the last one padded: any batch gives the images and logits of the dynamic graphs."""
    g, c = onnx_pair(tmp_path)
    ref = load_bundle(pack(cfg(tmp_path, g, c, output_range=(-1, 1)))[0])
    for f in (g, c):
        _fix_batch(Path(f), b)
    fixed = load_bundle(pack(PackConfig(generator=g, classifier=c, classes=["a", "b", "c"],
                                        out=tmp_path / "fixed", output_range=(-1, 1)))[0])
    z, p = torch.randn(7, LATENT), torch.softmax(torch.randn(7, K), 1)
    x = fixed.generate(p, z)
    assert x.shape == (7, 1, 8, 8) and torch.allclose(x, ref.generate(p, z), atol=1e-6)
    assert torch.allclose(fixed.classify(x)[0], ref.classify(x)[0], atol=1e-5)


def test_a_dcgan_style_generator_takes_z_as_n_by_size_by_1_by_1(tmp_path: Path):
    """DCGAN's convention: z is (N, size, 1, 1) and a transposed convolution grows it. The size is read off the
    graph, and the bundle's (N, size) latents reach it with trailing ones."""

    class DCGANLike(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Linear(K, 8, bias=False)
            self.net = nn.ConvTranspose2d(LATENT + 8, 1, 8)  # 1x1 -> 8x8

        def forward(self, z, p):
            return torch.tanh(self.net(torch.cat([z, self.embed(p)[:, :, None, None]], 1)))

    _, c = onnx_pair(tmp_path)
    torch.manual_seed(0)
    g = DCGANLike()
    export_onnx(g, (torch.randn(2, LATENT, 1, 1), torch.softmax(torch.randn(2, K), 1)), ["z", "p"], ["img"],
                tmp_path / "dcgan.onnx")
    b = load_bundle(pack(cfg(tmp_path, str(tmp_path / "dcgan.onnx"), c, output_range=(-1, 1)))[0])
    assert b.manifest.latent.size == LATENT
    z, p = b.sample_latents(5, torch.Generator().manual_seed(0)), torch.eye(K)[[0, 1, 2, 0, 1]]
    with torch.no_grad():
        assert torch.allclose(b.generate(p, z), (g(z[:, :, None, None], p) + 1) / 2, atol=1e-5)


class ImagesLast(nn.Module):
    """An owner's G in Keras' layout: (N, H, W, C) images."""

    def __init__(self, g: nn.Module):
        super().__init__()
        self.g = g

    def forward(self, z, p):
        return self.g(z, p).permute(0, 2, 3, 1)


class InputLast(nn.Module):
    """An owner's C in Keras' layout: it takes (N, H, W, C) images."""

    def __init__(self, c: nn.Module):
        super().__init__()
        self.c = c

    def forward(self, x):
        return self.c(x.permute(0, 3, 1, 2))


@pytest.mark.parametrize("layout", ["auto", "nhwc"])
def test_channels_last_graphs_pack_and_give_nchw_images(tmp_path: Path, layout: str):
    """G's (N, H, W, C) images and C's (N, H, W, C) input, read off the graphs' shapes (auto) or declared: the
    bundle hands on (N, C, H, W) images equal to the owner's, transposed, and C scores them as the owner's C."""
    torch.manual_seed(0)
    g, c = OwnerGenerator(), LogitsOnly()
    z, p = torch.randn(2, LATENT), torch.softmax(torch.randn(2, K), 1)
    export_onnx(ImagesLast(g), (z, p), ["z", "p"], ["img"], tmp_path / "G.onnx")
    export_onnx(InputLast(c), (torch.rand(2, 8, 8, 1),), ["x"], ["scores"], tmp_path / "C.onnx")
    b = load_bundle(pack(cfg(tmp_path, str(tmp_path / "G.onnx"), str(tmp_path / "C.onnx"), output_range=(-1, 1),
                             layout=layout))[0])
    assert b.manifest.generator.channels_last and b.manifest.classifier.channels_last
    assert b.image_shape == (1, 8, 8)
    z, p = torch.randn(5, LATENT), torch.softmax(torch.randn(5, K), 1)
    x = b.generate(p, z)
    with torch.no_grad():
        assert torch.allclose(x, (g(z, p) + 1) / 2, atol=1e-5)
        assert torch.allclose(b.classify(x)[0], c(x), atol=1e-5)


def test_an_nchw_bundle_keeps_its_layout(tmp_path: Path):
    g, c = onnx_pair(tmp_path)
    m = load_bundle(pack(cfg(tmp_path, g, c, output_range=(-1, 1)))[0]).manifest
    assert not m.generator.channels_last and not m.classifier.channels_last


def test_a_classifier_that_ends_in_a_softmax_gives_log_probabilities_as_logits(tmp_path: Path):
    """Many exported classifiers end in a softmax. Found on G's images (rows >= 0 summing to 1) or declared, their
    logarithms serve as logits, so softmax(logits / T) is C's own distribution tempered, not a near-uniform one."""
    g, c = onnx_pair(tmp_path)
    torch.manual_seed(0)
    owner_c = nn.Sequential(LogitsOnly(), nn.Softmax(dim=1))
    export_onnx(owner_c, (torch.rand(2, 1, 8, 8),), ["x"], ["probs"], tmp_path / "Csoft.onnx")
    soft = load_bundle(pack(cfg(tmp_path, g, str(tmp_path / "Csoft.onnx"), output_range=(-1, 1)))[0])
    assert soft.manifest.classifier.softmax_output
    x = torch.rand(6, 1, 8, 8)
    logits, _ = soft.classify(x)
    with torch.no_grad():
        assert torch.allclose(torch.softmax(logits, 1), owner_c(x), atol=1e-5)
    plain = load_bundle(pack(PackConfig(generator=g, classifier=c, classes=["a", "b", "c"], out=tmp_path / "plain",
                                        output_range=(-1, 1)))[0])
    assert not plain.manifest.classifier.softmax_output  # logits: rows of any sign and sum
    forced = PackConfig(generator=g, classifier=str(tmp_path / "Csoft.onnx"), classes=["a", "b", "c"],
                        out=tmp_path / "forced", output_range=(-1, 1), classifier_output="logits")
    assert not load_bundle(pack(forced)[0]).manifest.classifier.softmax_output  # the owner's word stands


def _external(path: Path, location: str) -> None:
    """Keep the graph's weights in `location` (ONNX external data, written where it points)."""
    import onnx

    model = onnx.load(str(path))
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=location,
              size_threshold=256)
    assert external_files(path, path.parents[1])  # the weights moved out


def test_a_graph_with_its_weights_beside_it_packs_into_one_file(tmp_path: Path):
    """torch.onnx.export keeps a large model's weights in a file beside the graph: pack folds them in, and the
    bundle draws what the graph in one file does."""
    g, c = onnx_pair(tmp_path)
    b_one = load_bundle(pack(cfg(tmp_path / "one", g, c, output_range=(-1, 1)))[0])
    _external(Path(g), "G.onnx.data")
    out, _ = pack(cfg(tmp_path, g, c, output_range=(-1, 1)))
    assert set(read_manifest(out).files) == {"generator.onnx", "classifier.onnx", "samples.png", "README.md"}
    p, z = torch.softmax(torch.randn(4, K), 1), torch.randn(4, LATENT)
    assert torch.equal(load_bundle(out).generate(p, z), b_one.generate(p, z))


def test_a_graph_whose_weights_lie_outside_the_bundle_is_refused_before_it_runs(tmp_path: Path):
    """An ONNX tensor may name any file for its data: one outside the bundle folder (another bundle's, a system
    file) is refused with one line, even where the manifest's hashes are all correct."""
    g, c = onnx_pair(tmp_path)
    out, _ = pack(cfg(tmp_path, g, c, output_range=(-1, 1)))
    import onnx

    _external(out / "classifier.onnx", "weights.data")
    (out / "weights.data").rename(tmp_path / "outside.data")
    model = onnx.load(str(out / "classifier.onnx"), load_external_data=False)
    for t in model.graph.initializer:  # onnx itself writes no such location: edited in, as an attacker would
        for e in t.external_data:
            if e.key == "location":
                e.value = "../outside.data"
    (out / "classifier.onnx").write_bytes(model.SerializeToString())
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["files"]["classifier.onnx"] = sha256_file(out / "classifier.onnx")
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(EdgepptError, match=r"classifier.onnx: tensor .* keeps its data at '../outside.data', "
                                           r"outside"):
        load_bundle(out)


def test_external_data_is_checked_in_sparse_tensors_and_functions_too(tmp_path: Path):
    """Sparse initializers, sparse attribute constants and model-local functions can name a data file as well."""
    import onnx
    from onnx import TensorProto, helper

    def outside(name: str) -> onnx.TensorProto:
        t = helper.make_tensor(name, TensorProto.FLOAT, [1], [0.0])
        t.ClearField("float_data")
        t.data_location = TensorProto.EXTERNAL
        t.external_data.add(key="location", value="/etc/passwd")
        return t

    def sparse(name: str) -> onnx.SparseTensorProto:
        return helper.make_sparse_tensor(outside(name), helper.make_tensor(name + "_i", TensorProto.INT64, [1], [0]),
                                         [4])

    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    graphs = {
        "sparse initializer": helper.make_graph([helper.make_node("Identity", ["s"], ["y"])], "g", [], [y],
                                                sparse_initializer=[sparse("s")]),
        "sparse constant": helper.make_graph([helper.make_node("Constant", [], ["y"], sparse_value=sparse("c"))],
                                             "g", [], [y]),
    }
    fn = helper.make_function("local", "f", [], ["y"], [helper.make_node("Constant", [], ["y"], value=outside("k"))],
                              [helper.make_opsetid("", OPSET)])
    graphs["function"] = helper.make_graph([helper.make_node("f", [], ["y"], domain="local")], "g", [], [y])
    for what, graph in graphs.items():
        model = helper.make_model(graph, functions=[fn] if what == "function" else [],
                                  opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("local", 1)])
        path = tmp_path / f"{what}.onnx"
        path.write_bytes(model.SerializeToString())
        with pytest.raises(EdgepptError, match="keeps its data at '/etc/passwd', outside"):
            external_files(path, tmp_path)


@pytest.mark.parametrize("edit, problem", [
    (lambda m: m["classifier"].update(std=[0.0]), "std must be positive"),
    (lambda m: m["classifier"].update(mean=[0.5, 0.5]), "one value, or one per channel"),
    (lambda m: m["generator"].update(output_range=[1.0, 1.0]), "low end must be below the high end"),
    (lambda m: m["latent"].update(truncation=float("nan")), "truncation"),
    (lambda m: m.update(image_shape=[1, 8, 12]), "G draws 8x12 images; edgeppt needs square ones"),
])
def test_a_manifest_with_numbers_that_cannot_work_is_one_line(tmp_path: Path, edit, problem):
    """A std of 0 (every image infinite), NaN (JSON readers take it), a range that does not rise, or one mean per
    channel of another image: refused when the manifest is read, naming the field, before any graph runs."""
    g, c = onnx_pair(tmp_path)
    out, _ = pack(cfg(tmp_path, g, c, output_range=(-1, 1)))
    manifest = json.loads((out / "manifest.json").read_text())
    edit(manifest)
    (out / "manifest.json").write_text(json.dumps(manifest))  # json writes NaN as the bare token NaN
    with pytest.raises(EdgepptError, match=problem) as e:
        load_bundle(out)
    assert "\n" not in str(e.value)


def test_the_classifier_sees_its_own_side_whatever_the_images_side(tmp_path: Path):
    """kd's teacher reads target images at the target's side: C gets them at the side it was trained at (G's,
    where the manifest names no input_size), as every other caller resizes them first."""
    g, c = onnx_pair(tmp_path)
    b = load_bundle(pack(cfg(tmp_path, g, c, output_range=(-1, 1)))[0])
    x = torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    small = torch.nn.functional.interpolate(x, size=(8, 8), mode="bilinear", align_corners=False)
    assert torch.allclose(b.classify(x)[0], b.classify(small)[0], atol=1e-6)


def test_a_graph_that_does_not_compute_what_its_module_does_is_refused(tmp_path: Path):
    """Every graph written into a bundle is run once against the torch module it came from (an exporter fault
    would otherwise ship under a README that describes the module)."""
    from edgeppt.bundle_write import _check_parity

    torch.manual_seed(0)
    c, other = LogitsOnly(), LogitsOnly()
    x = (torch.rand(2, 1, 8, 8),)
    path = export_onnx(c, x, ["x"], ["scores"], tmp_path / "C.onnx")  # checked against c itself: passes
    with pytest.raises(EdgepptError, match="C.onnx: the ONNX graph does not compute what the torch module does"):
        _check_parity(other, x, ["x"], path)


class TemplateG(nn.Module):
    """A G whose classes C can tell apart (each class a template), with its label input first, as some owners have
    it, and z as wide as the label (so the inputs' widths cannot tell them apart)."""

    def __init__(self, side: int = 8):
        super().__init__()
        torch.manual_seed(1)
        self.templates = nn.Parameter(0.2 + 0.6 * torch.rand(K, side * side), requires_grad=False)
        self.noise = nn.Linear(K, side * side, bias=False)
        self.side = side

    def forward(self, y, z):
        return (y @ self.templates + 0.02 * self.noise(z)).clamp(0, 1).view(-1, 1, self.side, self.side)


class FeaturesFirst(nn.Module):
    """A C that returns (features, logits), its features K wide too, and takes a side of its own (fixed)."""

    def __init__(self, g: TemplateG, side: int):
        super().__init__()
        self.g, self.side = g, side
        self.project = nn.Linear(side * side, K)

    def forward(self, x):
        small = nn.functional.avg_pool2d(x, self.side // self.g.side)
        logits = small.flatten(1) @ (self.g.templates - self.g.templates.mean(0)).T
        return self.project(x.flatten(1)), logits


def test_owner_graphs_in_other_orders_and_types_pack_as_they_mean(tmp_path: Path):
    """Owners' conventions that shapes alone do not tell: G's label input first and as wide as z (found by its name,
    or its type), C returning (features, logits) with features K wide (its logits are the output that names G's
    classes), C's own fixed side (read off its graph), float16 graphs (float32 out), and [0, 1] images declared as
    -1,1 (refused: they would be washed out)."""
    g = TemplateG()
    c = FeaturesFirst(g, 16)
    p = torch.softmax(torch.randn(2, K), 1)
    export_onnx(g, (p, torch.randn(2, K)), ["y", "z"], ["image"], tmp_path / "G.onnx")
    export_onnx(c, (torch.rand(2, 1, 16, 16),), ["x"], ["features", "logits"], tmp_path / "C.onnx")
    out, summary = pack(cfg(tmp_path, str(tmp_path / "G.onnx"), str(tmp_path / "C.onnx")))
    m = load_bundle(out).manifest
    assert (m.generator.label_input, m.generator.z_input) == ("y", "z")
    assert (m.classifier.logits, m.classifier.features, m.classifier.input_size) == ("logits", "features", 16)
    assert summary["generated_accuracy"] > 0.9
    with pytest.raises(EdgepptError, match="look like \\[0, 1\\] images .* pass --output-range 0,1"):
        pack(cfg(tmp_path / "washed", str(tmp_path / "G.onnx"), str(tmp_path / "C.onnx"), output_range=(-1, 1)))
    half = tmp_path / "half"
    half.mkdir()
    export_onnx(TemplateG().half(), (p.half(), torch.randn(2, K).half()), ["label", "noise"], ["image"],
                half / "G.onnx")
    export_onnx(FeaturesFirst(TemplateG(), 16).half(), (torch.rand(2, 1, 16, 16).half(),), ["x"],
                ["features", "logits"], half / "C.onnx")
    out, summary = pack(cfg(half, str(half / "G.onnx"), str(half / "C.onnx")))
    b = load_bundle(out)
    assert b.manifest.generator.label_input == "label" and summary["generated_accuracy"] > 0.9
    x = b.generate(torch.eye(K)[[0, 1]])
    assert x.dtype == torch.float32 and b.classify(x)[0].dtype == torch.float32


class ColourC(nn.Module):
    """An owner's C fine-tuned from a colour network on gray data: it takes 3 channels, G draws 1."""

    def __init__(self, g: TemplateG):
        super().__init__()
        self.g = g
        self.mix = nn.Conv2d(3, 1, 1, bias=False)
        nn.init.constant_(self.mix.weight, 1 / 3)

    def forward(self, x):
        return self.mix(x).flatten(1) @ (self.g.templates - self.g.templates.mean(0)).T


def test_a_colour_classifier_behind_a_gray_generator(tmp_path: Path):
    """C's channels are read off its graph and kept in the manifest: G's gray images are made colour for it, in
    the checks, in classify and for the methods that train C itself."""
    from edgeppt.transfer.source_ft import source_model

    g = TemplateG()
    export_onnx(g, (torch.softmax(torch.randn(2, K), 1), torch.randn(2, K)), ["y", "z"], ["image"],
                tmp_path / "G.onnx")
    export_onnx(ColourC(g), (torch.rand(2, 3, 8, 8),), ["x"], ["logits"], tmp_path / "C.onnx")
    out, summary = pack(cfg(tmp_path, str(tmp_path / "G.onnx"), str(tmp_path / "C.onnx"), mean=[0.5] * 3,
                            std=[0.5] * 3))
    b = load_bundle(out)
    assert b.manifest.classifier.channels == 3 and b.classifier_channels == 3 and b.image_shape[0] == 1
    assert summary["generated_accuracy"] > 0.9 and b.classify(b.generate(torch.eye(K)))[0].shape == (K, K)
    model, _ = source_model(b, 2)
    assert model(torch.rand(2, 3, 8, 8)).shape == (2, 2)


def test_a_colour_factory_classifier_behind_a_gray_generator(tmp_path: Path, monkeypatch):
    """A torch factory's C has no graph to read its channels off: it is probed with G's 1 channel, then with 3."""
    g = TemplateG()
    export_onnx(g, (torch.softmax(torch.randn(2, K), 1), torch.randn(2, K)), ["y", "z"], ["image"],
                tmp_path / "G.onnx")
    (tmp_path / "colourc.py").write_text(textwrap.dedent("""
        import torch
        from torch import nn

        class C(nn.Module):
            def __init__(self):
                super().__init__()
                torch.manual_seed(1)
                t = 0.2 + 0.6 * torch.rand(3, 64)
                self.register_buffer("t", t - t.mean(0))
                self.mix = nn.Conv2d(3, 1, 1, bias=False)
                nn.init.constant_(self.mix.weight, 1 / 3)
            def forward(self, x):
                return self.mix(x).flatten(1) @ self.t.T

        def make():
            return C()
    """))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    out, summary = pack(cfg(tmp_path, str(tmp_path / "G.onnx"), "colourc:make"))
    b = load_bundle(out)
    assert b.manifest.classifier.channels == 3 and b.image_shape[0] == 1
    assert summary["generated_accuracy"] > 0.9
    (tmp_path / "badc.py").write_text("import torch\ndef make():\n    return torch.nn.Conv2d(5, 2, 1)\n")
    with pytest.raises(EdgepptError, match="does not accept the generator's 1-channel 8x8 images"):
        pack(cfg(tmp_path, str(tmp_path / "G.onnx"), "badc:make"))


class OpenCvG(nn.Module):
    """An owner's G trained on cv2.imread images: its colour channels come out blue, green, red."""

    def __init__(self):
        super().__init__()
        self.bgr = nn.Parameter(torch.eye(3).flip(1), requires_grad=False)  # class c's colour, in BGR: red, green, blue
        self.noise = nn.Linear(K, 3, bias=False)

    def forward(self, y, z):
        return (y @ self.bgr + 0.01 * self.noise(z)).clamp(0, 1)[:, :, None, None].expand(-1, 3, 8, 8)


class OpenCvC(nn.Module):
    def __init__(self, g: OpenCvG):
        super().__init__()
        self.g = g

    def forward(self, x):
        return x.mean((2, 3)) @ self.g.bgr.T


def test_an_opencv_bundle_in_bgr_gives_and_reads_rgb(tmp_path: Path):
    """--channel-order bgr: G's images come out RGB (class 0, red, is red) and C reads RGB images (a red image is
    class 0); without it the same graphs draw class 0 blue."""
    g = OpenCvG()
    export_onnx(g, (torch.eye(K)[:2], torch.randn(2, K)), ["y", "z"], ["image"], tmp_path / "G.onnx")
    export_onnx(OpenCvC(g), (torch.rand(2, 3, 8, 8),), ["x"], ["logits"], tmp_path / "C.onnx")
    red = torch.zeros(1, 3, 8, 8)
    red[:, 0] = 1.0
    for order, first in (("bgr", 0), ("rgb", 2)):
        out, summary = pack(cfg(tmp_path / order, str(tmp_path / "G.onnx"), str(tmp_path / "C.onnx"),
                                channel_order=order))
        b = load_bundle(out)
        assert summary["generated_accuracy"] == 1.0  # (G and C agree with each other either way)
        assert b.generate(torch.eye(K)[:1]).mean((2, 3))[0].argmax().item() == first
        assert b.classify(red)[0].argmax().item() == first
