"""Fine-tuning the source classifier: its ONNX graph made trainable (edgeppt.models.onnx_graph), and the ft, l2sp
and tred methods over it."""

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from conftest import ctrl_c_after_checkpoint
from torch import nn

from edgeppt.bundle import load_bundle
from edgeppt.config import TransferConfig
from edgeppt.errors import EdgepptError
from edgeppt.export import export_run
from edgeppt.models import create_model
from edgeppt.models.onnx_graph import from_onnx
from edgeppt.runs import load_checkpoint, read_jsonl
from edgeppt.transfer import run_transfer
from edgeppt.transfer.source_ft import L2SP, mmd2, source_model

ROOT = Path(__file__).resolve().parents[1]
TARGET = "digits:0,1,2,3,4"


def cfg(bundle, **kw):
    base = dict(source=bundle, target=TARGET, labels_per_class=4, finetune_steps=20, batch_size=20, eval_every=10,
                checkpoint_every=5, source_ft={"tred_steps": 10})
    base.update(kw)
    return TransferConfig(**base)


def _ort(path, x, output):
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return s.run([output], {s.get_inputs()[0].name: x.numpy()})[0]


def test_the_shipped_classifier_rebuilds_exactly():
    path = ROOT / "bundles" / "animals-src" / "classifier.onnx"
    arch, weights = from_onnx(path, "features", "logits", [0.0], [1.0])
    model = create_model(json.loads(json.dumps(arch)), 5, 1)  # the architecture survives JSON (model.pt, reports)
    model.load_state_dict(weights, strict=False)
    x = torch.rand(16, 1, 28, 28)
    with torch.no_grad():
        got = model.forward_features(x).numpy()
    assert np.abs(got - _ort(path, x, "features")).max() < 1e-5
    assert model.num_features == 64 and sum(p.numel() for p in model.body.parameters()) == sum(
        w.numel() for w in weights.values())


class OwnerNet(nn.Module):
    """Operators beyond the shipped bundles': unfolded batch norm, pools, concat, sigmoid/hardswish, flatten,
    a logits-only output."""

    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2))
        self.b = nn.Sequential(nn.Conv2d(8, 8, 3, stride=1, padding=(0, 1)), nn.Hardswish(), nn.AvgPool2d(2))
        self.c = nn.Conv2d(8, 8, 1)
        self.fc1, self.fc2 = nn.Linear(16 * 3 * 4, 24), nn.Linear(24, 3)

    def forward(self, x):
        h = self.b(self.a(x))
        h = torch.cat([h, torch.sigmoid(self.c(h))], 1)
        return self.fc2(torch.relu(self.fc1(torch.flatten(h, 1))))


def test_other_operators_and_a_logits_only_classifier(tmp_path):
    torch.manual_seed(0)
    net = OwnerNet().eval()
    net.a[1].running_mean.uniform_(-0.5, 0.5)
    net.a[1].running_var.uniform_(0.5, 2)
    path = tmp_path / "c.onnx"
    torch.onnx.export(net, (torch.rand(2, 3, 16, 16),), str(path), input_names=["x"], output_names=["logits"],
                      dynamo=True, optimize=False, dynamic_shapes=({0: torch.export.Dim("b")},))
    arch, weights = from_onnx(path, None, "logits", [0.5, 0.5, 0.5], [0.25, 0.25, 0.25])
    model = create_model(arch, 4, 3)
    model.load_state_dict(weights, strict=False)
    x = torch.rand(5, 3, 16, 16)
    with torch.no_grad():
        feats = model.forward_features(x)
        ref = torch.relu(net.fc1(torch.flatten(torch.cat([h := net.b(net.a((x - 0.5) / 0.25)),
                                                          torch.sigmoid(net.c(h))], 1), 1)))
    assert model.num_features == 24  # the input of the last linear layer, found without a features output
    assert torch.allclose(feats, ref, atol=1e-5)
    ops = {n["op"] for n in arch["config"]["graph"]["nodes"]}
    assert {"BatchNormalization", "MaxPool", "AveragePool", "Concat", "Sigmoid"} <= ops
    # batch-norm statistics are buffers, not trained
    trained = {tuple(p.shape) for p in model.body.parameters()}
    assert (8,) in trained and len([p for p in model.body.parameters() if p.shape == (8,)]) == 5


