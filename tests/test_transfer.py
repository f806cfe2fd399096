import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ctrl_c_after_checkpoint

from edgeppt.bundle import load_bundle
from edgeppt.config import TransferConfig
from edgeppt.errors import EdgepptError
from edgeppt.runs import load_checkpoint, read_jsonl
from edgeppt.transfer import run_transfer
from edgeppt.transfer.pseudo import condition_probs, make_pool

TARGET = "digits:0,1,2,3,4"


def cfg(bundle, **kw):
    base = dict(source=bundle, target=TARGET, arch="resnet_xs", labels_per_class=4, pretrain_steps=20,
                pretrain_batch=32, finetune_steps=40, batch_size=20, eval_every=20, checkpoint_every=10,
                lr=0.05, pssl={"pool_size": 128, "unlabeled_ratio": 1, "steps": 20})
    base.update(kw)
    return TransferConfig(**base)


def _first_last(values, n=8):
    return sum(values[:n]) / n, sum(values[-n:]) / n


# The last case turns on every P-SSL option the defaults may leave off (anchor labels, mixing, alignment).
ALL_OPTIONS = {"consistency": 1.0, "anchor_weight": 0.5, "mix": 0.5, "align": True, "relevance": "weight",
               "z_candidates": 2, "warm_start": True}


@pytest.mark.parametrize("method,ssl", [("scratch", None), ("kd", None), ("pp", None), ("pp+kd", None),
                                        ("pssl", "fixmatch"), ("pp+pssl", "uda"), ("pp+pssl", "pseudolabel"),
                                        ("pp+pssl", "meanteacher"),
                                        ("pp+pssl", {}),  # the defaults: warm start, anchor labels only
                                        ("pp+pssl", {"algorithm": "fixmatch", **ALL_OPTIONS}),
                                        ("pp+pssl", {"algorithm": "uda", "consistency": 1.0, "warm_start": False})])
