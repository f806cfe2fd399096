"""Search stage: space round trip, exact costs, latency, the budget filter, resume, CLI, calibrate over SSH."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from edgeppt.cli import app
from edgeppt.config import SearchConfig, SpaceConfig
from edgeppt.devices import load_profile
from edgeppt.errors import EdgepptError
from edgeppt.models import create_model
from edgeppt.search import run_search
from edgeppt.search.costmodel import CostModel
from edgeppt.search.costs import count_costs
from edgeppt.search.latency import measure_latency
from edgeppt.search.ledger import Ledger
from edgeppt.search.predictor import FEATURES, LatencyPredictor
from edgeppt.search.record import read_best
from edgeppt.search.reference import WIDTHS, reference_arch
from edgeppt.search.report import choose_best, noise_margin
from edgeppt.search.run import budgets_of
from edgeppt.search.space import EdgeCNNSpace, choices, random_sample, to_arch

TINY = {"family": "mobilenet", "config": {"stem": 8, "head_width": 0, "act": "relu", "stages": [
    {"width": 8, "depth": 1, "kernel": 3, "expand": 1, "se": False, "stride": 1}]}}
ROOT = Path(__file__).resolve().parents[1]
# Fast settings: 8x8 digits, a few proxy steps, few latency repeats.
FAST = dict(target="digits", image_size=8, test_fraction=0.3, labels_per_class=3, val_per_class=5, latency_warmup=1,
            latency_repeats=5, proxy=dict(pretrain_steps=0, finetune_steps=4, batch_size=8))


def predicted_profile(tmp_path: Path, **budgets) -> Path:
    """A user profile whose latency comes from a predictor file (no timing: fast and deterministic)."""
    pred = LatencyPredictor(0.01, {"dense_mmacs": 0.5, "pointwise_mmacs": 0.5, "depthwise_mmacs": 2.0,
                                   "linear_mmacs": 1.0, "activation_melems": 1.0, "layers": 0.002}, "test")
    pred.save(tmp_path / "board.predictor.json")
    (tmp_path / "board.yaml").write_text(yaml.safe_dump({"name": "board", "latency": "predicted",
                                                         "predictor": "board.predictor.json", "budgets": budgets}))
    return tmp_path / "board.yaml"


def test_nni_samples_freeze_to_json_that_rebuilds_the_same_network(tmp_path):
    space = SpaceConfig()
    nas = EdgeCNNSpace(space, num_classes=5, in_chans=1)
    assert sorted(nas.simplify()) == sorted(choices(space))
    for seed in range(3):
        sample: dict = {}
        nas.random(memo=sample, random_state=np.random.RandomState(seed))
        frozen = nas.freeze(sample)  # NNI's own frozen model
        path = tmp_path / f"arch{seed}.json"
        path.write_text(json.dumps(to_arch(sample, space)))
        rebuilt = create_model(str(path), 5, 1)
        a, b = list(frozen.state_dict().values()), list(rebuilt.state_dict().values())
        assert [t.shape for t in a] == [t.shape for t in b]
        rebuilt.load_state_dict(dict(zip(rebuilt.state_dict(), a)))
        x = torch.rand(2, 1, 28, 28)
        torch.testing.assert_close(frozen.eval()(x), rebuilt.eval()(x))
    # The frozen JSON builds in a process that never imports NNI.
    code = (f"import sys, json; from edgeppt.models import create_model; m = create_model({str(path)!r}, 5, 1); "
            "assert not any(k == 'nni' or k.startswith('nni.') for k in sys.modules), 'nni imported'; print('ok')")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "ok"


def test_costs_match_hand_computed_values():
    # stem 3x3 conv 1->8 on 8x8: 8*8*8 outputs x 9 = 4608 MACs; depthwise 3x3 on 8 channels: 512 x 9 = 4608;
    # pointwise 8->8: 512 x 8 = 4096; linear 8->3: 24.  Params: convs 72+72+64, BN 3x16, linear 24+3.
    c = count_costs(create_model(TINY, 3, 1), (1, 8, 8))
    assert c.macs == 4608 + 4608 + 4096 + 24
    assert c.params == 72 + 72 + 64 + 3 * 16 + 27
    # Peak: inside the residual block, a layer's input (512) + output (512) + the held block input (512) floats.
    assert c.peak_activation_kib == 3 * 512 * 4 / 1024
    # Expansion 2 with SE, stride 2: expand 1x1 8->16 (1024 outputs x 8), depthwise stride 2 (256 x 9),
    # SE 16->8->16 on the pooled vector (128 + 128 MACs, 8 + 16 biases), project 16->8 (128 x 16); no residual.
    cfg = json.loads(json.dumps(TINY))
    cfg["config"]["stages"][0].update(expand=2, se=True, stride=2)
    c2 = count_costs(create_model(cfg, 3, 1), (1, 8, 8))
    assert c2.macs == 4608 + 1024 * 8 + 256 * 9 + 128 + 128 + 128 * 16 + 24
    assert c2.params == 72 + 128 + 144 + (128 + 8 + 128 + 16) + 128 + (16 + 32 + 32 + 16) + 27  # BN: 2 per channel
    # Largest: expand conv's input 512 + output 1024 floats (nothing held, stride 2 has no residual).
    assert c2.peak_activation_kib == (512 + 1024) * 4 / 1024


def test_measured_latency_grows_with_the_network():
    small = measure_latency(create_model(TINY, 5, 1), (1, 28, 28), threads=1, warmup=3, repeats=15)
    big = measure_latency(create_model("mobilenet_m", 5, 1), (1, 28, 28), threads=1, warmup=3, repeats=15)
    assert 0 < small < big / 2


def test_candidates_are_timed_in_the_format_that_ships():
    """x86-cpu exports int8 too: a candidate is timed as fp32 and as the export's int8 recipe, and its latency is
    the faster one, which is what the export will choose by default (export/default.py)."""
    x86 = load_profile("x86-cpu")
    cost = CostModel(x86, x86.budgets, (1, 28, 28), 5, warmup=3, repeats=15)
    c = cost.costs(TINY)
    by_format = c["latency_by_format"]
    assert set(by_format) == {"onnx", "int8"} and c["latency_ms"] == pytest.approx(min(by_format.values()), abs=1e-4)
    assert c["latency_kind"] == f"measured, {min(by_format, key=by_format.get)}"
    fp32_only = x86.model_copy(update={"export": x86.export.model_copy(update={"formats": ["onnx"]})})
    assert set(CostModel(fp32_only, x86.budgets, (1, 28, 28), 5, 3, 15).costs(TINY)["latency_by_format"]) == {"onnx"}


def test_near_the_budget_a_candidate_is_measured_three_times_and_judged_on_the_median(monkeypatch, tmp_path):
    from edgeppt.search import costmodel
    from edgeppt.search.latency_cache import LatencyCache

    x86 = load_profile("x86-cpu")
    draws = iter([0.98, 1.30, 0.90, 0.50])  # ms: the first is within 10% of a 1 ms budget
    monkeypatch.setattr(costmodel, "deployed_latency", lambda *a: (None, {"onnx": next(draws)}))
    budgets = x86.budgets.model_copy(update={"latency_ms": 1.0})
    cost = CostModel(x86, budgets, (1, 28, 28), 5, band=0.1, cache=LatencyCache(tmp_path / "cache"))
    c = cost.costs(TINY)
    assert c["latency_ms"] == 0.98 and "median of 3" in c["latency_kind"]  # median(0.98, 1.30, 0.90)
    again = CostModel(x86, budgets, (1, 28, 28), 5, band=0.1, cache=LatencyCache(tmp_path / "cache")).costs(TINY)
    assert again["latency_ms"] == 0.98 and again["latency_kind"].endswith("(cached)")  # no fourth measurement
    far = CostModel(x86, budgets, (1, 28, 28), 5, band=0.1).costs(TINY)  # 0.50 ms: far from it, measured once
    assert far["latency_ms"] == 0.50 and far["latency_kind"] == "measured, onnx"
    # A cached single measurement that a later search's budget sits next to is measured again, three times.
    once = LatencyCache(tmp_path / "once")
    draws = iter([0.50, 0.52, 0.47, 0.55])
    CostModel(x86, x86.budgets.model_copy(update={"latency_ms": 5.0}), (1, 28, 28), 5, band=0.1,
              cache=once).costs(TINY)  # 0.50 ms, far from 5 ms: once
    near = CostModel(x86, x86.budgets.model_copy(update={"latency_ms": 0.5}), (1, 28, 28), 5, band=0.1,
                     cache=once).costs(TINY)
    assert near["latency_ms"] == 0.52 and "median of 3" in near["latency_kind"]  # median(0.52, 0.47, 0.55)


def test_a_resumed_search_screens_from_the_measurements_made_before_it(monkeypatch):
    """Screening guesses from this search's measured candidates; a resume takes them back from the ledger, so its
    verdicts are an uninterrupted search's."""
    from edgeppt.search import costmodel
    from edgeppt.search.space import random_sample, to_arch

    x86 = load_profile("x86-cpu")
    budgets = x86.budgets.model_copy(update={"latency_ms": 1.0})
    monkeypatch.setattr(costmodel, "deployed_latency",
                        lambda model, *a: (None, {"onnx": sum(p.numel() for p in model.parameters()) / 4e4}))
    archs = [to_arch(random_sample(SpaceConfig(), random.Random(i)), SpaceConfig())
             for i in range(costmodel.SCREEN_AFTER + 6)]
    whole = CostModel(x86, budgets, (1, 28, 28), 5)
    said = [whole.costs(a, screen=True) for a in archs]
    cut = costmodel.SCREEN_AFTER
    records = [{"sample": {}, "arch": a, **c} for a, c in zip(archs[:cut], said[:cut])]
    resumed = CostModel(x86, budgets, (1, 28, 28), 5)
    resumed.remember(records)
    assert len(resumed._seen) == len(whole._seen[:cut]) == cut
    assert [resumed.costs(a, screen=True) for a in archs[cut:]] == said[cut:]
    assert any(c["latency_kind"] == "screened" for c in said[cut:])  # (without them these would be measured)


