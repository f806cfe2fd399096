"""Supermasks with IteRand: training, the seed-and-mask update, and its materialisation on the device."""

import json
import shutil
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
import torch
from conftest import ctrl_c_after_checkpoint

from edgeppt import supermask as fmt
from edgeppt.config import TransferConfig
from edgeppt.export import export_run
from edgeppt.export.onnx_export import load_run, run_data, torch_logits
from edgeppt.runs import load_checkpoint
from edgeppt.transfer import run_transfer

TARGET = "digits:0,1,2,3,4"


def cfg(bundle, **kw):
    base = dict(source=bundle, target=TARGET, labels_per_class=4, pretrain_steps=20, pretrain_batch=32,
                finetune_steps=30, batch_size=20, eval_every=10, checkpoint_every=5, method="scratch",
                supermask={"enabled": True, "sparsity": 0.6, "rerand_every": 10, "rerand_ratio": 0.2, "steps_scale": 1})
    base.update(kw)
    return TransferConfig(**base)


def test_the_sign_stream_is_pinned():
    """The device rebuilds weights from these bits: they must not change with numpy's version or the platform."""
    assert fmt.signs(7, 2, 3, 12).tolist() == [1, 1, 1, -1, 1, 1, -1, 1, 1, 1, 1, -1]
    assert not np.array_equal(fmt.signs(7, 2, 3, 64), fmt.signs(7, 2, 4, 64))


def test_pack_and_unpack_round_trip():
    rng = np.random.default_rng(0)
    mask = rng.random((4, 3, 3, 3)) < 0.4
    gen = rng.integers(0, 3, mask.shape).astype(np.uint8)
    arrays = fmt.pack(5, [{"name": "c.weight", "scale": 0.3, "mask": mask, "generation": gen}])
    got = fmt.unpack(arrays)["c.weight"]
    assert np.array_equal(got, fmt.layer_values(5, 0, 0.3, gen) * mask)
    assert set(np.unique(np.abs(got[mask]))) == {np.float32(0.3)} and (got[~mask] == 0).all()
    base = {"c.weight": rng.standard_normal(mask.shape).astype(np.float32)}
    arrays = fmt.pack(5, [{"name": "c.weight", "scale": 0.3, "mask": mask, "generation": gen}], base)
    with pytest.raises(ValueError, match="base weights"):
        fmt.unpack(arrays)
    kept_first = mask & (gen == 0)
    assert np.array_equal(fmt.unpack(arrays, base)["c.weight"][kept_first], base["c.weight"][kept_first])


def _weights_of(out):
    ckpt = load_checkpoint(out / "model.pt")
    upd = {k: v.numpy() if isinstance(v, torch.Tensor) else np.array(v) for k, v in ckpt["supermask"]["update"].items()}
    base = {k: v.numpy() for k, v in ckpt["supermask"]["base"].items()} if ckpt["supermask"]["base"] else None
    return ckpt, upd, fmt.unpack(upd, base)


@pytest.mark.parametrize("method", ["scratch", "pp"])
def test_a_supermask_run_is_its_update(method, tiny_bundle, tmp_path):
    report = run_transfer(cfg(tiny_bundle, method=method), tmp_path / method, progress=False)
    assert report["supermask"]["base"] == ("seeded" if method == "scratch" else "pp")
    ckpt, upd, weights = _weights_of(tmp_path / method)
    state = ckpt["state_dict"]
    assert len(weights) >= 8  # every conv and linear layer but the head
    for name, w in weights.items():  # the update rebuilds the trained model bit for bit
        assert np.array_equal(w, state[name].numpy()), name
        assert abs((w == 0).mean() - 0.6) < 0.02  # the sparsity (a seeded value is never 0)
    assert max(int(upd[f"gen{j}"].max(initial=0)) for j in range(len(weights))) >= 1  # IteRand re-drew weights
    assert "head.weight" not in weights


def test_supermask_resume_equals_an_uninterrupted_run(tiny_bundle, tmp_path, monkeypatch):
    c = cfg(tiny_bundle)
    run_transfer(c, tmp_path / "whole", progress=False)
    ctrl_c_after_checkpoint(monkeypatch, lambda phase, step: step == 15)  # between two re-randomisations
    with pytest.raises(KeyboardInterrupt):
        run_transfer(c, tmp_path / "cut", progress=False)
    monkeypatch.undo()
    run_transfer(c, tmp_path / "cut", resume=True, progress=False)
    a, b = _weights_of(tmp_path / "whole"), _weights_of(tmp_path / "cut")
    assert all(torch.equal(a[0]["state_dict"][k], b[0]["state_dict"][k]) for k in a[0]["state_dict"])
    assert all(np.array_equal(a[1][k], b[1][k]) for k in a[1])


def test_the_bundle_materialises_on_the_device(tiny_bundle, tmp_path):
    run = tmp_path / "run"
    run_transfer(cfg(tiny_bundle), run, progress=False)
    bundle = tmp_path / "bundle"
    manifest = export_run(run, bundle, formats="onnx,int8", bench_runs=0, log=lambda s: None)
    sm = manifest["supermask"]
    assert sm["over_the_air_bytes"] < sm["model_bytes"]["onnx"] / 2
    assert not (bundle / sm["weights_file"]).exists()  # the device makes it
    device = tmp_path / "device"
    shutil.copytree(bundle, device)
    done = subprocess.run([sys.executable, "runner.py", "materialize"], cwd=device, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["matches_manifest"] and result["max_abs_diff_vs_fp32"] < 1e-4
    # the materialised graph is the masked torch model
    loaded = load_run(run)
    _, test = run_data(loaded)
    s = ort.InferenceSession(str(device / sm["template"]), providers=["CPUExecutionProvider"])
    got = np.concatenate([s.run(None, {s.get_inputs()[0].name: test.x[i:i + 1].numpy()})[0] for i in range(20)])
    assert np.abs(got - torch_logits(loaded.model, test.x[:20])).max() < 1e-4
    bench = subprocess.run([sys.executable, "runner.py", "bench", "--runs", "2", "--json"], cwd=device,
                           capture_output=True, text=True)
    sizes = json.loads(bench.stdout)["sizes"]
    assert sizes["supermask update"] == sm["over_the_air_bytes"] and sizes["int8"] < sizes["onnx"]


def test_a_tampered_update_is_refused(tiny_bundle, tmp_path):
    run_transfer(cfg(tiny_bundle, finetune_steps=10), tmp_path / "run", progress=False)
    export_run(tmp_path / "run", tmp_path / "b", formats="onnx", bench_runs=0, log=lambda s: None)
    arrays = dict(np.load(tmp_path / "b" / "supermask.npz"))
    arrays["mask0"] = arrays["mask0"] ^ 1  # flip bits
    np.savez_compressed(tmp_path / "b" / "supermask.npz", **arrays)
    done = subprocess.run([sys.executable, "runner.py", "materialize"], cwd=tmp_path / "b", capture_output=True,
                          text=True)
    assert done.returncode == 3 and "supermask.npz: sha256 differs" in done.stderr