def test_each_method_runs_and_its_loss_falls(tiny_bundle, tmp_path, method, ssl):
    c = cfg(tiny_bundle, method=method)
    if ssl is not None:  # an algorithm by name runs its consistency term
        c.pssl = c.pssl.model_copy(update={"algorithm": ssl, "consistency": 1.0} if isinstance(ssl, str) else ssl)
    report = run_transfer(c, tmp_path / "run", progress=False)
    rows = [r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl")]
    if isinstance(ssl, dict) and ssl.get("align"):  # the anchor term is logged, the alignment state checkpointed
        assert all("anchor_ce" in r for r in rows if r["phase"] == "pp_pssl")
        p_mean = load_checkpoint(tmp_path / "run" / "checkpoint.pt")["objective"]["p_mean"]
        assert torch.isclose(p_mean.sum(), torch.tensor(1.0))
        assert not torch.allclose(p_mean, torch.full_like(p_mean, 0.2))
    # SSL losses add a ramped unlabelled term, so judge them by their supervised part.
    first, last = _first_last([r.get("sup", r["loss"]) for r in rows])
    assert last < first, (method, first, last)
    assert report["test_accuracy"] > 1 / 5 + 0.1  # clearly better than chance on 5 classes
    assert set(report) >= {"per_class_accuracy", "confusion_matrix", "settings", "timings_s", "images_per_s"}
    assert sum(map(sum, report["confusion_matrix"])) == report["data"]["test"]
    assert (tmp_path / "run" / "model.pt").exists()
    if method.startswith("pp"):
        assert (tmp_path / "run" / "pretrain" / "metrics.jsonl").exists()


def test_pseudo_conditional_sampling(tiny_bundle):
    b = load_bundle(tiny_bundle)
    x_t = torch.rand(6, *b.image_shape)
    p = condition_probs(b, x_t, temperature=1.0)
    assert p.shape == (6, b.num_classes) and torch.allclose(p.sum(1), torch.ones(6))
    z = torch.randn(2, b.latent_dim)
    one, other = torch.eye(b.num_classes)[[0, 0]], torch.eye(b.num_classes)[[1, 1]]
    assert not torch.allclose(b.generate(one, z), b.generate(other, z))
    assert torch.allclose(b.generate(one, z), b.generate(one, z))
    # Keeping the best of several z brings samples nearer their anchors in C's feature space.
    base = TransferConfig(target=TARGET).pssl
    rand = make_pool(b, x_t, base.model_copy(update={"pool_size": 48}), seed=0)
    searched = make_pool(b, x_t, base.model_copy(update={"pool_size": 48, "z_candidates": 8}), seed=0)
    assert searched.relevance.mean() > rand.relevance.mean()
    kept = make_pool(b, x_t, base.model_copy(update={"pool_size": 48, "relevance": "filter", "relevance_keep": 0.5}), 0)
    assert len(kept) == 24 and kept.relevance.min() >= rand.relevance.median() - 1e-6
    w = make_pool(b, x_t, base.model_copy(update={"pool_size": 48, "relevance": "weight"}), seed=0).weight
    assert w.min() == 0 and w.max() == 1
    # Fewer samples than target images (a target of many classes): anchors spread over them, not the first ones
    # (the labels come class by class, so the first would be the first classes only).
    few = make_pool(b, torch.rand(40, *b.image_shape), base.model_copy(update={"pool_size": 16}), seed=0)
    assert len(few.anchor.unique()) == 16 and few.anchor.max() >= 20


def test_the_source_classifier_sees_at_most_a_chunk_of_images_a_call(tiny_bundle, monkeypatch):
    from edgeppt import bundle as bundle_module

    b = load_bundle(tiny_bundle)
    x = torch.rand(70, *b.image_shape)
    whole = b.classify(x)
    monkeypatch.setattr(bundle_module, "CLASSIFY_CHUNK", 32)
    sizes: list[int] = []
    call = b.classifier.__call__
    monkeypatch.setattr(b, "classifier", lambda feed, dev: sizes.append(len(next(iter(feed.values())))) or
                        call(feed, dev))
    chunked = b.classify(x)
    assert sizes == [32, 32, 6]
    assert all(torch.allclose(a, c, atol=1e-5) for a, c in zip(whole, chunked))


def test_resume_after_ctrl_c_equals_an_uninterrupted_run(tiny_bundle, tmp_path, monkeypatch):
    c = cfg(tiny_bundle, method="pp+pssl")  # three phases: PP, the warm start, P-SSL (cut in the last)
    c.pssl = c.pssl.model_copy(update={"warm_start": True})
    whole = run_transfer(c, tmp_path / "whole", progress=False)

    ctrl_c_after_checkpoint(monkeypatch, lambda phase, step: phase == "pp_pssl" and step == 10)
    with pytest.raises(KeyboardInterrupt):
        run_transfer(c, tmp_path / "cut", progress=False)
    assert load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["step"] == 10
    monkeypatch.undo()
    resumed = run_transfer(c, tmp_path / "cut", resume=True, progress=False)

    a = load_checkpoint(tmp_path / "whole" / "model.pt")["state_dict"]
    b = load_checkpoint(tmp_path / "cut" / "model.pt")["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["test_accuracy"] == whole["test_accuracy"]
    rows = read_jsonl(tmp_path / "cut" / "metrics.jsonl")  # no step logged twice, none missing
    assert [r["step"] for r in rows if r["phase"] == "pp"] == list(range(1, 41))
    assert [r["step"] for r in rows if r["phase"] == "pp_pssl"] == list(range(1, 21))


@pytest.mark.parametrize("cut", ["pp_probe", "pp"])
def test_resume_of_the_probe_and_the_ema_equals_an_uninterrupted_run(tiny_bundle, tmp_path, monkeypatch, cut):
    c = cfg(tiny_bundle, method="pp", probe_steps=20, ema=0.5)  # PP, the linear probe, the fine-tune with an EMA
    whole = run_transfer(c, tmp_path / "whole", progress=False)
    assert [ph["name"] for ph in whole["phases"]] == ["pp_probe", "pp"]

    ctrl_c_after_checkpoint(monkeypatch, lambda phase, step: phase == cut and step == 10)
    with pytest.raises(KeyboardInterrupt):
        run_transfer(c, tmp_path / "cut", progress=False)
    ck = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")
    assert ck["step"] == 10 and (ck["ema"] is not None) == (cut == "pp")
    monkeypatch.undo()
    run_transfer(c, tmp_path / "cut", resume=True, progress=False)
    a = load_checkpoint(tmp_path / "whole" / "model.pt")["state_dict"]
    b = load_checkpoint(tmp_path / "cut" / "model.pt")["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_probe_trains_only_the_head_and_the_ema_is_what_ships(tiny_bundle, tmp_path):
    from edgeppt.models import create_model

    pp = run_transfer(cfg(tiny_bundle, method="pp", finetune_steps=1), tmp_path / "pp", progress=False)
    probed = run_transfer(cfg(tiny_bundle, method="pp", probe_steps=20, finetune_steps=1), tmp_path / "probe",
                          progress=False)
    assert probed["phases"][0] == {"name": "pp_probe", "steps": 20} and pp["phases"] == [{"name": "pp", "steps": 1}]
    a = load_checkpoint(tmp_path / "pp" / "model.pt")["state_dict"]
    b = load_checkpoint(tmp_path / "probe" / "model.pt")["state_dict"]
    # one fine-tune step after the same PP: the body moved by one step in both, the head by 20 more in one
    body = [k for k in a if not k.startswith("head.") and a[k].is_floating_point()]
    assert max((a[k] - b[k]).abs().max().item() for k in body) < 0.05
    assert (a["head.weight"] - b["head.weight"]).abs().max().item() > 0.05

    # EMA: the shipped weights are the average's, not the last step's
    c = cfg(tiny_bundle, method="scratch", ema=0.5, checkpoint_every=40)
    run_transfer(c, tmp_path / "ema", progress=False)
    shipped = load_checkpoint(tmp_path / "ema" / "model.pt")["state_dict"]
    plain = cfg(tiny_bundle, method="scratch", checkpoint_every=40)
    run_transfer(plain, tmp_path / "plain", progress=False)
    last = load_checkpoint(tmp_path / "plain" / "model.pt")["state_dict"]
    assert not torch.equal(shipped["head.weight"], last["head.weight"])
    model = create_model("resnet_xs", 5, 1)
    model.load_state_dict(shipped)  # a plain model's state: nothing of the averager's leaks into model.pt


def test_resume_with_other_settings_or_into_a_used_dir_is_refused(tiny_bundle, tmp_path):
    c = cfg(tiny_bundle, method="scratch", finetune_steps=5)
    run_transfer(c, tmp_path / "r", progress=False)
    with pytest.raises(EdgepptError, match="already holds a run"):
        run_transfer(c, tmp_path / "r", progress=False)
    with pytest.raises(EdgepptError, match="labels_per_class"):
        run_transfer(cfg(tiny_bundle, method="scratch", finetune_steps=5, labels_per_class=2), tmp_path / "r",
                     resume=True, progress=False)
    with pytest.raises(EdgepptError, match="nothing to resume"):
        run_transfer(c, tmp_path / "empty", resume=True, progress=False)


def test_a_new_run_where_an_unfinished_one_stopped_draws_its_own_pseudo_samples(tiny_bundle, tmp_path):
    """A run stopped after drawing its pool but before its first checkpoint leaves only the pool (and an auto run's
    choice and warm start); a new run in that folder with other settings (not a resume) draws its own, as it would
    in an empty folder, and takes neither that choice nor that warm start."""
    import shutil

    first = cfg(tiny_bundle, method="pp+pssl", seed=1, finetune_steps=5)
    run_transfer(first, tmp_path / "stopped", progress=False)
    for f in (tmp_path / "stopped").iterdir():  # all but the pool, as if it had stopped right after drawing it
        if f.name != "pseudo_pool.pt":
            shutil.rmtree(f) if f.is_dir() else f.unlink()
    (tmp_path / "stopped" / "auto.json").write_text('{"method": "scratch"}')  # another run's, left behind
    (tmp_path / "stopped" / "warm_start.pt").write_bytes(b"another run's")
    other = first.model_copy(update={"seed": 0})
    a = run_transfer(other, tmp_path / "stopped", progress=False)
    b = run_transfer(other, tmp_path / "empty", progress=False)
    assert a["test_accuracy"] == b["test_accuracy"]
    assert not (tmp_path / "stopped" / "auto.json").exists() and not (tmp_path / "stopped" / "warm_start.pt").exists()
    assert torch.equal(torch.load(tmp_path / "stopped" / "pseudo_pool.pt", weights_only=True)["x"],
                       torch.load(tmp_path / "empty" / "pseudo_pool.pt", weights_only=True)["x"])


def test_the_resume_rule_compares_nested_settings_and_tells_added_ones_apart():
    """One rule for every stage: a nested setting that differs is a conflict by its dotted name, a free one (and all
    under it) is not, a setting the saved run lacks is added, not a conflict, and a section that was empty when
    saved and is set now is a conflict."""
    from edgeppt.runs import added_settings, resume_conflicts

    saved = {"seed": 0, "threads": 1, "pssl": {"lp_reach": 0.3}, "teacher": None, "device": {"kind": "cpu"}}
    now = {"seed": 0, "threads": 2, "pssl": {"lp_reach": 0.5, "lp_reach_gap": 8.0}, "teacher": {"t": 2},
           "device": {"kind": "cuda"}, "max_unlabeled": 10}
    assert resume_conflicts(saved, now, {"threads", "device"}) == {"pssl.lp_reach": (0.3, 0.5),
                                                                   "teacher": (None, {"t": 2})}
    assert added_settings(saved, now) == {"pssl.lp_reach_gap": 8.0, "max_unlabeled": 10}
    assert resume_conflicts(now, now) == {} and added_settings(now, now) == {}


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny_bundle, tmp_path):
    c = cfg(tiny_bundle, method="scratch", lr=1e12, checkpoint_every=1, finetune_steps=200)
    with pytest.raises(EdgepptError, match="(loss became nan|weights became NaN).*last good checkpoint"):
        run_transfer(c, tmp_path / "nan", progress=False)
    ck = load_checkpoint(tmp_path / "nan" / "checkpoint.pt")
    assert ck["step"] < 200
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())


def test_target_images_keep_their_colour_and_side_except_where_c_itself_trains(tiny_bundle, tmp_path):
    """RGB 12x12 target images meet a grayscale 8x8 bundle: kept in colour, and at 12x12 where they hold finer detail
    than 8 px (flat colours hold none: shrunk to 8), except for the methods that train C itself, which need C's
    channels and side."""
    from PIL import Image

    from edgeppt.transfer.run import prepare_data
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        for kind in ("detail", "flat"):
            (tmp_path / kind / c).mkdir(parents=True)
        for i in range(6):
            colour = np.array([40 * i, 200 if c == "a" else 0, 0], np.uint8)
            Image.new("RGB", (12, 12), tuple(int(v) for v in colour)).save(tmp_path / "flat" / c / f"{i}.png")
            speckle = rng.integers(0, 56, (12, 12, 3), dtype=np.uint8)
            Image.fromarray(colour + speckle, "RGB").save(tmp_path / "detail" / c / f"{i}.png")
    for kind, side in (("detail", 12), ("flat", 8)):
        labelled, test = prepare_data(cfg(tiny_bundle, target=str(tmp_path / kind), labels_per_class=2),
                                      load_bundle(tiny_bundle))
        assert labelled.shape == test.shape == (3, side, side) and labelled.counts() == [2, 2]
    labelled, test = prepare_data(cfg(tiny_bundle, target=str(tmp_path / "detail"), labels_per_class=2,
                                      method="ft"), load_bundle(tiny_bundle))
    assert labelled.shape == test.shape == (1, 8, 8)


def test_method_without_bundle_and_bad_bundle_are_explained(tiny_bundle, tmp_path):
    with pytest.raises(EdgepptError, match="needs a source bundle"):
        run_transfer(TransferConfig(target=TARGET, method="pp"), tmp_path / "a", progress=False)
    with pytest.raises(EdgepptError, match="not a source bundle"):
        run_transfer(cfg(tmp_path, method="pp"), tmp_path / "b", progress=False)


def test_pp_weights_and_pseudo_pools_are_cached_across_runs(tiny_bundle, tmp_path):
    c = cfg(tiny_bundle, method="pp+pssl")
    first = run_transfer(c, tmp_path / "a", progress=False, pp_cache=tmp_path / "cache")
    second = run_transfer(c, tmp_path / "b", progress=False, pp_cache=tmp_path / "cache")
    assert "cached" not in first["pretrain"] and "cached" in second["pretrain"]
    assert not first["pseudo_samples"]["cached"] and second["pseudo_samples"]["cached"]
    assert first["test_accuracy"] == second["test_accuracy"]
    # Another labelled set (seed) conditions another pool.
    third = run_transfer(cfg(tiny_bundle, method="pp+pssl", seed=1), tmp_path / "c", progress=False,
                         pp_cache=tmp_path / "cache")
    assert not third["pseudo_samples"]["cached"]
    assert len(list((tmp_path / "cache").glob("pool-*.pt"))) == 2
    # The warm start of pp+pssl is exactly the pp method: same batches, same weights before the pseudo samples.
    # (Its own cache, so that pp trains its phase instead of reusing the one pp+pssl left in the shared cache.)
    pp = run_transfer(cfg(tiny_bundle, method="pp"), tmp_path / "pp", progress=False, pp_cache=tmp_path / "cache2")
    warm = [r for r in read_jsonl(tmp_path / "a" / "metrics.jsonl") if r["phase"] == "pp"][-1]
    assert warm["test_accuracy"] == pp["test_accuracy"]
    assert [r["loss"] for r in read_jsonl(tmp_path / "pp" / "metrics.jsonl")] == \
        [r["loss"] for r in read_jsonl(tmp_path / "a" / "metrics.jsonl") if r["phase"] == "pp"]


def _weights(run: Path) -> dict:
    return torch.load(run / "model.pt", weights_only=True)["state_dict"]


def test_a_labels_only_phase_is_reused_by_runs_that_start_the_same_way(tiny_bundle, tmp_path):
    """pp's phase is pp+pssl's warm start and what auto trains when it picks pp: with a cache it is trained once,
    and every run that reuses it ends on exactly the weights it would have trained to."""
    cache = tmp_path / "cache"
    pp = run_transfer(cfg(tiny_bundle, method="pp"), tmp_path / "pp", progress=False, pp_cache=cache)
    assert not pp["reused_phases"] and len(list(cache.glob("phase-*.pt"))) == 1
    reused = run_transfer(cfg(tiny_bundle, method="pp+pssl"), tmp_path / "a", progress=False, pp_cache=cache)
    fresh = run_transfer(cfg(tiny_bundle, method="pp+pssl"), tmp_path / "b", progress=False)
    assert set(reused["reused_phases"]) == {"pp"}
    # trained once: the reused run's log holds the phase's end, loaded, and no training step of it
    rows = [r for r in read_jsonl(tmp_path / "a" / "metrics.jsonl") if r["phase"] == "pp"]
    assert len(rows) == 1 and rows[0]["reused"] == reused["reused_phases"]["pp"]["cache"] and "loss" not in rows[0]
    assert any("loss" in r for r in read_jsonl(tmp_path / "b" / "metrics.jsonl") if r["phase"] == "pp")
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert reused["test_accuracy"] == fresh["test_accuracy"]
    # pp itself again: nothing left to train; the model is pp's own.
    again = run_transfer(cfg(tiny_bundle, method="pp"), tmp_path / "c", progress=False, pp_cache=cache)
    assert again["reused_phases"]["pp"]["cache"] == reused["reused_phases"]["pp"]["cache"]
    p, c = _weights(tmp_path / "pp"), _weights(tmp_path / "c")
    assert all(torch.equal(p[k], c[k]) for k in p)
    # Anything the phase computes from is in its key: other labels, another rate, another head.
    for name, kw in (("seed", {"seed": 1}), ("lr", {"lr": 0.02}), ("head", {"cosine_head": 0.0}),
                     ("smoothing", {"label_smoothing": 0.0}), ("steps", {"finetune_steps": 41})):
        other = run_transfer(cfg(tiny_bundle, method="pp", **kw), tmp_path / name, progress=False, pp_cache=cache)
        assert not other["reused_phases"], name
    assert len(list(cache.glob("phase-*.pt"))) == 6


def test_an_unreadable_cache_entry_is_computed_again_not_a_stop(tiny_bundle, tmp_path, capsys):
    """The cache only saves time: a truncated PP entry, a phase that is not a torch file and a pool without its
    tensors each get a one-line warning, are computed again to the same weights, and replaced by good entries."""
    cache = tmp_path / "cache"
    run_transfer(cfg(tiny_bundle, method="pp+pssl"), tmp_path / "a", progress=False, pp_cache=cache)
    (pp,), (phase,), (pool,) = (list(cache.glob(f"{kind}-*.pt")) for kind in ("pp", "phase", "pool"))
    pp.write_bytes(pp.read_bytes()[:100])
    phase.write_text("not a checkpoint")
    torch.save({"x": torch.zeros(1), "anchor": torch.zeros(1)}, pool)  # a pool lacking p, relevance, weight
    capsys.readouterr()
    again = run_transfer(cfg(tiny_bundle, method="pp+pssl"), tmp_path / "b", progress=False, pp_cache=cache)
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: cache entry")]
    assert len(warnings) == 3 and all("computing it again" in w for w in warnings)
    assert "cached" not in again["pretrain"] and not again["reused_phases"]
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)
    third = run_transfer(cfg(tiny_bundle, method="pp+pssl"), tmp_path / "c", progress=False, pp_cache=cache)
    assert "cached" in third["pretrain"] and set(third["reused_phases"]) == {"pp"}