def test_a_device_answer_without_usable_timings_is_a_one_line_error(monkeypatch, tmp_path):
    from edgeppt.search import calibrate as cal

    for answer in ({"latency_ms": [0.0] * 6}, {"latency_ms": [1.0]}, {"latency_ms": [1.0] * 6 + [1.0]}, [1.0], {}):
        monkeypatch.setattr(cal, "time_remote", lambda *a, answer=answer: answer)
        with pytest.raises(EdgepptError, match=r"board answered with no usable timings \(6 positive milliseconds"):
            cal.calibrate("x86-cpu", "board", tmp_path / "b", probes=6, progress=False)


def test_a_predictor_file_of_other_numbers_is_a_one_line_error(tmp_path):
    good = LatencyPredictor(0.01, {"layers": 0.002}, "test")
    for bad, why in (({"coef_ms": 5}, "must be finite numbers"), ({"intercept_ms": float("nan")}, "finite numbers"),
                     ({"coef_ms": {"layers": "fast"}}, "finite numbers")):
        raw = {**good.__dict__, **bad}
        (tmp_path / "p.json").write_text(json.dumps(raw))
        with pytest.raises(EdgepptError, match=why):
            LatencyPredictor.load(tmp_path / "p.json")
    (tmp_path / "p.json").write_bytes(b"\xff\xfe{")
    with pytest.raises(EdgepptError, match="cannot read latency predictor"):
        LatencyPredictor.load(tmp_path / "p.json")


def test_a_damaged_latency_cache_entry_is_measured_again_and_an_unwritable_cache_only_warns(tmp_path, capsys):
    from edgeppt.search.latency_cache import LatencyCache

    cache = LatencyCache(tmp_path / "cache")
    key = {"arch": "tiny"}
    cache.put(key, {"onnx": 0.2})
    assert cache.get(key) == {"onnx": 0.2}
    for bad in ({}, {"onnx": float("nan")}, {"onnx": 0.0}):  # a NaN latency would pass every budget
        cache.put(key, bad)
        assert cache.get(key) is None
    (tmp_path / "file").write_text("")
    LatencyCache(tmp_path / "file" / "cache").put(key, {"onnx": 0.2})  # its folder cannot be made
    assert "latency cache" in capsys.readouterr().err


