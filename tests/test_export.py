"""export/: ONNX parity, the QDQ graph, the INT8 accuracy guard, bundle hashes, the runner on real image files,
deploy over a real local OpenSSH server, and bad input. One small digits run is trained and exported once."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from typer.testing import CliRunner

from edgeppt.cli import app
from edgeppt.config import TransferConfig
from edgeppt.cpu_int8 import int8_instructions
from edgeppt.errors import EdgepptError
from edgeppt.export import bench_bundle, deploy_bundle, export_run, runner, tensorrt, verify_bundle
from edgeppt.export import quantize as Q
from edgeppt.export.onnx_export import export_onnx, load_run, run_data, torch_logits
from edgeppt.transfer import run_transfer

FORMATS = "onnx,int8,fp16,tensorrt"


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    cfg = TransferConfig(target="digits:0,1,2,3,4", image_size=8, method="scratch", arch="resnet_xs",
                         labels_per_class=20, finetune_steps=80, eval_every=1000, checkpoint_every=1000, threads=1)
    out = tmp_path_factory.mktemp("run") / "r"
    report = run_transfer(cfg, out, progress=False)
    assert report["test_accuracy"] > 0.6  # a model that has learned something, so accuracy drops are visible
    return out


@pytest.fixture(scope="module")
def bundle(trained_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("dist") / "digits"
    manifest = export_run(trained_run, out, device="x86-cpu", formats=FORMATS, calibration_size=64,
                          bench_runs=5, samples_per_class=3, log=lambda s: None)
    return out, manifest


@pytest.fixture(scope="module")
def test_split(trained_run):
    _, test = run_data(load_run(trained_run))
    return test.x.numpy(), test.y.numpy()


# ---------------------------------------------------------------- ONNX
def test_onnx_matches_pytorch_on_the_test_split(trained_run, bundle, test_split):
    path, manifest = bundle
    run = load_run(trained_run)
    x, y = test_split
    ref = torch_logits(run.model, torch.from_numpy(x))
    got = runner.predict_logits(runner.make_session(path / "model.onnx", 1, "cpu"), x)
    assert np.abs(got - ref).max() < 1e-3
    assert (got.argmax(1) == ref.argmax(1)).mean() == 1.0
    art = manifest["artifacts"]["onnx"]
    assert art["parity"]["top1_agreement"] == 1.0 and art["parity"]["max_abs_diff"] < 1e-3
    assert art["accuracy"] == pytest.approx(float((ref.argmax(1) == y).mean()))
    onnx.checker.check_model(str(path / "model.onnx"), full_check=True)
    dims = [d.dim_value for d in onnx.load(str(path / "model.onnx")).graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 1, 8, 8]  # batch-1 static by default


def test_search_probes_and_exports_declare_one_opset(trained_run, tmp_path):
    from edgeppt.onnxspec import OPSET
    from edgeppt.search.latency import to_onnx

    run = load_run(trained_run)
    shipped = onnx.load(export_onnx(run.model, tmp_path / "m.onnx", run.input_shape))
    probed = onnx.load_from_string(to_onnx(run.model, run.input_shape))
    assert [o.version for o in shipped.opset_import if o.domain in ("", "ai.onnx")] == [OPSET]
    assert [o.version for o in probed.opset_import if o.domain in ("", "ai.onnx")] == [OPSET]


def test_the_device_runner_times_as_the_package_does():
    """The runner ships alone to the device, so it keeps its own copies of the timing defaults: they must agree."""
    import inspect

    from edgeppt.export import runner
    from edgeppt.export.formats import BENCH_RUNS, THROUGHPUT_BATCH

    assert (runner.RUNS, runner.BATCH) == (BENCH_RUNS, THROUGHPUT_BATCH)
    bench = inspect.signature(runner.run_bench).parameters  # (its functions and its command line read them)
    assert (bench["runs"].default, bench["batch"].default) == (BENCH_RUNS, THROUGHPUT_BATCH)
    assert inspect.signature(runner.benchmark).parameters["runs"].default == BENCH_RUNS


def test_dynamic_batch_export(trained_run, tmp_path):
    run = load_run(trained_run)
    p = export_onnx(run.model, tmp_path / "dyn.onnx", run.input_shape, dynamic_batch=True)
    s = runner.make_session(p, 1, "cpu")
    assert runner.static_batch(s) is None
    x = np.random.default_rng(0).random((7, *run.input_shape), dtype=np.float32)
    out = s.run(None, {"input": x})[0]
    assert out.shape == (7, 5)
    np.testing.assert_allclose(out, torch_logits(run.model, torch.from_numpy(x)), atol=1e-4)


def test_fp16_model_is_float16_and_close(bundle, trained_run, test_split):
    path, manifest = bundle
    m = onnx.load(str(path / "model.fp16.onnx"))
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in m.graph.initializer)
    art = manifest["artifacts"]["fp16"]
    assert "unchecked" not in art  # onnxruntime's CPU provider runs this float16 graph, so it is checked here
    ref = torch_logits(load_run(trained_run).model, torch.from_numpy(test_split[0]))
    got = runner.predict_logits(runner.make_session(path / "model.fp16.onnx", 1, "cpu"), test_split[0])
    assert (got.argmax(1) == ref.argmax(1)).mean() > 0.98 and np.abs(got - ref).max() < 0.05 * np.abs(ref).max()
    guard = art["guard_parity"]  # what judges it as a default: images outside the test split
    assert guard["images"] > 0 and guard["top1_agreement"] > 0.98 and "outside the test split" in guard["judged_on"]
    par = art["parity"]  # and the manifest reports what this run measured
    assert par["top1_agreement"] == pytest.approx(float((got.argmax(1) == ref.argmax(1)).mean()))


# ---------------------------------------------------------------- INT8
def test_qdq_graph_is_tensorrt_ready(bundle):
    """Symmetric int8 activations and weights (every zero point 0, type int8), per-channel weight scales, and no
    int32 bias DequantizeLinear (TensorRT's DequantizeLinear takes int8/fp8 inputs only)."""
    path, manifest = bundle
    m = onnx.load(str(path / "model.int8.onnx"))
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    qdq = [n for n in m.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq
    for n in qdq:
        zp = inits[n.input[2]]
        assert not zp.any(), f"{n.name}: zero point {zp}"
        assert zp.dtype == np.int8, n.name
        if n.op_type == "DequantizeLinear" and n.input[0] in inits:
            assert inits[n.input[0]].dtype == np.int8, n.name
    weight_dq = {n.output[0]: n for n in m.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits}
    convs = [n for n in m.graph.node if n.op_type == "Conv"]
    assert convs
    for conv in convs:
        dq = weight_dq[conv.input[1]]
        w, scale = inits[dq.input[0]], inits[dq.input[1]]
        assert w.dtype == np.int8 and scale.shape == (w.shape[0],), conv.name  # one scale per output channel
    convs_with_bias = [c for c in convs if len(c.input) > 2 and c.input[2]]
    assert convs_with_bias
    assert all(c.input[2] in inits and inits[c.input[2]].dtype == np.float32 for c in convs_with_bias)
    props = manifest["artifacts"]["int8"]["qdq"]
    assert props["max_abs_zero_point"] == 0 and props["per_channel_weights"] >= len(convs)
    assert props["quantized_types"] == ["int8"] and props["tensorrt_ready"]
    assert manifest["artifacts"]["int8"]["tensorrt_ready"]


def test_x86_recipe_uses_uint8_activations_and_is_not_tensorrt_ready(bundle, test_split, tmp_path, capfd):
    """The onnxruntime-x86 recipe (asymmetric uint8 activations, int32 biases) must not be handed to TensorRT; a
    histogram calibration prints nothing of onnxruntime's own progress into the export's output."""
    path, _ = bundle
    x, _ = test_split
    with tempfile.TemporaryDirectory() as tmp:
        pre = Q.preprocess(path / "model.onnx", Path(tmp) / "pre.onnx")
        Q.quantize_int8(pre, tmp_path / "u8.onnx", x[:32], Q.QuantConfig(symmetric_activations=False))
        capfd.readouterr()
        Q.quantize_int8(pre, tmp_path / "p.onnx", x[:32], Q.QuantConfig(method="percentile"))
        assert capfd.readouterr().out == ""
    props = Q.qdq_properties(tmp_path / "u8.onnx")
    assert {"uint8", "int8", "int32"} <= set(props["quantized_types"]) and not props["tensorrt_ready"]
    # the 1-channel stem reads 4 channels (onnxruntime's fast u8s8 convolution kernel needs multiples of 4)
    m = onnx.load(str(tmp_path / "u8.onnx"))
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    made = {n.output[0]: n for n in m.graph.node}
    stem = next(n for n in m.graph.node if n.op_type == "Conv")
    assert inits[made[stem.input[1]].input[0]].shape[1] == 4
    assert m.graph.input[0].type.tensor_type.shape.dim[1].dim_value == 1  # what the device feeds is unchanged


def test_padding_the_input_channels_leaves_the_outputs_unchanged(bundle, test_split, tmp_path):
    """pad_input_channels: zero channels and zero weights for them, so the float graph computes what it did."""
    import onnxruntime as ort

    from edgeppt.int8 import pad_input_channels

    path, _ = bundle
    x, _ = test_split
    m = onnx.load(str(path / "model.onnx"))
    assert pad_input_channels(m) == 1 and pad_input_channels(m) == 0  # the second call finds nothing to pad
    onnx.checker.check_model(m, full_check=True)
    padded = tmp_path / "padded.onnx"
    onnx.save(m, str(padded))
    outs = []
    for f in (path / "model.onnx", padded):
        s = ort.InferenceSession(str(f), providers=["CPUExecutionProvider"])
        outs.append(np.concatenate([s.run(None, {s.get_inputs()[0].name: x[i:i + 1]})[0] for i in range(16)]))
    np.testing.assert_allclose(outs[1], outs[0], rtol=1e-5, atol=1e-5)


def test_int8_accuracy_is_reported_and_within_the_threshold(bundle, test_split):
    path, manifest = bundle
    x, y = test_split
    int8 = manifest["artifacts"]["int8"]
    guard = int8["accuracy_guard"]
    assert Q.accuracy(path / "model.int8.onnx", x, y, "host") == pytest.approx(int8["accuracy"])  # reported only
    assert guard["met"] and guard["agreement"] >= 0.99 and "outside the test split" in guard["judged_on"]
    calib = int8["calibration"]
    assert calib["mode"] == "target" and calib["guard_disjoint"] and calib["guard_images"] > 0


def test_accuracy_guard_tries_every_remedy_and_keeps_the_best(bundle, test_split, tmp_path):
    path, _ = bundle
    x, y = test_split
    calib = x[:32]
    out = tmp_path / "q.onnx"
    guard_x = x[32:]
    # An impossible threshold: every remedy must be tried, recorded, and the most faithful kept.
    g = Q.quantize_guarded(path / "model.onnx", out, calib, guard_x, Q.QuantConfig(), max_drop_points=-100)
    steps = [a["step"] for a in g.attempts]
    assert steps[0] == "base recipe" and len(steps) == 5
    assert any("float" in s for s in steps) and any("percentile" in s for s in steps)
    assert not g.met and "still" in g.note
    assert g.agreement == max(a["agreement"] for a in g.attempts)
    ref = Q._logits(path / "model.onnx", guard_x, "host", 1)
    assert Q.agreement(ref, Q._logits(out, guard_x, "host", 1))[0] == pytest.approx(g.agreement)  # the kept file
    kept_float = g.attempts[-1]["config"]["float_nodes"]
    assert kept_float and len(kept_float) == 2
    assert steps[1].startswith("7-bit weights")
    # A lenient threshold: the first recipe is kept.
    g = Q.quantize_guarded(path / "model.onnx", out, calib, guard_x, Q.QuantConfig(), max_drop_points=100)
    assert len(g.attempts) == 1 and g.met
    # For TensorRT, or a guard without this host's kernels, the x86 saturation remedy is never tried
    g = Q.quantize_guarded(path / "model.onnx", out, calib, guard_x, Q.QuantConfig(), max_drop_points=-100,
                           saturation_remedy=False)
    assert len(g.attempts) == 4 and not any(a["step"].startswith("7-bit") for a in g.attempts)


def test_pseudo_sample_calibration(bundle, trained_run, tiny_bundle, test_split, tmp_path):
    from edgeppt.bundle import load_bundle

    path, _ = bundle
    x, y = test_split
    labelled, _ = run_data(load_run(trained_run))
    src = load_bundle(tiny_bundle)
    calib, info = Q.pseudo_calibration(src, labelled.x, 64, (1, 8, 8), seed=0)
    assert calib.shape == (64, 1, 8, 8) and calib.dtype == np.float32 and 0 <= calib.min() and calib.max() <= 1
    assert info["anchored_samples"] == 48 and info["mixed_samples"] == 16 and info["anchors"] == len(labelled)
    assert not any((calib[:, None] == labelled.x.numpy()[None]).all((2, 3, 4)).any(1))  # generated, never a real image
    again, _ = Q.pseudo_calibration(src, labelled.x, 64, (1, 8, 8), seed=0)
    np.testing.assert_array_equal(calib, again)  # reproducible
    data_free, info = Q.pseudo_calibration(src, None, 16, (1, 8, 8))
    assert info["anchored_samples"] == 0 and data_free.shape == (16, 1, 8, 8)
    # Exported so: calibrated on generated images alone, judged on the run's own target images outside the test split
    m = export_run(trained_run, tmp_path / "pseudo", formats="onnx,int8", int8_calibration="pseudo",
                   source=tiny_bundle, calibration_size=32, bench_runs=0, log=lambda s: None)
    info = m["artifacts"]["int8"]["calibration"]
    assert info["mode"] == "pseudo" and info["images"] == 32 and info["guard_images"] > 0
    assert info["guard_from"] == "the run's target images outside the test split"
    Q.quantize_guarded(path / "model.onnx", tmp_path / "p.onnx", calib, calib, Q.QuantConfig(), max_drop_points=5)
    assert Q.qdq_properties(tmp_path / "p.onnx")["max_abs_zero_point"] == 0
    assert Q.accuracy(tmp_path / "p.onnx", x, y) > 0.5


# ---------------------------------------------------------------- bundle
def test_manifest_hashes_every_file_and_a_tampered_file_is_refused(bundle, tmp_path):
    path, manifest = bundle
    files = {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()} - {"manifest.json"}
    assert set(manifest["files"]) == files
    assert {"model.onnx", "model.int8.onnx", "model.fp16.onnx", "labels.txt", "preprocess.json", "runner.py",
            "ort_timing.py", "cpu_int8.py", "image_io.py", "build_engine.py", "build_engine.sh"} <= files
    assert manifest["preprocess"]["image_size"] == 8 and manifest["preprocess"]["channels"] == 1
    assert (path / "labels.txt").read_text().split() == ["0", "1", "2", "3", "4"]
    verify_bundle(path)
    bad = tmp_path / "bad"
    shutil.copytree(path, bad)
    with open(bad / "model.int8.onnx", "r+b") as f:
        f.seek(-8, os.SEEK_END)
        f.write(b"\x00" * 8)
    with pytest.raises(EdgepptError, match="model.int8.onnx.*sha256"):
        verify_bundle(bad)
    r = subprocess.run([sys.executable, "runner.py", "bench"], cwd=bad, capture_output=True, text=True)
    assert r.returncode == 3 and "model.int8.onnx" in r.stderr  # the runner refuses to run it too
    (bad / "labels.txt").unlink()
    with pytest.raises(EdgepptError, match="labels.txt: missing"):
        verify_bundle(bad)


def test_what_ships_to_the_device_runs_on_python_3_8(bundle):
    """The bundle's Python files run on the device's own Python, not edgeppt's: JetPack 5 ships 3.8. vermin reads
    each for the newest language feature or library call it uses. Its graphs declare IR version 9 at most."""
    path, _ = bundle
    shipped = sorted(str(f) for f in path.glob("*.py"))
    assert {Path(f).name for f in shipped} >= {"runner.py", "build_engine.py"}, shipped
    for f in path.glob("*.onnx"):  # and its graphs load in onnxruntime before 1.18 (JetPack 5 and 6.0 wheels)
        assert onnx.load(str(f), load_external_data=False).ir_version <= 9, f.name
    vermin = "from vermin.main import main; raise SystemExit(main())"  # it has no __main__ module
    res = subprocess.run([sys.executable, "-c", vermin, "-t=3.8-", "--violations", "--no-tips", *shipped],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_the_runner_verifies_and_benches_without_pillow_and_says_what_classify_needs(bundle, tmp_path):
    """A device without Pillow: verify and bench run (they read no image file); classify says in one line what to
    install, instead of a traceback or one error per image."""
    path, _ = bundle
    (tmp_path / "PIL").mkdir()
    (tmp_path / "PIL" / "__init__.py").write_text("raise ImportError('No module named PIL')\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    ok = subprocess.run([sys.executable, "runner.py", "verify"], cwd=path, capture_output=True, text=True, env=env)
    assert ok.returncode == 0 and ok.stdout.startswith("ok:"), ok.stderr
    bench = subprocess.run([sys.executable, "runner.py", "bench", "--json", "--runs", "2"], cwd=path,
                           capture_output=True, text=True, env=env)  # the shipped samples need Pillow; timings do not
    assert bench.returncode == 0, bench.stderr
    rows = json.loads(bench.stdout.strip().splitlines()[-1])["results"]
    assert rows and all("batch1" in r and "error" not in r and "sample_accuracy" not in r for r in rows), rows
    r = subprocess.run([sys.executable, "runner.py", "classify", *map(str, sorted(path.glob("samples/*/*.png")))],
                       cwd=path, capture_output=True, text=True, env=env)
    assert r.returncode == 1 and r.stdout == "" and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "pip install numpy onnxruntime pillow" in r.stderr


def test_files_put_beside_the_runner_never_run(bundle, tmp_path):
    """The bundle's folder is data: modules put beside runner.py and build_engine.py (json.py, numpy.py, ...) run
    in none of their commands, and a shipped helper that differs from the manifest is refused."""
    path, _ = bundle
    planted, ran = tmp_path / "planted", tmp_path / "ran"
    shutil.copytree(path, planted)
    for name in ("json", "numpy", "hashlib", "argparse", "types", "tensorrt", "onnxruntime", "tempfile"):
        (planted / f"{name}.py").write_text(f"open({str(ran)!r}, 'a').write('{name} ')\n")
    for cmd in (["runner.py", "verify"], ["runner.py", "bench", "--runs", "2", "--max-seconds", "1"],
                ["runner.py", "classify", str(next(planted.glob("samples/*/*.png")))], ["build_engine.py", "--help"]):
        r = subprocess.run([sys.executable, *cmd], cwd=planted, capture_output=True, text=True)
        assert r.returncode == 0, (cmd, r.stderr)
    assert not ran.exists(), ran.read_text()
    with open(planted / "ort_timing.py", "a") as f:
        f.write(f"open({str(ran)!r}, 'a').write('ort_timing')\n")
    load = f"import runpy; runpy.run_path({str(planted / 'runner.py')!r})['_sibling']('ort_timing')"
    runner_module = subprocess.run([sys.executable, "-c", load], cwd=tmp_path, capture_output=True, text=True)
    assert runner_module.returncode != 0 and "ort_timing.py: not the file manifest.json lists" in runner_module.stderr
    assert not ran.exists()


def test_runner_classifies_image_files(bundle, tmp_path):
    path, manifest = bundle
    images = sorted(path.glob("samples/*/*.png"))
    assert len(images) == 15
    (tmp_path / "broken.png").write_bytes(b"not a png")
    r = subprocess.run([sys.executable, "runner.py", "classify", *map(str, images), str(tmp_path / "broken.png")],
                       cwd=path, capture_output=True, text=True)
    assert r.returncode == 1, r.stderr  # one unreadable file: reported, the others still classified
    lines = [json.loads(ln) for ln in r.stdout.splitlines()]
    assert "error" in lines[-1]
    preds = [ln["class"] for ln in lines[:-1]]
    truth = [p.parent.name for p in images]
    # The same images through the Python API (PIL -> preprocess -> INT8 ONNX) give the same answers.
    s = runner.make_session(path / "model.int8.onnx", 1, "cpu")
    x = np.stack([runner.preprocess(p, manifest["preprocess"]) for p in images])
    logits = runner.predict_logits(s, x)
    assert preds == [manifest["classes"][i] for i in logits.argmax(1)]
    assert np.mean([p == t for p, t in zip(preds, truth)]) >= 0.6
    # each listed probability is the softmax of that image's logits (the default model's, one image a call, as the
    # runner classifies), listed in descending order, and no class left out is more probable than one listed
    default = runner.make_session(path / runner.default_model(manifest), 1, "cpu")
    probs = np.concatenate([runner.predict_logits(default, xi[None]) for xi in x])
    probs = np.exp(probs - probs.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    for ln, pr in zip(lines[:-1], probs):
        listed = [manifest["classes"].index(t["class"]) for t in ln["top"]]
        assert len(listed) == 3 and [t["p"] for t in ln["top"]] == sorted((t["p"] for t in ln["top"]), reverse=True)
        assert np.allclose([t["p"] for t in ln["top"]], pr[listed], atol=1e-4)
        assert min(pr[listed]) >= max(np.delete(pr, listed)) - 1e-4
    # A camera-like file: RGB JPEG at 8x the model's size -> gray, bilinear resize, [0, 1], as the spec says.
    from PIL import Image

    big = tmp_path / "big.jpg"
    Image.open(images[0]).convert("RGB").resize((64, 64), Image.NEAREST).save(big, quality=95)
    x_big = runner.preprocess(big, manifest["preprocess"])
    assert x_big.shape == (1, 8, 8) and x_big.dtype == np.float32
    x_png = runner.preprocess(images[0], manifest["preprocess"])
    assert 0 <= x_big.min() and x_big.max() <= 1 and np.corrcoef(x_big.ravel(), x_png.ravel())[0, 1] > 0.9
    r = subprocess.run([sys.executable, "runner.py", "classify", str(big), "--top", "2"], cwd=path, capture_output=True,
                       text=True)
    assert r.returncode == 0 and len(json.loads(r.stdout)["top"]) == 2
    # A 16-bit camera file of the same picture, on a device without edgeppt (the bundle's own image_io.py reads
    # it): the same input as the 8-bit file, not one clipped white.
    deep = tmp_path / "deep.png"
    Image.fromarray(np.asarray(Image.open(images[0]).convert("L")).astype(np.uint16) * 257).save(deep)
    assert np.array_equal(runner.preprocess(deep, manifest["preprocess"]), x_png)
    (tmp_path / "no" / "edgeppt").mkdir(parents=True)
    (tmp_path / "no" / "edgeppt" / "__init__.py").write_text("raise ImportError('edgeppt is not on the device')\n")
    r = subprocess.run([sys.executable, "runner.py", "classify", str(images[0]), str(deep)], cwd=path,
                       capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(tmp_path / "no")})
    assert r.returncode == 0, r.stderr
    same, deep_line = (json.loads(ln) for ln in r.stdout.splitlines())
    assert deep_line["top"] == same["top"]
    # Mistakes on the device are one line each, never a traceback; a model the manifest does not list never runs.
    (path / "extra.onnx").write_bytes((path / "model.onnx").read_bytes())
    for args, said in ((["--model", "typo.onnx"], "--model typo.onnx: not a file of this bundle's manifest"),
                       (["--model", "extra.onnx"], "--model extra.onnx: not a file of this bundle's manifest"),
                       (["--top", "0"], "argument --top: 0: give 1 or more")):
        r = subprocess.run([sys.executable, "runner.py", "classify", str(images[0]), *args], cwd=path,
                           capture_output=True, text=True)
        assert r.returncode != 0 and said in r.stderr and "Traceback" not in r.stderr, r.stderr
    (path / "extra.onnx").unlink()
    # A default this runtime cannot load (as fp16 on a CPU build without its kernels): classify says so and uses
    # the fp32 model; asked for by --model, it fails in one line
    copy = tmp_path / "copy"
    shutil.copytree(path, copy)
    m = json.loads((copy / "manifest.json").read_text())
    m["default_format"], m["artifacts"]["int8"]["file"] = "int8", "labels.txt"  # listed, verified, not a model
    (copy / "manifest.json").write_text(json.dumps(m))
    r = subprocess.run([sys.executable, "runner.py", "classify", str(images[0])], cwd=copy, capture_output=True,
                       text=True)
    assert r.returncode == 0 and "labels.txt does not load here" in r.stderr and "classifying with model.onnx" in \
        r.stderr and json.loads(r.stdout)["class"] == same["class"], r.stderr
    r = subprocess.run([sys.executable, "runner.py", "classify", str(images[0]), "--model", "labels.txt"], cwd=copy,
                       capture_output=True, text=True)
    assert r.returncode != 0 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_runner_and_bench_measure_every_onnx_model(bundle, tmp_path):
    path, manifest = bundle
    # As on a device without edgeppt: the runner times with the bundle's own copy of the timing helper.
    (tmp_path / "no" / "edgeppt").mkdir(parents=True)
    (tmp_path / "no" / "edgeppt" / "__init__.py").write_text("raise ImportError('edgeppt is not on the device')\n")
    r = subprocess.run([sys.executable, "runner.py", "bench", "--json", "--runs", "3"], cwd=path,
                       capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(tmp_path / "no")})
    assert r.returncode == 0, r.stderr
    rows = {row["format"]: row for row in json.loads(r.stdout)["results"]}
    assert set(rows) == {"onnx", "int8", "fp16"}
    assert json.loads(r.stdout)["int8_instructions"] == int8_instructions()  # from the bundle's own cpu_int8.py
    assert not [f for f, row in rows.items() if "error" in row]  # the CPU runs every format, fp16 included
    for row in rows.values():
        assert row["batch1"]["median_ms"] > 0 and row["samples"] == 15
    report = bench_bundle(path, runs=3)
    by = {row["format"]: row for row in report["results"]}
    assert by["onnx"]["test_accuracy"] == pytest.approx(manifest["artifacts"]["onnx"]["accuracy"])
    assert by["int8"]["test_accuracy"] == pytest.approx(manifest["artifacts"]["int8"]["accuracy"])
    r = CliRunner().invoke(app, ["bench", str(path), "--runs", "2", "--json"])
    assert r.exit_code == 0, r.output
    assert {row["format"] for row in json.loads(r.stdout)["results"]} == {"onnx", "int8", "fp16"}
    r = CliRunner().invoke(app, ["bench", str(path), "--runs", "2"], env={"COLUMNS": "200"})
    assert r.exit_code == 0 and "test accuracy" in r.output and "note:" not in r.output, r.output


def test_bench_says_when_its_accuracy_is_the_samples(bundle, monkeypatch):
    """Where the run's test split cannot be rebuilt (its images moved, say), the accuracy shown is the shipped
    samples': the table and a note say so instead of showing it as the accuracy."""
    from edgeppt.export import bench

    monkeypatch.setattr(bench, "_test_split", lambda manifest: None)
    r = CliRunner().invoke(app, ["bench", str(bundle[0]), "--runs", "2"], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert "sample accuracy" in r.output and "test split could not be rebuilt" in r.output


# ---------------------------------------------------------------- TensorRT
def test_tensorrt_build_files_are_written(bundle, tmp_path):
    path, manifest = bundle
    trt = manifest["artifacts"]["tensorrt"]
    sh = (path / "build_engine.sh").read_text()
    assert "trtexec --onnx=model.int8.onnx --saveEngine=model.int8.engine $INT8" in sh
    assert "trtexec --onnx=model.fp16.onnx --saveEngine=model.fp16.engine $FP16" in sh
    assert "--timingCacheFile=timing.cache" in sh and os.access(path / "build_engine.sh", os.X_OK)
    assert trt["trtexec"][0].replace("--stronglyTyped", "$INT8") in sh
    # the flags the device's trtexec takes: TensorRT 10+ --stronglyTyped; 8.x --int8 --fp16 for the Q/DQ graph
    # and --fp16 alone for the float16 one (a trtexec stand-in)
    for help_text, expected in (("  --stronglyTyped  Create a strongly typed network", ("--stronglyTyped",) * 2),
                                ("  --int8  Enable int8 precision", ("--int8 --fp16", "--fp16")),
                                ("  --onnx  The ONNX model", ("model.int8.engine", "model.fp16.engine"))):
        fake = tmp_path / help_text.split()[0].strip("-")
        fake.mkdir()
        (fake / "trtexec").write_text(f"#!/bin/sh\n[ \"$1\" = --help ] && echo '{help_text}' && exit 0\n"
                                      "echo \"$@\" >> calls.txt\n")
        (fake / "trtexec").chmod(0o755)
        shutil.copytree(path, fake / "b")
        r = subprocess.run(["sh", "build_engine.sh"], cwd=fake / "b", capture_output=True, text=True,
                           env={**os.environ, "PATH": f"{fake}:{os.environ['PATH']}"})
        assert r.returncode == 0, r.stderr
        calls = (fake / "b" / "calls.txt").read_text().splitlines()
        assert len(calls) == len(trt["trtexec"]) == 2, calls
        int8, fp16 = (next(c for c in calls if f"model.{f}.onnx" in c) for f in ("int8", "fp16"))
        assert expected[0] in int8 and expected[1] in fp16 and (expected[1] == expected[0] or "--int8" not in fp16)
        assert help_text.split()[0] != "--onnx" or not any("--int8" in c or "--fp16" in c or "--stronglyTyped" in c
                                                          for c in calls)  # neither flag listed: none passed
    dyn = tensorrt.trtexec_command("m.onnx", "m.engine", "input", [1, 1, 8, 8], dynamic=True)
    assert "--minShapes=input:1x1x8x8" in dyn and "--maxShapes=input:32x1x8x8" in dyn
    # The build script is standalone: it runs with the standard library alone (-I: no edgeppt on the path).
    r = subprocess.run([sys.executable, "-I", str(path / "build_engine.py"), "model.int8.onnx", str(tmp_path / "e")],
                       cwd=path, capture_output=True, text=True)
    ok, why = tensorrt.trt_available()
    if not ok:
        assert r.returncode == 2 and "cannot build" in r.stderr
        assert trt["built"] is False and trt["reason"] == why
    else:  # built at export time too, one engine per GPU-ready model, with the timing cache beside them
        assert r.returncode == 0, r.stderr
        assert trt["built"] and set(trt["engines"]) == {"int8", "fp16"} and (path / "timing.cache").is_file()
        assert all((path / f).is_file() for f in trt["engines"].values())


def test_tensorrt_engine_build(bundle, trained_run, tmp_path):
    """Where TensorRT and a GPU are present: engines from the QDQ INT8 and the FP16 model (strongly typed), a dynamic
    batch through an optimization profile, and the timing cache carried from one build to the next."""
    ok, why = tensorrt.trt_available()
    if not ok:
        pytest.skip(f"TensorRT engine build skipped: {why}")
    import tensorrt as trt

    path, _ = bundle
    runtime = trt.Runtime(trt.Logger(trt.Logger.ERROR))
    engine, cache = tensorrt.build_engine(path / "model.int8.onnx")
    assert len(engine) > 1000 and len(cache) > 0
    e = runtime.deserialize_cuda_engine(engine)
    assert e is not None and e.num_io_tensors == 2 and e.get_tensor_name(0) == "input"
    engine2, cache2 = tensorrt.build_engine(path / "model.fp16.onnx", cache)
    assert runtime.deserialize_cuda_engine(engine2) is not None and len(cache2) >= len(cache)
    run = load_run(trained_run)
    dyn = export_onnx(run.model, tmp_path / "dyn.onnx", run.input_shape, dynamic_batch=True)
    e = runtime.deserialize_cuda_engine(tensorrt.build_engine(dyn, cache2, max_batch=8)[0])
    assert [tuple(s) for s in e.get_tensor_profile_shape("input", 0)] == [(1, 1, 8, 8), (1, 1, 8, 8), (8, 1, 8, 8)]



def test_tensorrt_api_names_are_read_from_the_build_script_and_looked_up():
    """tensorrt_api lists every TensorRT name the build script uses (typed through its locals) and finds the ones a
    module lacks; a local it cannot type is an error, so the list cannot fall behind the script."""
    from types import SimpleNamespace

    from edgeppt.export.tensorrt_api import Use, check, uses

    used = uses()
    for name in ("trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED", "trt.Builder.build_serialized_network",
                 "trt.IBuilderConfig.set_timing_cache(ignore_mismatch=...)", "trt.ITimingCache.serialize",
                 "trt.OnnxParser.num_errors", "trt.MemoryPoolType.WORKSPACE"):
        assert name in map(str, used)
    script = "def f():\n    import tensorrt as trt\n    config = trt.Builder(0).create_builder_config()\n" \
             "    config.set_flag(trt.BuilderFlag.INT8)\n"
    assert {str(u) for u in uses(script)} >= {"trt.BuilderFlag.INT8", "trt.IBuilderConfig.set_flag"}
    with pytest.raises(ValueError, match="'x' from TensorRT"):
        uses(script.replace("config = trt.Builder(0)", "x = trt.Builder(0)"))

    def set_timing_cache(cache, ignore_mismatch):
        """set_timing_cache(self: IBuilderConfig, cache: ITimingCache, ignore_mismatch: bool) -> bool"""

    fake = SimpleNamespace(BuilderFlag=SimpleNamespace(FP16=1), IBuilderConfig=SimpleNamespace(
        set_timing_cache=set_timing_cache))
    got = dict(check(fake, [Use("BuilderFlag", "FP16"), Use("BuilderFlag", "INT8"), Use("Missing", "x"),
                            Use("IBuilderConfig", "set_timing_cache", "ignore_mismatch"),
                            Use("IBuilderConfig", "set_timing_cache", "strict")]))
    assert list(got.values()) == [True, False, False, True, False]


def test_tensorrt_api_exists_in_the_real_bindings():
    """Every name the build script uses exists in TensorRT's real Python module (no GPU needed: nothing is called).
    scripts/check-tensorrt-api installs the bindings of TensorRT 10 and 11 from PyPI and runs this check."""
    try:
        import tensorrt as trt
    except ImportError:
        pytest.skip("TensorRT's Python bindings are not installed (an optional check: scripts/check-tensorrt-api)")
    from edgeppt.export.tensorrt_api import check

    assert [str(u) for u, ok in check(trt) if not ok] == []

# ---------------------------------------------------------------- deploy over SSH (the `sshd` fixture: conftest.py)
def test_deploy_over_ssh(bundle, sshd, tmp_path):
    path, manifest = bundle
    r = subprocess.run(sshd.command("echo", "$HOME"), capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and r.stdout.strip(), r.stderr  # a real login shell on the server
    remote = tmp_path / "device" / "digits"
    report = deploy_bundle(path, sshd.host, remote_dir=str(remote), port=sshd.port, identity=sshd.identity,
                           ssh_options=sshd.ssh_options, python=sys.executable, runs=3, max_seconds=2)
    assert report["verified_files"] == len(manifest["files"])
    rows = {r["format"]: r for r in report["results"]}
    assert {"onnx", "int8"} <= set(rows)
    assert rows["int8"]["batch1"]["median_ms"] > 0 and rows["int8"]["samples"] == 15
    assert (remote / "runner.py").read_bytes() == (path / "runner.py").read_bytes()  # copied byte for byte
    assert not runner.verify(remote)
    assert report["int8_instructions"] == int8_instructions()  # the device's own flags (here: this host)
    assert report["on_device"]["fastest"] in rows and report["on_device"]["default"] == manifest["default_format"]
    # Only the files the manifest lists travel (a file put in the folder after the export stays here), and the
    # TensorRT engines the device built survive a redeploy.
    extra = tmp_path / "with-extra"
    shutil.copytree(path, extra)
    (extra / "json.py").write_text("raise SystemExit('a file the manifest does not list ran')\n")
    (remote / "trt_cache").mkdir()
    (remote / "trt_cache" / "a.engine").write_bytes(b"engine")
    deploy_bundle(extra, sshd.host, remote_dir=str(remote), port=sshd.port, identity=sshd.identity,
                  ssh_options=sshd.ssh_options, python=sys.executable, runs=1, max_seconds=1)
    assert not (remote / "json.py").exists() and (remote / "trt_cache" / "a.engine").read_bytes() == b"engine"
    # A bundle that fails on the device (here: a python that cannot run the runner) leaves the one it runs as it was.
    (remote / "marker").write_text("the running bundle")  # (not a bundle file: the swap would remove it)
    with pytest.raises(EdgepptError, match="the bundle there is unchanged"):
        deploy_bundle(path, sshd.host, remote_dir=f"{remote}/", port=sshd.port, identity=sshd.identity,
                      ssh_options=sshd.ssh_options, python="/bin/false")
    assert (remote / "marker").is_file() and not Path(f"{remote}.new").exists()
    # ~/ is the login's home on the device (a quoted ~ would be a folder named ~)
    home = Path(subprocess.run(sshd.command("echo", "$HOME"), capture_output=True, text=True).stdout.strip())
    name = f".edgeppt-deploy-test-{os.getpid()}"
    try:
        deploy_bundle(path, sshd.host, remote_dir=f"~/{name}", port=sshd.port, identity=sshd.identity,
                      ssh_options=sshd.ssh_options, python=sys.executable, runs=1, max_seconds=1)
        assert not runner.verify(home / name)
    finally:
        shutil.rmtree(home / name, ignore_errors=True)
    opts = [a for o in sshd.ssh_options for a in ("-o", o)]
    r = CliRunner().invoke(app, ["deploy", str(path), "--host", sshd.host, "--port", str(sshd.port), "--identity",
                                 str(sshd.identity), *opts, "--remote-dir", str(tmp_path / "cli"), "--python",
                                 sys.executable, "--runs", "2"])
    assert r.exit_code == 0, r.output
    assert "files verified on the device" in " ".join(r.output.split())
    assert "fastest here" in " ".join(r.output.split())
    assert (tmp_path / "cli" / "manifest.json").is_file()


def test_deploy_refuses_a_tampered_bundle_and_a_bad_host(bundle, sshd, tmp_path):
    path, _ = bundle
    bad = tmp_path / "bad"
    shutil.copytree(path, bad)
    (bad / "labels.txt").write_text("x\n")
    with pytest.raises(EdgepptError, match="labels.txt"):
        deploy_bundle(bad, sshd.host, port=sshd.port, identity=sshd.identity, ssh_options=sshd.ssh_options)
    with pytest.raises(EdgepptError, match="copying to"):  # the wrong key: refused by the server, reported
        deploy_bundle(path, sshd.host, remote_dir=str(tmp_path / "x"), port=sshd.port,
                      identity=sshd.identity.with_name("host_key"), ssh_options=sshd.ssh_options)


def test_a_signed_bundle_is_verified_by_the_runner_here_and_on_the_device(trained_run, sshd, tmp_path,
                                                                           monkeypatch):
    from edgeppt.signing import keygen

    monkeypatch.setenv("EDGEPPT_CONFIG_DIR", str(tmp_path / "config"))
    keygen(tmp_path / "owner")
    keygen(tmp_path / "other")
    path = tmp_path / "signed"
    export_run(trained_run, path, formats=["onnx"], bench_runs=0, sign=tmp_path / "owner.key", log=lambda s: None)
    assert (path / "signature.json").is_file() and "signature.json" not in json.loads(
        (path / "manifest.json").read_text())["files"]

    def verify(folder: Path, *keys: Path) -> subprocess.CompletedProcess:
        args = [a for k in keys for a in ("--trusted-key", str(k))]
        return subprocess.run([sys.executable, "runner.py", "verify", *args], cwd=folder, capture_output=True,
                              text=True, env={**os.environ, "EDGEPPT_CONFIG_DIR": str(tmp_path / "config")})

    r = verify(path, tmp_path / "owner.pub")
    assert r.returncode == 0 and "signature is valid" in r.stdout
    assert verify(path, tmp_path / "other.pub").returncode == 3  # signed, but not by the key the device trusts
    (tmp_path / "config" / "trusted-keys").mkdir(parents=True)
    shutil.copy(tmp_path / "owner.pub", tmp_path / "config" / "trusted-keys" / "owner.pub")
    assert verify(path).returncode == 0  # the keyring names the signer
    assert verify(path, tmp_path / "other.pub").returncode == 3  # a keyring key never stands in for the given one
    shutil.rmtree(tmp_path / "config" / "trusted-keys")
    forged = tmp_path / "forged"
    shutil.copytree(path, forged)
    (forged / "labels.txt").write_text("a\nb\nc\nd\ne\n")
    m = json.loads((forged / "manifest.json").read_text())
    m["files"]["labels.txt"] = runner.sha256_file(forged / "labels.txt")
    (forged / "manifest.json").write_text(json.dumps(m))
    r = subprocess.run([sys.executable, "runner.py", "classify", "--trusted-key", str(tmp_path / "owner.pub"),
                        str(next((forged / "samples").rglob("*.png")))], cwd=forged, capture_output=True, text=True)
    assert r.returncode == 3 and "altered after it was signed" in r.stderr and not r.stdout  # no model ran
    (forged / "signature.json").unlink()
    assert "not signed" in verify(forged, tmp_path / "owner.pub").stderr
    report = deploy_bundle(path, sshd.host, remote_dir=str(tmp_path / "device" / "signed"), port=sshd.port,
                           identity=sshd.identity, ssh_options=sshd.ssh_options, python=sys.executable, runs=2,
                           max_seconds=1, trusted_keys=[tmp_path / "owner.pub"])
    assert report["verified_files"] > 0 and (tmp_path / "device" / "signed.trusted-keys" / "0.pub").is_file()
    with pytest.raises(EdgepptError, match="not among the trusted keys"):
        deploy_bundle(path, sshd.host, remote_dir=str(tmp_path / "device" / "x"), port=sshd.port,
                      identity=sshd.identity, ssh_options=sshd.ssh_options, trusted_keys=[tmp_path / "other.pub"])


# ---------------------------------------------------------------- bad input
def test_run_directory_without_a_model(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(EdgepptError, match="no model.pt"):
        export_run(tmp_path, tmp_path / "out", log=lambda s: None)
    r = CliRunner().invoke(app, ["export", str(tmp_path)])
    assert r.exit_code == 2 and "no model.pt" in " ".join(r.output.split())


def test_unknown_format_and_device(trained_run, tmp_path):
    with pytest.raises(EdgepptError, match=r"unknown format\(s\) \['tflite'\]"):
        export_run(trained_run, tmp_path / "o", formats="onnx,tflite", log=lambda s: None)
    with pytest.raises(EdgepptError, match="unknown device"):
        export_run(trained_run, tmp_path / "o", device="tpu", log=lambda s: None)
    with pytest.raises(EdgepptError, match="int8_calibration: Input should be .target. or .pseudo."):
        export_run(trained_run, tmp_path / "o", int8_calibration="magic", log=lambda s: None)
    r = CliRunner().invoke(app, ["export", str(trained_run), "--formats", "onnx,tflite", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "tflite" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "o").exists()


def test_the_default_artifact_is_the_fastest_faithful_one_and_never_slower_than_fp32():
    from edgeppt.devices import load_profile
    from edgeppt.export.default import choose_default

    x86, jetson = load_profile("x86-cpu"), load_profile("jetson")
    arts = {"onnx": {}, "int8": {"accuracy_guard": {"met": True}}}

    def rows(onnx_ms: float, int8_ms: float) -> list[dict]:
        return [{"format": "pytorch"}, {"format": "onnx", "batch1": {"median_ms": onnx_ms}},
                {"format": "int8", "batch1": {"median_ms": int8_ms}}]

    assert choose_default(arts, rows(0.13, 0.31), x86)[0] == "onnx"  # an int8 model made slower never ships
    assert choose_default(arts, rows(0.30, 0.12), x86)[0] == "int8"
    assert choose_default(arts, rows(0.20, 0.20), x86)[0] == "onnx"  # a tie keeps FP32
    unmet = {"onnx": {}, "int8": {"accuracy_guard": {"met": False}}}
    fmt, why = choose_default(unmet, rows(0.30, 0.12), x86)
    assert fmt == "onnx" and "int8 left out: outside the accuracy budget" in why
    gpu = {"onnx": {}, "fp16": {"guard_parity": {"top1_agreement": 1.0}}}
    fmt, why = choose_default(gpu, rows(0.13, 0.31), jetson)
    assert fmt == "fp16" and "predicted" in why  # this host's timings do not decide for a Jetson
    # FP16 is judged outside the test split: its agreement on the test split alone decides nothing
    test_only = {"onnx": {}, "fp16": {"parity": {"top1_agreement": 1.0}, "guard_parity": {"top1_agreement": 0.9}}}
    assert choose_default(test_only, rows(0.13, 0.31), jetson)[0] == "onnx"
    # Where int8 was timed and lost, the reason names what the CPU lacks or has.
    _, why = choose_default(arts, rows(0.13, 0.31), x86, cpu_int8=[])
    assert "no 8-bit dot-product instructions" in why
    _, why = choose_default(arts, rows(0.13, 0.31), x86, cpu_int8=["AVX512-VNNI"])
    assert why.endswith("this CPU has AVX512-VNNI")
    assert "dot-product" not in choose_default(arts, rows(0.30, 0.12), x86, cpu_int8=[])[1]  # int8 won: no excuse
    # The default's latency here against the profile's budget, where this host is the device
    from edgeppt.export.default import budget_check

    tight = x86.model_copy(update={"budgets": x86.budgets.model_copy(update={"latency_ms": 0.2})})
    assert budget_check("onnx", rows(0.30, 0.12), arts, tight) == {"budget_ms": 0.2, "default_ms": 0.3,
                                                                    "within": False}
    assert budget_check("int8", rows(0.30, 0.12), arts, tight)["within"] is True
    assert budget_check("fp16", rows(0.30, 0.12), {"onnx": {}, "fp16": {}}, jetson) is None  # predicted: no say


def test_the_device_benchmark_is_held_against_the_bundle_default():
    from edgeppt.export.default import on_device

    manifest = {"default_format": "int8", "artifacts": {
        "onnx": {"file": "model.onnx"}, "int8": {"file": "model.int8.onnx", "accuracy_guard": {"met": True}},
        "fp16": {"file": "model.fp16.onnx", "parity": {"top1_agreement": 0.5}}}}

    def report(onnx_ms: float, int8_ms: float, flags: list[str] | None) -> dict:
        return {"int8_instructions": flags, "results": [
            {"format": "onnx", "batch1": {"median_ms": onnx_ms}}, {"format": "int8", "batch1": {"median_ms": int8_ms}},
            {"format": "fp16", "batch1": {"median_ms": 0.01}}]}  # the fastest, but outside the accuracy budget

    slow = on_device(manifest, report(0.13, 0.31, []))  # the export host chose int8; this device runs it slower
    assert slow["fastest"] == "onnx" and slow["default"] == "int8"
    assert "not the default int8" in slow["note"] and "--model model.onnx" in slow["note"]
    assert "no 8-bit dot-product instructions" in slow["note"]
    fast = on_device(manifest, report(0.30, 0.12, ["ARM dot product (SDOT)"]))
    assert fast["fastest"] == "int8" and "fastest here too" in fast["note"] and fast["note"].endswith("(SDOT)")
    assert on_device(manifest, report(0.20, 0.20, None))["fastest"] == "int8"  # a tie keeps the default
    assert on_device(manifest, {"results": [{"format": "onnx", "error": "x"}]})["fastest"] is None
    broken = on_device(manifest, {"int8_instructions": [], "results": [
        {"format": "onnx", "batch1": {"median_ms": 0.2}}, {"format": "int8", "error": "NotImplemented: ConvInteger"}]})
    assert broken["fastest"] == "onnx" and "the default (int8) does not run here (NotImplemented: ConvInteger)" in \
        broken["note"] and "falls back to model.onnx" in broken["note"]


def test_cpu_int8_instructions_are_read_from_cpuinfo_flags():
    avx2 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n"
    assert int8_instructions(avx2) == []
    assert int8_instructions(avx2.replace("avx2", "avx2 avx512f avx512_vnni")) == ["AVX512-VNNI"]
    assert int8_instructions("processor\t: 0\nFeatures\t: fp asimd asimddp i8mm\n") == [
        "ARM dot product (SDOT)", "ARM I8MM"]
    assert int8_instructions("processor\t: 0\n") is None  # no flags line: cannot tell, not "none"
    if Path("/proc/cpuinfo").is_file():  # this host's own file has its flags
        assert isinstance(int8_instructions(), list)


def test_device_profile_drives_the_export(bundle, trained_run, tmp_path):
    """--device takes the core's profiles: a built-in name or a user YAML; its export section decides the formats,
    the int8 activation type, the INT8 evaluator, the runner default and the threads."""
    from edgeppt.devices import load_profile

    _, manifest = bundle
    x86 = load_profile("x86-cpu")
    assert manifest["device"] == "x86-cpu" and manifest["threads"] == x86.threads
    timed = {r["format"]: r["batch1"]["median_ms"] for r in manifest["results"] if "batch1" in r}
    assert manifest["default_format"] == min(timed, key=timed.get)  # x86-cpu is measured here: the fastest ships
    assert "fastest at batch 1 on this host" in manifest["default_reason"]
    assert manifest["device_profile"]["export"] == x86.export.model_dump(mode="json")
    board = tmp_path / "board.yaml"
    board.write_text("name: my-board\nthreads: 1\nexport:\n  formats: [onnx, int8]\n  symmetric_activations: true\n"
                     "  evaluator: reference\n  default_format: onnx\n")
    m = export_run(trained_run, tmp_path / "o", device=board, calibration_size=32, max_int8_drop=100, bench_runs=0,
                   samples_per_class=1, log=lambda s: None)
    assert m["device"] == "my-board" and m["threads"] == 1 and m["default_format"] == "onnx"
    assert "not timed here" in m["default_reason"]  # bench_runs 0: the profile decides, and says so
    assert set(m["artifacts"]) == {"onnx", "int8"}  # the profile's formats when --formats is not given
    int8 = m["artifacts"]["int8"]
    assert int8["evaluator"] == "reference" and int8["qdq"]["tensorrt_ready"]  # symmetric: from the profile
    (tmp_path / "typo.yaml").write_text("name: typo\nexport:\n  formts: [onnx]\n")
    r = CliRunner().invoke(app, ["export", str(trained_run), "--device", str(tmp_path / "typo.yaml"),
                                 "--out", str(tmp_path / "o2")])
    assert r.exit_code == 2 and "formts" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "o2").exists()


def test_calibration_images_given_by_the_user_leave_the_test_images_out(trained_run, test_split, tmp_path):
    """The whole target as --calibration-data (the natural thing to give) holds the test split: those images
    neither calibrate INT8 nor judge it. Given test images alone are refused in one line."""
    from edgeppt.data import exact_copies, load_dataset
    from edgeppt.export.exporter import target_images, without_test

    run = load_run(trained_run)
    x, dropped = target_images(run, "digits:0,1,2,3,4", test_split[0])
    # every test image, and any training image with the same pixels as one (the 8x8 digits repeat a few)
    assert dropped >= len(test_split[0]) and len(x) + dropped == len(load_dataset("digits:0,1,2,3,4"))
    assert not exact_copies(x, torch.from_numpy(test_split[0])).any()
    with pytest.raises(EdgepptError, match="every image is one of the run's test images"):
        without_test(torch.from_numpy(test_split[0]), test_split[0], "the images given")
    m = export_run(trained_run, tmp_path / "b", formats="onnx,int8", calibration_data="digits:0,1,2,3,4",
                   calibration_size=32, bench_runs=0, log=lambda s: None)
    # (among the images read: a fixed 2 x (32 + 256 guard images) of the spec's, not all of them)
    read = target_images(run, "digits:0,1,2,3,4", test_split[0], limit=2 * (32 + 256))
    assert m["artifacts"]["int8"]["calibration"]["test_copies_left_out"] == read[1] < dropped
    # images only: a flat folder of the device's photos calibrates as well (no classes needed)
    from PIL import Image

    flat = tmp_path / "device-photos"
    flat.mkdir()
    for i, a in enumerate(load_dataset("digits:5,6,7").x[:40]):
        Image.fromarray((a[0].numpy() * 255).astype(np.uint8)).save(flat / f"{i}.png")
    x, dropped = target_images(run, str(flat), test_split[0])
    assert len(x) == 40 and dropped == 0
    x, _ = target_images(run, str(flat), test_split[0], limit=10)  # a fixed 10, never all 40 read for them
    assert len(x) == 10 and torch.equal(x, target_images(run, str(flat), test_split[0], limit=10)[0])


def test_calibration_reads_every_image_where_the_batch_is_dynamic():
    """A graph of dynamic batch takes the last, shorter batch too; a static batch can only take whole ones."""
    from edgeppt.int8 import _Reader

    def sizes(reader) -> list[int]:
        out = []
        while (b := reader.get_next()) is not None:
            out.append(len(b["x"]))
        return out

    x = np.zeros((35, 1, 4, 4), np.float32)
    assert sizes(_Reader("x", x, 16, static=False)) == [16, 16, 3]
    assert sizes(_Reader("x", x, 16, static=True)) == [16, 16]
    assert sizes(_Reader("x", x[:5], 16, static=True)) == [5]  # fewer than a batch: what there is


def test_calibration_set_of_the_wrong_shape(trained_run, tmp_path):
    with pytest.raises(EdgepptError, match=r"shape \(4, 3, 8, 8\).*\(N, 1, 8, 8\)"):
        export_run(trained_run, tmp_path / "o", formats="onnx,int8",
                   calibration_images=np.zeros((4, 3, 8, 8), np.float32),
                   log=lambda s: None)
    with pytest.raises(EdgepptError, match=r"\[0, 1\]"):
        Q.check_calibration(np.full((2, 1, 8, 8), 255.0, np.float32), (1, 8, 8))
    with pytest.raises(EdgepptError, match="shape"):
        Q.check_calibration(np.zeros((8, 8), np.float32), (1, 8, 8))
    assert not (tmp_path / "o").exists()


def test_export_refuses_to_replace_a_foreign_folder(trained_run, tmp_path):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "precious.txt").write_text("keep")
    with pytest.raises(EdgepptError, match="not an export bundle"):
        export_run(trained_run, tmp_path / "o", log=lambda s: None)
    assert (tmp_path / "o" / "precious.txt").read_text() == "keep"


def test_the_floor_counts_macs_and_measures_the_host(tmp_path):
    """MACs from the ONNX graph equal the search's count for the same network; the floor % is MACs at the host's
    measured peak over the measured latency."""
    from edgeppt.export.floor import floor_columns, host_peak
    from edgeppt.export.onnx_export import export_onnx
    from edgeppt.macs import onnx_macs
    from edgeppt.models import create_model
    from edgeppt.search.costs import count_costs

    for arch in ("resnet_xs", "mobilenet_xs"):
        model = create_model(arch, 5, 1).eval()
        path = export_onnx(model, tmp_path / f"{arch}.onnx", (1, 28, 28))
        assert abs(onnx_macs(path) - count_costs(model, (1, 28, 28)).macs) <= 0.01 * count_costs(
            model, (1, 28, 28)).macs
    peak = host_peak(threads=1, repeats=3)
    assert peak["peak_gmacs"] == max(peak["gemm_gmacs"], peak["conv_gmacs"]) > 0.1
    row = {"batch1": {"batch": 1, "median_ms": 2.0}, "batch32": {"batch": 32, "median_ms": 8.0}}
    cols = floor_columns(row, 10**6, 1.0)  # 1 GMAC/s: 1 M MACs take 1 ms per image
    assert cols["batch1_floor_ms"] == pytest.approx(1.0) and cols["batch1_floor_pct"] == pytest.approx(50.0)
    assert cols["batch32_floor_pct"] == pytest.approx(400.0)


def test_graphs_built_here_declare_the_oldest_ir_of_the_opset():
    """onnx.helper's default IR is the installed onnx's newest (14 with onnx 1.23), which an older onnxruntime
    refuses (1.30 reads up to 13: the floor's probes failed so on a GPU machine). The probes declare the IR that
    introduced the opset, one fact in edgeppt.onnxspec."""
    import onnx
    from onnx import helper

    from edgeppt.export.floor import _graph
    from edgeppt.onnxspec import IR_VERSION, OPSET

    assert IR_VERSION == helper.find_min_ir_version_for([helper.make_opsetid("", OPSET)])
    m = _graph(helper.make_node("MatMul", ["x", "w"], ["y"]), [2, 2], [2, 2], np.eye(2, dtype=np.float32))
    assert m.ir_version == IR_VERSION < onnx.IR_VERSION
    onnx.checker.check_model(m)


def test_export_settings_that_would_fail_late_or_do_nothing_are_said_at_once(trained_run, bundle, tmp_path,
                                                                             monkeypatch):
    """A signing key that cannot be read fails before any work; the default folder (dist/<run name>) holding
    another run's export is not replaced; options this export does not use are said, not silently dropped."""
    import json as json_module

    import edgeppt.export.exporter as exporter

    with monkeypatch.context() as m, pytest.raises(EdgepptError, match="missing.key: no such key file"):
        m.setattr(exporter, "torch_logits", lambda *a: pytest.fail("the export began before the key was read"))
        export_run(trained_run, tmp_path / "o", sign=tmp_path / "missing.key", log=lambda s: None)
    assert not (tmp_path / "o").exists()
    path, _ = bundle
    monkeypatch.chdir(tmp_path)
    dist = tmp_path / "dist" / Path(trained_run).name
    shutil.copytree(path, dist)
    manifest = json_module.loads((dist / "manifest.json").read_text())
    (dist / "manifest.json").write_text(json_module.dumps({**manifest, "run": str(tmp_path / "other" / "r")}))
    with pytest.raises(EdgepptError, match="holds the export of another run"):
        export_run(trained_run, formats="onnx", bench_runs=0, log=lambda s: None)
    said: list[str] = []
    export_run(trained_run, tmp_path / "o", formats="onnx", bench_runs=0, calibration_data="digits:0,1",
               source="bundles/animals-src", log=said.append)
    warned = [s for s in said if s.startswith("warning:")]
    assert warned == ["warning: --calibration-data is not used: no int8 model is exported",
                      "warning: --source is not used: only --int8-calibration pseudo draws from the source bundle"]


def test_an_interrupt_as_a_folder_is_swapped_keeps_the_earlier_one(tmp_path, monkeypatch):
    """Ctrl-C between setting the earlier folder aside and moving the new one in: the earlier one goes back."""
    from edgeppt.runs import staged_folder

    out = tmp_path / "out"
    out.mkdir()
    (out / "model.onnx").write_text("earlier")
    real = Path.rename

    def rename(self, target):
        if Path(target) == out and self.name != "out":  # the new folder's move into place
            raise KeyboardInterrupt
        return real(self, target)

    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(KeyboardInterrupt), staged_folder(out) as tmp:
        (tmp / "model.onnx").write_text("new")
    assert (out / "model.onnx").read_text() == "earlier" and [p.name for p in tmp_path.iterdir()] == ["out"]


def test_the_int8_guard_counts_whole_images_at_its_threshold():
    from edgeppt.export.quantize import disagree_points

    assert 100 * (1 - 0.99) > 1.0  # the float a share gives: one image in 100 would fail a 1-point threshold
    assert disagree_points(0.99, 100) == 1.0 and disagree_points(0.99, 200) == 1.0 and disagree_points(1.0, 7) == 0
    assert disagree_points(0.98, 50) == 2.0 and disagree_points(1 - 1 / 3, 3) == 100 / 3