def test_pp_weights_follow_pps_own_rate_not_the_target_phases(tiny_bundle, tmp_path):
    """lr and weight_decay are the target phases'; PP trains at pretrain_lr and pretrain_weight_decay, so a target
    rate can change and reuse cached PP weights, and a PP rate cannot."""
    cache = tmp_path / "cache"
    base = run_transfer(cfg(tiny_bundle, method="pp"), tmp_path / "a", progress=False, pp_cache=cache)
    target = run_transfer(cfg(tiny_bundle, method="pp", lr=0.02, weight_decay=5e-3), tmp_path / "b",
                          progress=False, pp_cache=cache)
    pp_rate = run_transfer(cfg(tiny_bundle, method="pp", pretrain_lr=0.02), tmp_path / "c", progress=False,
                           pp_cache=cache)
    assert "cached" not in base["pretrain"] and "cached" in target["pretrain"] and "cached" not in pp_rate["pretrain"]
    assert len(list(cache.glob("pp-*.pt"))) == 2
    assert target["settings"]["lr"] == 0.02 and target["settings"]["pretrain_lr"] == 0.05


def test_torchrun_two_cpu_processes(tiny_bundle, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29517",
           "-m", "edgeppt.cli", "transfer", "--source", str(tiny_bundle), "--target", TARGET, "--arch", "resnet_xs",
           "--method", "pp+pssl", "--out", str(tmp_path / "ddp"), "--quiet",
           "--set", "pretrain_steps=10", "--set", "finetune_steps=20", "--set", "pssl.pool_size=64",
           "--set", "pretrain_batch=32", "--set", "threads=1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json
    report = json.loads((tmp_path / "ddp" / "report.json").read_text())
    assert report["world_size"] == 2 and report["test_accuracy"] > 0.3


def test_torchrun_two_nodes_trains_the_same_weights_as_one_process(tiny_bundle, tmp_path):
    """Two torchrun "nodes" on loopback (c10d rendezvous), one process each, against one plain process: the
    same weights within float tolerance, so the gradients really are synchronised. Fine-tuning C (`ft`) has no
    batch norm (folded at export), whose per-worker batch statistics would otherwise differ from one process's."""
    import json
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = ["-m", "edgeppt.cli", "transfer", "--source", str(tiny_bundle), "--target", TARGET, "--method", "ft",
            "--quiet", "--set", "finetune_steps=12", "--set", "batch_size=16", "--set", "threads=1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, *args, "--out", str(tmp_path / "one")], capture_output=True, text=True,
                         timeout=240, env=env)
    assert one.returncode == 0, one.stderr[-3000:]
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
                               "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "t",
                               *args, "--out", str(tmp_path / "two")], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    outs = [n.communicate(timeout=300) for n in nodes]
    assert all(n.returncode == 0 for n in nodes), [o[1][-2000:] for o in outs]
    assert json.loads((tmp_path / "two" / "report.json").read_text())["world_size"] == 2
    a = load_checkpoint(tmp_path / "one" / "model.pt")["state_dict"]
    b = load_checkpoint(tmp_path / "two" / "model.pt")["state_dict"]
    assert all(torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4) for k in a)
    assert any(not torch.equal(a[k], load_bundle_classifier_weights(tiny_bundle).get(k, a[k])) for k in a)