def test_the_same_search_twice_on_one_machine_gives_the_same_answer(tmp_path):
    """Measured latencies (not a predictor) decide the filter; the machine's latency cache makes the second run
    see exactly the costs of the first, so with the same seed it takes the same path to the same network."""
    cfg = SearchConfig(device="x86-cpu", latency_ms=0.5, strategy="evolution", population=3, trials=4,
                       finalists=0, **FAST)
    run_search(cfg, tmp_path / "a", progress=False)
    run_search(cfg, tmp_path / "b", progress=False)

    def ledger(run):
        return [{k: r.get(k) for k in ("key", "status", "latency_ms", "accuracy")}
                for r in map(json.loads, (run / "trials.jsonl").read_text().splitlines())]
    assert ledger(tmp_path / "a") == ledger(tmp_path / "b")
    best = [json.loads((tmp_path / run / "best.json").read_text()) for run in ("a", "b")]
    assert best[0]["family"] == best[1]["family"] and best[0]["config"] == best[1]["config"]
    assert best[0]["search"]["costs"]["latency_ms"] == best[1]["search"]["costs"]["latency_ms"]
    assert best[1]["search"]["costs"]["latency_kind"].endswith("(cached)")  # the second run measured nothing


def test_filter_never_admits_an_over_budget_candidate(tmp_path):
    budgets = dict(latency_ms=0.8, params=150_000, peak_activation_kib=30.0)
    prof = predicted_profile(tmp_path, **budgets)
    profile = load_profile(prof)
    cost = CostModel(profile, budgets_of(SearchConfig(target="x", device=str(prof)), profile), (1, 8, 8), 10)
    import random
    rng = random.Random(0)
    verdicts = []
    for _ in range(150):
        c = cost.costs(to_arch(random_sample(SpaceConfig(), rng), SpaceConfig()))
        over = c["latency_ms"] > 0.8 or c["params"] > 150_000 or c["peak_activation_kib"] > 30.0
        assert bool(cost.violations(c)) == over
        verdicts.append(over)
    assert any(verdicts) and not all(verdicts)  # the budget really splits the space
    # Through NNI: every trained candidate is within budget, every rejected one was never trained.
    s = run_search(SearchConfig(device=str(prof), strategy="random", trials=3, **FAST), tmp_path / "run",
                   progress=False)
    rows = json.loads((tmp_path / "run" / "trials.json").read_text())
    trained = [r for r in rows if r["status"] == "trained"]  # the 3 trials and the hand-designed reference
    assert len([r for r in trained if not r["reference"]]) == 3
    assert s["rejected"] == len([r for r in rows if r["status"] == "rejected"]) > 0
    for r in trained:
        assert r["latency_ms"] <= 0.8 and r["params"] <= 150_000 and r["peak_activation_kib"] <= 30.0
    for r in rows:
        if r["status"] == "rejected":
            assert r["accuracy"] is None and r["violations"]


def test_the_ledger_skips_cut_and_damaged_lines_and_only_the_search_itself_rewrites_it(tmp_path):
    """Trial processes share trials.jsonl: one killed mid-write leaves a cut line that others' lines follow. A
    trial process skips it and never rewrites the file (others append to it); the search's own process drops it
    when it starts; a line appended after a cut one starts on a line of its own."""
    path = tmp_path / "trials.jsonl"
    good = [json.dumps({"key": k, "status": "trained", "accuracy": a}) for k, a in (("a", 0.5), ("b", 0.6))]
    path.write_text(good[0] + "\n" + '{"key": "c", "sta' + "\n" + "[1]\n" + '{"no": "key"}\n' + good[1] + "\n")
    before = path.read_text()
    trial = Ledger(tmp_path)
    assert sorted(trial.records) == ["a", "b"] and path.read_text() == before
    path.write_text(before + '{"key": "d", "status": "trai')  # being written (or cut) as the last line
    trial.add({"key": "e", "status": "admitted"})
    assert path.read_text().endswith('"trai\n' + json.dumps({"key": "e", "status": "admitted"}) + "\n")
    main = Ledger(tmp_path, repair=True)
    assert sorted(main.records) == ["a", "b", "e"]
    assert path.read_text().splitlines() == [good[0], good[1], json.dumps({"key": "e", "status": "admitted"})]


def test_interrupted_search_resumes_without_repeating_trials(tmp_path):
    prof = predicted_profile(tmp_path, latency_ms=1.0)
    cfg = SearchConfig(device=str(prof), strategy="evolution", population=2, tournament=2, trials=3, **FAST)
    out = tmp_path / "run"
    run_search(cfg, out, progress=False)
    lines = (out / "trials.jsonl").read_text().splitlines()
    first = [json.loads(ln) for ln in lines if '"trained"' in ln and '"reference"' not in ln]
    assert [r["trial"] for r in first] == [1, 2, 3]
    # Simulate a kill during trial 3: keep the ledger up to trial 2 plus half a line.
    cut = lines.index(next(ln for ln in lines if '"trial": 3' in ln))
    (out / "trials.jsonl").write_text("\n".join(lines[:cut]) + "\n" + lines[cut][:25])
    with pytest.raises(EdgepptError, match="already holds a search"):
        run_search(cfg, out, progress=False)
    summary = json.loads((out / "summary.json").read_text())
    summary["wall_s"] = 1000.0  # as an invocation that ran for 1000 s and stopped with results would have left it
    (out / "summary.json").write_text(json.dumps(summary))
    s = run_search(cfg.model_copy(update={"trials": 4}), out, resume=True, progress=False)
    assert 1000.0 < s["wall_s"] < 1000.0 + 600  # the wall time of every invocation, not the resumed one's alone
    recs = [json.loads(ln) for ln in (out / "trials.jsonl").read_text().splitlines()]
    trained = [r for r in recs if r.get("status") == "trained" and not r.get("reference")]
    assert [r["trial"] for r in trained] == [1, 2, 3, 4]  # 1 and 2 kept (not re-run), 3 redone, 4 new
    assert trained[:2] == first[:2] and len({r["key"] for r in trained}) == 4
    assert s["trained"] == 5  # and the hand-designed reference, trained once more (its line came after the cut)
    with pytest.raises(EdgepptError, match="other settings"):
        run_search(cfg.model_copy(update={"seed": 5}), out, resume=True, progress=False)