def test_an_operator_it_cannot_train_is_one_line(tmp_path):
    class Odd(nn.Module):
        def forward(self, x):
            return torch.cumsum(x.flatten(1), 1)

    path = tmp_path / "odd.onnx"
    torch.onnx.export(Odd(), (torch.rand(1, 1, 4, 4),), str(path), input_names=["x"], output_names=["f"], dynamo=True)
    with pytest.raises(EdgepptError, match=r"operators \['CumSum'\].*cannot train") as e:
        from_onnx(path, "f", "logits", [0.0], [1.0])
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("method", ["ft", "l2sp", "tred"])
def test_fine_tuning_c_trains_and_exports(method, tiny_bundle, tmp_path):
    # The tiny bundle's C is untrained, so it needs a higher rate than a real C to learn visibly in 40 steps.
    c = cfg(tiny_bundle, method=method, finetune_steps=40)
    # Its features are near zero, so TRED's pull toward them (scaled by their size) is turned down here.
    c.source_ft = c.source_ft.model_copy(update={"lr_scale": 1.0, "tred_weight": 0.01})
    report = run_transfer(c, tmp_path / method, progress=False)
    assert report["method"] == method and report["model"]["arch"]["family"] == "onnx_graph"
    phases = [p["name"] for p in report["phases"]]
    assert phases == (["tred_first", "tred"] if method == "tred" else [method])
    losses = [r["ce" if method == "tred" else "loss"] for r in read_jsonl(tmp_path / method / "metrics.jsonl")
              if r["phase"] == method]
    assert sum(losses[-8:]) < sum(losses[:8])  # it learns (the tiny bundle's C is untrained: accuracy says little)
    manifest = export_run(tmp_path / method, tmp_path / f"{method}-bundle", formats="onnx", bench_runs=0,
                          log=lambda s: None)
    assert manifest["artifacts"]["onnx"]["parity"]["top1_agreement"] == 1.0


def test_c_starts_from_the_bundles_weights(tiny_bundle):
    bundle = load_bundle(tiny_bundle)
    model, arch = source_model(bundle, 3)
    x = torch.rand(6, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(model.forward_features(x), bundle.classify(x)[1], atol=1e-5)
    assert arch["family"] == "onnx_graph" and model.head.out_features == 3


def test_c_fine_tuned_at_another_side_sees_its_own(tiny_bundle, tmp_path):
    """ft at twice the bundle's side: the trainable C resizes to its own side inside, as the bundle's C is fed, so its
    features at the start are the bundle's, and the model trains and exports at the side asked for."""
    bundle = load_bundle(tiny_bundle)
    model, _ = source_model(bundle, 3)
    x = torch.rand(6, 1, 16, 16)
    with torch.no_grad():
        assert torch.allclose(model.forward_features(x), bundle.classify(x)[1], atol=1e-5)
    report = run_transfer(cfg(tiny_bundle, method="ft", finetune_steps=4, image_size=16), tmp_path / "ft",
                          progress=False)
    assert report["model"]["image_size"] == 16
    export_run(tmp_path / "ft", tmp_path / "dist", formats="onnx", bench_runs=0, log=lambda s: None)


def test_l2sp_is_zero_at_c_and_grows_away_from_it(tiny_bundle):
    from edgeppt.data import few_shot, load_dataset

    bundle = load_bundle(tiny_bundle)
    model, _ = source_model(bundle, 5)
    labelled, _ = few_shot(load_dataset(TARGET, 8, 1), 4, 0)
    obj = L2SP(labelled, 8, alpha=1.0, beta=0.0)
    obj.setup(model)
    g = torch.Generator().manual_seed(0)
    from edgeppt.train.loop import Dist
    assert obj.loss(model, g, 0, 1, Dist())[1]["l2sp"] == 0.0
    with torch.no_grad():
        next(iter(model.body.parameters())).add_(0.5)
    assert obj.loss(model, g, 0, 1, Dist())[1]["l2sp"] > 0.0


def test_mmd_separates_distributions():
    a = torch.randn(64, 8)
    assert mmd2(a, a.clone()).abs() < 1e-6
    assert mmd2(a, torch.randn(64, 8) + 3) > 0.5


def test_tred_resumes_to_the_same_model(tiny_bundle, tmp_path, monkeypatch):
    c = cfg(tiny_bundle, method="tred")
    run_transfer(c, tmp_path / "whole", progress=False)
    ctrl_c_after_checkpoint(monkeypatch, lambda phase, step: phase == "tred_first" and step == 5)
    with pytest.raises(KeyboardInterrupt):
        run_transfer(c, tmp_path / "cut", progress=False)
    monkeypatch.undo()
    run_transfer(c, tmp_path / "cut", resume=True, progress=False)
    a = load_checkpoint(tmp_path / "whole" / "model.pt")["state_dict"]
    b = load_checkpoint(tmp_path / "cut" / "model.pt")["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_fine_tuning_c_of_a_version_1_bundle_is_refused(tiny_bundle):
    bundle = load_bundle(tiny_bundle)
    bundle.manifest = bundle.manifest.model_copy(update={"runtime": "pt2"})
    with pytest.raises(EdgepptError, match="ONNX source bundle"):
        source_model(bundle, 3)