def test_torchrun_restarts_a_killed_worker_and_resumes_from_the_checkpoint(tiny_bundle, tmp_path):
    """`--max-restarts 1`: one of two workers is killed (SIGKILL) once the first checkpoint exists; torchrun
    restarts the group once, which resumes from that checkpoint and ends on the weights of an uninterrupted run.
    The restarted group must not read the killed group's addresses from torchrun's store (each attempt has its
    own keys), or its gloo handshake fails with "connection refused" and costs further restarts."""
    import json
    import signal
    import socket
    import time

    import psutil

    def launch(out):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        return subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--max-restarts", "1",
             "--master-port", str(port), "-m", "edgeppt.cli", "transfer", "--source", str(tiny_bundle), "--target",
             TARGET, "--method", "ft", "--quiet", "--out", str(out), "--set", "finetune_steps=400",
             "--set", "checkpoint_every=20", "--set", "batch_size=16", "--set", "threads=1"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})

    whole = launch(tmp_path / "whole")
    assert whole.wait(timeout=300) == 0, whole.stderr.read()[-3000:]
    cut = launch(tmp_path / "cut")
    deadline = time.time() + 240
    while not (tmp_path / "cut" / "checkpoint.pt").exists() and time.time() < deadline:
        time.sleep(0.05)
    workers = psutil.Process(cut.pid).children(recursive=True)
    assert workers and not (tmp_path / "cut" / "report.json").exists(), "the run ended before it could be cut"
    os.kill(workers[-1].pid, signal.SIGKILL)
    _, err = cut.communicate(timeout=300)
    assert cut.returncode == 0, err[-3000:]
    report = json.loads((tmp_path / "cut" / "report.json").read_text())
    assert report["restarts"] == 1 and report["world_size"] == 2  # one kill, one restart
    steps = [r["step"] for r in read_jsonl(tmp_path / "cut" / "metrics.jsonl")]
    assert steps == list(range(1, 401))  # resumed after the checkpoint: no step lost or logged twice
    a = load_checkpoint(tmp_path / "whole" / "model.pt")["state_dict"]
    b = load_checkpoint(tmp_path / "cut" / "model.pt")["state_dict"]
    assert all(torch.allclose(a[k], b[k], atol=1e-6, rtol=1e-5) for k in a)