def test_finalists_are_retrained_with_more_seeds_and_the_best_mean_wins(tmp_path, monkeypatch):
    import edgeppt.search.run as search_run

    calls: list[int] = []
    real = search_run.evaluate_arch
    monkeypatch.setattr(search_run, "evaluate_arch", lambda *a, **k: calls.append(k["seed"]) or real(*a, **k))
    prof = predicted_profile(tmp_path, latency_ms=1.0)
    cfg = SearchConfig(device=str(prof), strategy="random", trials=4, finalists=2, final_seeds=2, reference=False,
                       **FAST)
    out = tmp_path / "run"
    s = run_search(cfg, out, progress=False)
    assert sorted(calls) == [0, 0, 0, 0, 1, 1, 2, 2]  # 4 trials at seed 0, then 2 finalists x 2 more seeds
    rows = [r for r in json.loads((out / "trials.json").read_text()) if r["status"] == "trained"]
    finalists = sorted((r for r in rows if r["finalist"]), key=lambda r: r["finalist"])
    others = [r for r in rows if not r["finalist"]]
    assert len(finalists) == 2 and min(f["accuracy"] for f in finalists) >= max(r["accuracy"] for r in others)
    recs = search_run.Ledger(out).records
    for f in finalists:
        seeds = recs[next(k for k, r in recs.items() if r.get("trial") == f["trial"])]["seed_accuracies"]
        assert len(seeds) == 3 and seeds[0] == f["accuracy"] and f["final_accuracy"] == pytest.approx(np.mean(seeds))
    winner, _ = choose_best([recs[k] for k in recs if recs[k].get("status") == "trained"])
    winner = next(f for f in finalists if f["trial"] == winner["trial"])
    best = json.loads((out / "best.json").read_text())
    assert best["search"]["proxy_accuracy"] == pytest.approx(winner["final_accuracy"]) == s["best"]["proxy_accuracy"]
    assert best["search"]["trial"] == winner["trial"]
    # Resuming with a third finalist runs only its two new seeds; the first two finalists are not re-trained.
    calls.clear()
    run_search(cfg.model_copy(update={"finalists": 3}), out, resume=True, progress=False)
    assert sorted(calls) == [1, 2]
    # Resuming with fewer finalists and seeds trains nothing: the best one alone, on its first two seeds, decides.
    calls.clear()
    s = run_search(cfg.model_copy(update={"finalists": 1, "final_seeds": 1}), out, resume=True, progress=False)
    recs = search_run.Ledger(out).records
    finals = [r for r in recs.values() if r.get("final_accuracy") is not None]
    assert calls == [] and len(finals) == 1 and finals[0]["finalist"] == 1 and len(finals[0]["seed_accuracies"]) == 2
    assert s["best"]["proxy_accuracy"] == pytest.approx(np.mean(finals[0]["seed_accuracies"]))
    # Of auto's settings a search reads only its augmentation rules: transfer's others may change on resume (the
    # pipeline passes transfer's whole auto section), a rule may not
    few = {"finalists": 1, "final_seeds": 1}
    run_search(cfg.model_copy(update={**few, "auto": cfg.auto.model_copy(update={"cv_folds": 5})}), out,
               resume=True, progress=False)
    assert calls == []
    with pytest.raises(EdgepptError, match="auto.mirror_share"):
        run_search(cfg.model_copy(update={**few, "auto": cfg.auto.model_copy(update={"mirror_share": 0.5})}), out,
                   resume=True, progress=False)


def test_training_service_engine_runs_trials_in_nni_trial_processes(tmp_path):
    """engine=local: NNI's manager (Node.js) and local training service run each trial as its own process."""
    import os

    prof = predicted_profile(tmp_path, latency_ms=1.0)
    out = tmp_path / "run"
    s = run_search(SearchConfig(device=str(prof), strategy="random", trials=2, engine="local", concurrency=2,
                                finalists=0, **FAST), out, progress=False)
    trained = [r for r in (json.loads(ln) for ln in (out / "trials.jsonl").read_text().splitlines())
               if r.get("status") == "trained"]
    assert s["trained"] == 2 and len(trained) == 2
    assert all(r["pid"] != os.getpid() for r in trained)  # trained by NNI trial processes, not by this one
    assert (out / "best.json").exists() and any((out / "nni").iterdir())  # NNI's files stay in the run directory


def test_remote_training_service_runs_trials_on_ssh_workers(sshd, tmp_path):
    """engine=remote: NNI's manager logs in to a real OpenSSH server (this machine, as a worker) and runs the
    trials there, two at once; the run directory is shared (the same path), as on shared storage."""
    import getpass
    import os

    prof = predicted_profile(tmp_path, latency_ms=1.0)
    out = tmp_path / "run"
    worker = {"host": "127.0.0.1", "port": sshd.port, "user": getpass.getuser(), "ssh_key_file": str(sshd.identity),
              "python_path": str(Path(sys.executable).parent)}
    s = run_search(SearchConfig(device=str(prof), strategy="random", trials=2, engine="remote", concurrency=2,
                                workers=[worker], manager_ip="127.0.0.1", finalists=0, **FAST), out, progress=False)
    trained = [r for r in (json.loads(ln) for ln in (out / "trials.jsonl").read_text().splitlines())
               if r.get("status") == "trained"]
    assert s["trained"] == 2 and len(trained) == 2
    assert all(r["pid"] != os.getpid() for r in trained)  # trained in the worker's trial processes
    assert "remote" in (out / "nni").rglob("nnimanager.log").__next__().read_text().lower()
    # the workers' runners were told manager_ip, not an address NNI guessed from this machine's interfaces
    settings = [json.loads(p.read_text()) for p in (out / "nni").rglob("envs/*/settings.json")]
    assert settings and {st["nniManagerIP"] for st in settings} == {"127.0.0.1"}
    with pytest.raises(ValueError, match="needs at least one SSH worker"):
        SearchConfig(device=str(prof), trials=1, engine="remote", **FAST)


def test_a_worker_that_cannot_log_in_or_reach_this_machine_is_a_one_line_error_before_nni_starts(sshd, tmp_path):
    """Before the experiment every worker logs in over SSH and connects back to NNI's two ports (held open here
    meanwhile): a worker that cannot would leave NNI waiting for it forever. A manager_ip the worker cannot reach,
    and a key the worker refuses, each stop the search with a line naming the worker, before NNI starts."""
    import getpass

    from edgeppt.search.run import _free_port
    from edgeppt.search.workers import check_workers

    prof = predicted_profile(tmp_path, latency_ms=1.0)
    worker = {"host": "127.0.0.1", "port": sshd.port, "user": getpass.getuser(), "ssh_key_file": str(sshd.identity),
              "python_path": str(Path(sys.executable).parent)}
    cfg = SearchConfig(device=str(prof), strategy="random", trials=1, engine="remote", workers=[worker],
                       manager_ip="127.0.0.1", finalists=0, **FAST)
    check_workers(cfg, _free_port(), tmp_path)  # reachable: no error
    assert (tmp_path / "known_hosts").read_text().strip()  # the worker's host key, kept here, not in ~/.ssh
    # a login that prints its own lines (a greeting in the worker's shell setup), into a folder with a space
    chatty = tmp_path / "chatty bin"
    chatty.mkdir()
    (chatty / "python3").write_text(f'#!/bin/sh\necho "welcome to the worker"\nexec "{sys.executable}" "$@"\n')
    (chatty / "python3").chmod(0o755)
    talker = cfg.model_copy(update={"workers": [cfg.workers[0].model_copy(update={"python_path": str(chatty)})]})
    (tmp_path / "run dir").mkdir()
    check_workers(talker, _free_port(), tmp_path / "run dir")
    assert (tmp_path / "run dir" / "known_hosts").is_file()
    with pytest.raises(EdgepptError, match=r"worker .*127\.0\.0\.1.* cannot reach this machine at 203\.0\.113\.1:"):
        run_search(cfg.model_copy(update={"manager_ip": "203.0.113.1"}), tmp_path / "far", progress=False)
    assert not list((tmp_path / "far").rglob("nnimanager.log"))  # NNI never started
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    stranger = cfg.model_copy(update={"workers": [cfg.workers[0].model_copy(update={"ssh_key_file": other})]})
    with pytest.raises(EdgepptError, match="the SSH login or its python3 failed"):
        check_workers(stranger, _free_port(), tmp_path)


@pytest.mark.parametrize("engine", ["local", "remote"])
def test_a_lost_trial_is_retried(engine, request, tmp_path):
    """The first trial's process (NNI's local training service, or a trial process on an SSH worker) is killed
    (SIGKILL) mid-training: NNI fails that trial, and the search runs the experiment again, which recalls the other
    candidate from the ledger and trains the lost one."""
    import getpass
    import os
    import signal
    import threading

    prof = predicted_profile(tmp_path, latency_ms=1.0)
    out = tmp_path / "run"
    where: dict = {}
    if engine == "remote":
        sshd = request.getfixturevalue("sshd")
        where = {"workers": [{"host": "127.0.0.1", "port": sshd.port, "user": getpass.getuser(),
                              "ssh_key_file": str(sshd.identity), "python_path": str(Path(sys.executable).parent)}],
                 "manager_ip": "127.0.0.1"}
    killed: list[dict] = []

    def kill_first_trial() -> None:
        deadline = time.time() + 300
        while not killed and time.time() < deadline:
            lines = (out / "trials.jsonl").read_text().splitlines() if (out / "trials.jsonl").exists() else []
            for rec in (json.loads(ln) for ln in lines if ln.endswith("}")):
                if rec.get("status") == "training" and rec["pid"] != os.getpid():
                    os.kill(rec["pid"], signal.SIGKILL)
                    killed.append(rec)
                    return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_first_trial, daemon=True)
    killer.start()
    slow = {**FAST, "proxy": {**FAST["proxy"], "finetune_steps": 40}}  # long enough to be killed mid-training
    s = run_search(SearchConfig(device=str(prof), strategy="random", trials=2, engine=engine, concurrency=1,
                                finalists=0, **where, **slow), out, progress=False)
    killer.join(timeout=5)
    assert killed, "no trial was seen training"
    events = [json.loads(ln) for ln in (out / "trials.jsonl").read_text().splitlines()]
    lost = [e for e in events if e["key"] == killed[0]["key"]]
    assert [e["status"] for e in lost if "status" in e][-3:] == ["training", "training", "trained"]
    assert lost[-1]["pid"] != killed[0]["pid"]  # trained again, by another trial process
    assert s["trained"] == 2 and not Ledger(out).lost()


def test_within_the_proxys_noise_the_finalist_with_more_macs_wins():
    def fin(seeds, macs, lat=0.1):
        return {"key": str(macs), "accuracy": seeds[0], "seed_accuracies": seeds, "final_accuracy": np.mean(seeds),
                "macs": macs, "latency_ms": lat}
    small, large, far = fin([0.78, 0.80, 0.82], 1_000_000), fin([0.77, 0.79, 0.81], 5_000_000), \
        fin([0.69, 0.70, 0.71], 9_000_000)
    margin = noise_margin([small, large, far])  # one standard error of a difference of two means of 3 seeds
    assert margin == pytest.approx(np.sqrt(2 * np.mean([4e-4, 4e-4, 1e-4]) / 3))
    best, why = choose_best([small, large, far])
    assert best is large and "within one standard error" in why  # 0.01 below the best mean: a tie; far is not
    lower = fin([0.74, 0.76, 0.78], 5_000_000)  # 0.04 below the best mean: the proxy tells them apart
    assert choose_best([small, lower, far])[0] is small
    single = {"key": "a", "accuracy": 0.9, "macs": 1, "latency_ms": 0.2}  # no finalists: the best single run
    assert choose_best([single, {**single, "key": "b", "accuracy": 0.8, "macs": 9}])[0] is single