def load_bundle_classifier_weights(path):
    """C's weights as the ft model holds them before training (to check training moved them)."""
    from edgeppt.models.onnx_graph import from_bundle

    return from_bundle(load_bundle(path))[1]


def test_a_resume_refuses_images_other_than_those_the_run_started_with(tmp_path, tiny_bundle):
    """A file added to the unlabelled folder redraws its subset: the saved propagated labels would teach other
    images; another bundle written at the same path would mix its G with the saved pool. The resume says which
    input changed; the same inputs resume."""
    from edgeppt.data import load_dataset
    from edgeppt.train.loop import Dist
    from edgeppt.transfer.run import check_same_images

    ds = load_dataset("digits:0,1", 8)
    labelled, test, real = ds.subset(range(0, 10)), ds.subset(range(10, 20)), ds.x[20:60]
    check_same_images(tmp_path, False, Dist(), labelled, test, real)
    check_same_images(tmp_path, True, Dist(), labelled, test, real)
    with pytest.raises(EdgepptError, match="the unlabelled images changed since the run started"):
        check_same_images(tmp_path, True, Dist(), labelled, test, ds.x[21:61])
    b = load_bundle(tiny_bundle)
    check_same_images(tmp_path / "b", False, Dist(), labelled, test, real, b)
    check_same_images(tmp_path / "b", True, Dist(), labelled, test, real, b)
    b.manifest.files["generator.onnx"] = "0" * 64  # as if rewritten since
    with pytest.raises(EdgepptError, match="the source bundle changed since the run started"):
        check_same_images(tmp_path / "b", True, Dist(), labelled, test, real, b)


def test_a_picture_filed_under_two_classes_is_said_and_recorded(tiny_bundle, tmp_path):
    """The same picture in two class folders: the run says so in a warning and report.json counts it (a copy can be
    a label of one class and a test image of the other); which label is right is the user's to say."""
    from edgeppt.data import load_dataset

    ds = load_dataset("digits:0,1", 8)
    x = (ds.x.numpy()[:, 0] * 255).round().astype("uint8")
    y = ds.y.numpy().copy()
    x[1], y[1] = x[0], 1 - y[0]  # picture 0 again, under the other class
    np.savez(tmp_path / "t.npz", x=x, y=y)
    said: list[str] = []
    report = run_transfer(cfg(tiny_bundle, method="scratch", target=str(tmp_path / "t.npz"), finetune_steps=2),
                          tmp_path / "run", progress=False, log=said.append)
    assert report["data"]["labelled_twice"] == 1 and report["data"]["labelled_twice_classes"] == ["'0' and '1'"]
    assert any(line.startswith("warning: 1 picture(s) of the target are filed under two classes") for line in said)