def test_the_hand_designed_reference_is_trained_and_always_re_ranked(tmp_path):
    prof = predicted_profile(tmp_path, latency_ms=0.5)
    cfg = SearchConfig(device=str(prof), strategy="random", trials=2, finalists=1, final_seeds=1, **FAST)
    out = tmp_path / "run"
    s = run_search(cfg, out, progress=False)
    rows = json.loads((out / "trials.json").read_text())
    ref = [r for r in rows if r["reference"]]
    assert len(ref) == 1 and ref[0]["status"] == "trained" and ref[0]["finalist"]  # a finalist whatever its score
    assert len([r for r in rows if r["finalist"]]) == 2  # the one finalist of the trials, and the reference
    # The widest member of the family that fits: every wider one breaks the budget.
    width = float(ref[0]["reference"].removeprefix("hand-designed x"))
    ctx_cost = CostModel(load_profile(prof), budgets_of(cfg, load_profile(prof)), (1, 8, 8), 10)
    assert ref[0]["arch"] == reference_arch(width) and ref[0]["latency_ms"] <= 0.5
    wider = [w for w in WIDTHS if w > width]
    assert wider and all(ctx_cost.violations(ctx_cost.costs(reference_arch(w))) for w in wider)
    assert s["reference"]["name"] == ref[0]["reference"] and s["reference"]["proxy_accuracy"] == \
        pytest.approx(ref[0]["final_accuracy"])
    assert s["reference"]["chosen"] == (s["best"]["arch"] == ref[0]["arch"]) and s["why"]
    # Off: no reference is trained.
    s = run_search(cfg.model_copy(update={"reference": False}), tmp_path / "off", progress=False)
    assert s["reference"] is None and s["trained"] == 2


def test_cli_devices_search_and_resume(tmp_path):
    runner = CliRunner()
    r = runner.invoke(app, ["devices", "list"], env={"COLUMNS": "200"})  # a name folded at 30 columns is not one
    assert r.exit_code == 0 and "x86-cpu" in r.output and "jetson" in r.output and "arm-cpu" in r.output
    out = tmp_path / "s1"
    sets = ["--set", "image_size=8", "--set", "test_fraction=0.3", "--set", "val_per_class=5", "--set",
            "latency_repeats=5", "--set", "proxy.pretrain_steps=0", "--set", "proxy.finetune_steps=4"]
    r = runner.invoke(app, ["search", "--device", "x86-cpu", "--latency-ms", "5", "--target", "digits",
                            "--labels-per-class", "3", "--trials", "2", "--strategy", "tpe", "--out", str(out),
                            "--quiet", *sets])
    assert r.exit_code == 0, r.output
    for f in ("best.json", "trials.csv", "trials.json", "pareto.png", "summary.json"):
        assert (out / f).stat().st_size > 0
    best = json.loads((out / "best.json").read_text())
    assert create_model(str(out / "best.json"), 10, 1)(torch.rand(1, 1, 8, 8)).shape == (1, 10)
    assert best["search"]["costs"]["latency_ms"] <= 5
    record = read_best(out)  # the typed record transfer, the report and the wizard read
    assert record is not None and record.arch() == {"family": best["family"], "config": best["config"]}
    assert record.search.costs.latency_ms == best["search"]["costs"]["latency_ms"]
    header = (out / "trials.csv").read_text().splitlines()[0]
    for col in ("accuracy", "latency_ms", "macs", "params", "peak_activation_kib"):
        assert col in header
    before = (out / "trials.jsonl").read_text()
    r = runner.invoke(app, ["search", "--resume", str(out), "--quiet"])
    assert r.exit_code == 0, r.output
    assert (out / "trials.jsonl").read_text() == before  # nothing re-run


def test_bad_input_is_one_clear_line(tmp_path):
    runner = CliRunner()
    base = ["search", "--target", "digits", "--out", str(tmp_path / "x"), "--quiet"]
    r = runner.invoke(app, [*base, "--device", "raspberry-pi-9"])
    assert r.exit_code == 2 and "unknown device 'raspberry-pi-9'" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, [*base, "--device", "x86-cpu", "--params", "100", "--set", "latency_repeats=5"])
    assert r.exit_code == 2 and "Smallest achievable" in r.output and "params" in r.output
    assert not (tmp_path / "x" / "trials.jsonl").exists()
    bad = tmp_path / "typo.yaml"
    bad.write_text("name: typo\nbudgets:\n  latency_msec: 2\n")
    r = runner.invoke(app, [*base, "--device", str(bad)])
    assert r.exit_code == 2 and "latency_msec" in r.output and "latency_ms" in r.output
    with pytest.raises(EdgepptError, match="predictor"):
        (tmp_path / "nopred.yaml").write_text("name: nopred\nlatency: predicted\n")
        run_search(SearchConfig(device=str(tmp_path / "nopred.yaml"), **FAST), tmp_path / "y", progress=False)


def test_calibrate_over_ssh_fits_a_predictor_with_held_out_error(sshd, tmp_path):
    from edgeppt.search.calibrate import calibrate

    rep = calibrate("x86-cpu", sshd.host, tmp_path / "myhost", port=sshd.port, identity=sshd.identity,
                    ssh_options=sshd.ssh_options, python=sys.executable, probes=8, warmup=2, repeats=5,
                    progress=False)
    from edgeppt.search.predictor import errors, fit, layer_features

    # the held-out error is the error, on the 2 probes the fit left out, of a predictor fitted on the other 6
    # measured latencies (the split calibrate draws with its seed, 0)
    feats = [layer_features(create_model(p["arch"], 10, 1), (1, 28, 28)) for p in rep["probes"]]
    lat = [p["measured_ms"] for p in rep["probes"]]
    order = list(range(8))
    random.Random(0).shuffle(order)
    trial = fit([feats[i] for i in order[2:]], [lat[i] for i in order[2:]])
    assert rep["heldout"] == pytest.approx(errors(trial, [feats[i] for i in order[:2]], [lat[i] for i in order[:2]]))
    assert rep["heldout"] != pytest.approx(errors(fit(feats, lat), [feats[i] for i in order[:2]],
                                                  [lat[i] for i in order[:2]]))  # not the fit on all 8
    prof = load_profile(tmp_path / "myhost.yaml")
    assert prof.latency == "predicted" and prof.threads == load_profile("x86-cpu").threads
    assert prof.export.default_format == "int8" and "probes in int8" in prof.description  # timed as it ships
    pred = LatencyPredictor.load(tmp_path / prof.predictor)
    assert set(pred.coef_ms) == set(FEATURES) and pred.heldout == rep["heldout"]
    assert pred.predict_model(create_model("mobilenet_s", 10, 1), (1, 28, 28)) > 0
    with pytest.raises(EdgepptError, match="onnxruntime|exit"):
        calibrate("x86-cpu", sshd.host, tmp_path / "bad", port=sshd.port, identity=sshd.identity,
                  ssh_options=sshd.ssh_options, python="/bin/false", probes=6, progress=False)


def test_ctrl_c_during_a_trial_keeps_finished_trials_and_says_so(tmp_path, monkeypatch):
    import edgeppt.search.run as run_mod

    prof = predicted_profile(tmp_path, latency_ms=1.0)
    cfg = SearchConfig(device=str(prof), strategy="random", trials=3, **FAST)
    real, calls, resumed = run_mod.evaluate_arch, [], []

    def interrupted_second(arch, *a, **k):
        calls.append(json.dumps(arch, sort_keys=True))
        if len(calls) == 2:
            raise KeyboardInterrupt  # NNI's engine swallows it; run_search must not report a finished search
        return real(arch, *a, **k)

    def counted(arch, *a, seed=0, **k):
        resumed.append((json.dumps(arch, sort_keys=True), seed))
        return real(arch, *a, seed=seed, **k)

    monkeypatch.setattr(run_mod, "evaluate_arch", interrupted_second)
    with pytest.raises(KeyboardInterrupt):
        run_search(cfg, tmp_path / "run", progress=False)
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["trained"] == 1  # partial outputs written
    monkeypatch.setattr(run_mod, "evaluate_arch", counted)
    s = run_search(cfg, tmp_path / "run", resume=True, progress=False)
    assert s["trained"] == 4  # 3 trials and the hand-designed reference
    first_seed = [a for a, seed in resumed if seed == cfg.seed]  # the finalists' extra proxy seeds aside
    assert len(first_seed) == 3 and calls[0] not in first_seed  # trials 2 and 3 and the reference; trial 1 kept


def test_candidates_can_be_ranked_on_the_training_labels_alone():
    """val_per_class 0: the proxy's folds hold exactly the k training labels, stratified, each
    scored on labels it was not fine-tuned on; no other target image is read as labelled."""
    from edgeppt.search.proxy import label_folds, prepare

    cfg = SearchConfig(**{**FAST, "val_per_class": 0, "labels_per_class": 4}, folds=2)
    data = prepare(cfg)
    assert len(data.labelled) == 4 * data.num_classes and len(data.folds) == 2
    seen = []
    for train, held in data.folds:
        assert len(train) == len(held) == 2 * data.num_classes  # two per class on each side
        assert not set(map(bytes, train.x.numpy())) & set(map(bytes, held.x.numpy()))
        seen += list(map(bytes, held.x.numpy()))
    assert sorted(seen) == sorted(map(bytes, data.labelled.x.numpy()))  # the held-out folds are the labels, once each
    with pytest.raises(EdgepptError, match="needs at least 5 labels per class"):
        label_folds(data.labelled, 5)


@pytest.mark.slow
def test_the_proxy_records_its_label_free_scores_after_pp():
    """After the proxy's PP: accuracy on generated images held out from PP (above chance: PP learnt the source
    classes, and the held-out images are not PP's), and the k labels' probe in [0, 1]; without PP, neither.
    The example's bundle: the tiny test generator's classes differ too little to be learnt in a few steps."""
    from edgeppt.search.proxy import evaluate_arch, prepare

    cfg = SearchConfig(**{**FAST, "target": "digits:0,1,2,3,4", "source": ROOT / "bundles" / "animals-src",
                          "proxy": dict(pretrain_steps=80, pretrain_batch=32, pretrain_pool=256, finetune_steps=4,
                                     batch_size=8)})
    data = prepare(cfg)
    assert data.pool is not None and data.source_val is not None
    assert not set(map(bytes, data.pool[0].numpy())) & set(map(bytes, data.source_val[0].numpy()))
    arch = to_arch(random_sample(cfg.space, random.Random(0)), cfg.space)
    r = evaluate_arch(arch, data, cfg.proxy)
    assert r["pp_source"] > 0.5 and r["pp_probe"] > 0.2, r  # 5 source and 5 target classes: chance is 0.2
    plain = SearchConfig(**FAST)
    assert not {"pp_source", "pp_probe"} & set(evaluate_arch(arch, prepare(plain), plain.proxy))


def test_the_proxy_fits_its_augmentation_as_transfers_auto_does():
    """auto's label-free rules (edgeppt/train/augment_rules.py) fit the proxy's views too, so candidates are ranked
    as transfer will train them: the digits look unlike their mirror images, so the proxy fine-tunes without flips;
    with the rule off (the pipeline turns the rules off where transfer's method is not auto) flips stay."""
    from edgeppt.search.proxy import prepare

    data = prepare(SearchConfig(**{**FAST, "labels_per_class": 8}))
    assert data.augment.hflip is False and any(n.startswith("auto: flips off") for n in data.augment_notes)
    off = prepare(SearchConfig(**{**FAST, "labels_per_class": 8, "auto": {"mirror_share": 0}}))
    assert off.augment.hflip is True and off.augment_notes == []


def test_the_source_classifier_is_offered_when_it_fits(tmp_path, tiny_bundle):
    """C's costs on the device under the same budgets: within them it is offered (transfer --method tred trains
    it), over them it is not; a budget whose cost is not known for C (its latency, which a predictor cannot read
    off C's layers) is not reported as met."""
    for params, fits in ((10_000_000, None), (30_000, False)):  # C (resnet_xs) has about 75k
        (tmp_path / f"{params}").mkdir()
        prof = predicted_profile(tmp_path / f"{params}", latency_ms=50.0, params=params)
        s = run_search(SearchConfig(device=str(prof), strategy="random", trials=1, source=tiny_bundle,
                                    **{**FAST, "target": "digits:0,1,2,3,4"}), tmp_path / f"run{params}",
                       progress=False)
        sc = s["source_classifier"]
        c = create_model(load_bundle_arch(tiny_bundle), 5, 1)
        assert sc["params"] == sum(p.numel() for p in c.parameters()) and sc["fits"] is fits and sc["macs"] > 0
        assert bool(sc["violations"]) is (fits is False) and (sc["how"] is not None) is (fits is None)
        assert "latency_ms" in sc["unknown"]
        # a predictor reads the search space's layers: C's latency is left to a measurement, not made up
        assert sc["latency_ms"] is None and sc["latency_kind"].startswith("not predicted")


def load_bundle_arch(path):
    from edgeppt.bundle import load_bundle
    from edgeppt.models.onnx_graph import from_bundle

    return from_bundle(load_bundle(path))[0]


def test_prediction_error_figures():
    """The held-out figures on known numbers: a predictor exact on 3 probes and 25% off on the 4th."""
    from edgeppt.search.predictor import FEATURES, errors

    pred = LatencyPredictor(0.0, {k: float(k == "dense_mmacs") for k in FEATURES}, "test")
    feats = [{k: v if k == "dense_mmacs" else 0.0 for k in FEATURES} for v in (1.0, 2.0, 4.0, 8.0)]
    e = errors(pred, feats, [1.0, 2.0, 4.0, 6.4])  # 8 predicted for 6.4 measured: 25% off
    assert e["within_10pct"] == 0.75 and e["max_ape_pct"] == pytest.approx(25.0)
    assert e["mape_pct"] == pytest.approx(25.0 / 4)


def test_predictor_fit_predicts_held_out_probes_of_a_per_layer_device():
    """The fit on calibrate's own probes: for a device whose latency is per-layer linear (as the predictor assumes)
    measured with 3% noise, >= 90% of held-out probes fall within +-10%; without noise the fit is exact."""
    from edgeppt.search.calibrate import probe_archs
    from edgeppt.search.predictor import errors, fit, layer_features

    archs = probe_archs(SpaceConfig(), 32, seed=0)
    feats = [layer_features(create_model(a, 10, 1), (1, 28, 28)) for a in archs]
    true = LatencyPredictor(0.02, {"dense_mmacs": 0.03, "pointwise_mmacs": 0.02, "depthwise_mmacs": 0.08,
                                   "linear_mmacs": 0.01, "activation_melems": 0.5, "layers": 0.004})
    rng = np.random.default_rng(0)
    lat = [true.predict(f) * (1 + 0.03 * rng.standard_normal()) for f in feats]
    train, test = list(range(24)), list(range(24, 32))
    held = errors(fit([feats[i] for i in train], [lat[i] for i in train]), [feats[i] for i in test],
                  [lat[i] for i in test])
    assert held["within_10pct"] >= 0.9 and held["mape_pct"] < 6
    exact = [true.predict(f) for f in feats]
    assert errors(fit(feats, exact), feats, exact)["max_ape_pct"] < 1  # without noise the fit is exact


def test_a_device_profile_edited_in_place_is_named_on_resume(tmp_path):
    """Candidates were admitted or rejected by the profile's budgets: a resume after the profile file changed
    (same name, other budgets) is refused in one line naming what changed; restored, it resumes."""
    prof = predicted_profile(tmp_path, latency_ms=1.0)
    cfg = SearchConfig(device=str(prof), strategy="random", trials=1, finalists=0, reference=False, **FAST)
    run_search(cfg, tmp_path / "run", progress=False)
    original = prof.read_text()
    prof.write_text(original.replace("latency_ms: 1.0", "latency_ms: 0.5"))
    with pytest.raises(EdgepptError, match=r"device profile .* changed since this search started "
                                           r"\(budgets.latency_ms\)"):
        run_search(cfg.model_copy(update={"trials": 2}), tmp_path / "run", resume=True, progress=False)
    prof.write_text(original)
    assert run_search(cfg.model_copy(update={"trials": 2}), tmp_path / "run", resume=True,
                      progress=False)["trained"] == 2


def test_the_reference_never_takes_a_searched_networks_finalist_place(tmp_path, monkeypatch):
    """finalists=1 re-ranks the best searched network, and the hand-designed reference beside it, even where the
    reference's first proxy score is the best of all."""
    import edgeppt.search.run as run_mod
    from edgeppt.search import reference

    real_fit, real_eval, ref_arch = reference.widest_fitting, run_mod.evaluate_arch, []

    def fit(cost):
        found = real_fit(cost)
        ref_arch.append(found[1])
        return found

    def evaluate(arch, data, cfg, seed=0):
        res = real_eval(arch, data, cfg, seed=seed)
        return {**res, "accuracy": 0.99 if ref_arch and arch == ref_arch[0] else res["accuracy"] * 0.5}

    monkeypatch.setattr(reference, "widest_fitting", fit)
    monkeypatch.setattr(run_mod, "evaluate_arch", evaluate)
    prof = predicted_profile(tmp_path, latency_ms=1.0)
    cfg = SearchConfig(device=str(prof), strategy="random", trials=3, finalists=1, final_seeds=1, **FAST)
    run_search(cfg, tmp_path / "run", progress=False)
    finals = [r for r in run_mod.Ledger(tmp_path / "run").records.values() if r.get("final_accuracy") is not None]
    assert sorted(bool(r.get("reference")) for r in finals) == [False, True]


def test_calibration_times_the_probes_in_the_format_the_device_ships():
    """A predicted profile's export ships its default format: int8 probes (the device's recipe) for an int8 device,
    float16 ones for a float16 one, and TensorRT's provider told to build float16 engines."""
    import onnx

    from edgeppt.search.calibrate import shipped_format
    from edgeppt.search.latency import to_onnx

    fp32 = [to_onnx(create_model("mobilenet_s", 10, 1), (1, 28, 28))]
    ops = lambda m: {n.op_type for n in onnx.load_from_string(m).graph.node}  # noqa: E731
    arm, jetson, x86 = (load_profile(n) for n in ("arm-cpu", "jetson", "x86-cpu"))
    int8, providers = shipped_format(fp32, (1, 28, 28), arm)
    assert "QuantizeLinear" in ops(int8[0]) and providers == ["CPUExecutionProvider"]
    half, providers = shipped_format(fp32, (1, 28, 28), jetson)
    inits = onnx.load_from_string(half[0]).graph.initializer
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in inits)
    assert providers[0] == ["TensorrtExecutionProvider", {"trt_fp16_enable": True}]
    plain = x86.model_copy(update={"export": x86.export.model_copy(update={"default_format": "onnx"})})
    assert shipped_format(fp32, (1, 28, 28), plain)[0] == fp32
