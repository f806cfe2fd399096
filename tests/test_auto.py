"""--method auto, the coverage probes it decides on, and real unlabelled target images (--unlabeled)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import WithFeatures, ctrl_c_after_checkpoint
from PIL import Image
from torch import nn
from typer.testing import CliRunner

from edgeppt.bundle_write import save_bundle
from edgeppt.cli import app
from edgeppt.config import AutoConfig, PSSLConfig, TransferConfig
from edgeppt.data import EXAMPLE_TARGET, ImageSet
from edgeppt.errors import EdgepptError
from edgeppt.models import create_model
from edgeppt.runs import load_checkpoint, read_jsonl
from edgeppt.train import augment_rules
from edgeppt.train.loop import Dist
from edgeppt.transfer import coverage, run_transfer
from edgeppt.transfer.run import restart_layers
from edgeppt.transfer.ssl import ALGORITHMS, commonest_over_others

ROOT = Path(__file__).resolve().parents[1]
TARGET = "digits:0,1,2,3,4"


class NoiseGenerator(nn.Module):
    """G(z, p) that ignores the class: a fixed random map of z, so its 'source classes' are noise."""

    def __init__(self, latent: int, shape=(1, 8, 8)):
        super().__init__()
        self.shape = shape
        self.net = nn.Linear(latent, shape[0] * shape[1] * shape[2])

    def forward(self, z, p):
        return torch.sigmoid(4 * self.net(z) + 0 * p.sum(1, keepdim=True)).view(-1, *self.shape)


def open_source_for(bundle_path):
    from edgeppt.bundle import open_source

    return open_source(bundle_path, small(bundle_path))


def small(bundle, **kw) -> TransferConfig:
    base = dict(source=bundle, target=TARGET, labels_per_class=4, pretrain_steps=30, pretrain_batch=64,
                finetune_steps=20, batch_size=20, eval_every=10**6, checkpoint_every=10,
                pssl={"pool_size": 128, "steps": 20, "real_steps": 20})
    base.update(kw)
    return TransferConfig(**base)


def test_probes_measure_class_information():
    k, y = 3, torch.arange(12) % 3
    clean = nn.functional.normalize(torch.eye(k)[y] + 0.05 * torch.randn(12, k), dim=1)
    assert coverage.label_probe(clean, y, k) == 1.0
    noise = nn.functional.normalize(torch.randn(12, 16, generator=torch.Generator().manual_seed(0)), dim=1)
    assert coverage.label_probe(noise, y, k) < 0.7
    # Pseudo samples lying on their anchor's class carry it; samples of a wrong class do not.
    anchor = torch.arange(48) % 12
    assert coverage.pseudo_probe(clean, y, clean[anchor], anchor, k) == 1.0
    assert coverage.pseudo_probe(clean, y, clean[(anchor + 1) % 12], anchor, k) == 0.0
    # One label per class leaves nothing to compare with: the probe says so instead of guessing.
    assert coverage.label_probe(clean[:3], y[:3], k) is None


def test_the_soft_probe_grades_what_the_accuracy_cannot():
    """Two feature sets that both separate the classes perfectly: the tighter one scores higher; noise scores
    chance, though each image's own class mean leaves it out."""
    from edgeppt.train.probe import label_probe_soft

    k, y = 3, torch.arange(12) % 3
    g = torch.Generator().manual_seed(0)
    tight, loose = (nn.functional.normalize(torch.eye(k)[y] + s * torch.randn(12, k, generator=g), dim=1)
                    for s in (0.05, 0.3))
    assert coverage.label_probe(tight, y, k) == coverage.label_probe(loose, y, k) == 1.0
    assert label_probe_soft(tight, y, k) > label_probe_soft(loose, y, k) > 0.5
    noise = nn.functional.normalize(torch.randn(300, 16, generator=g), dim=1)
    assert abs(label_probe_soft(noise, torch.arange(300) % k, k) - 1 / k) < 0.05
    assert label_probe_soft(tight[:3], y[:3], k) is None


def test_auto_picks_scratch_where_the_generator_is_noise(tmp_path):
    torch.manual_seed(0)
    noise = save_bundle(tmp_path / "noise", NoiseGenerator(8), WithFeatures(create_model("resnet_xs", 5, 1)),
                        [f"src{i}" for i in range(5)], 8, (1, 8, 8), info={"test": True})
    lines: list[str] = []
    report = run_transfer(small(noise), tmp_path / "auto", progress=False, log=lines.append)
    assert report["method"] == "scratch" and report["auto"]["method"] == "scratch"
    said = [line for line in lines if line.startswith("auto: ")]
    assert "covers the target poorly" in report["auto"]["reason"] and said and "scratch" in said[-1]
    cov = report["auto"]["coverage"]
    assert cov["pp_probe"] <= cov["init_probe"]
    # What auto trains is exactly the method it chose: the same weights as an explicit scratch run with the
    # augmentation auto's label-free rules set (here: no flips, the digits look unlike their mirror images).
    assert report["mirror"]["hflip"] is False
    explicit = run_transfer(small(noise, method="scratch", augment=report["settings"]["augment"]),
                            tmp_path / "scratch", progress=False)
    assert explicit["test_accuracy"] == report["test_accuracy"]
    a = load_checkpoint(tmp_path / "auto" / "model.pt")["state_dict"]
    b = load_checkpoint(tmp_path / "scratch" / "model.pt")["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_auto_uses_pp_with_the_example_bundle(tmp_path):
    c = small(ROOT / "bundles" / "animals-src", target=EXAMPLE_TARGET, finetune_steps=10,
              pssl={"pool_size": 256, "steps": 10})
    report = run_transfer(c, tmp_path / "auto", progress=False)
    assert report["method"] == "pp", report["auto"]  # pseudo samples only where auto.pseudo_min is set
    cov = report["auto"]["coverage"]
    assert cov["pp_probe"] > cov["init_probe"] and 0 <= cov["pseudo_share"] <= 1
    assert 0 < cov["source_confidence"] <= 1
    assert cov["chance"] < cov["source_probe"] <= 1  # C's features separate the example's animals
    assert report["auto"]["pseudo_samples"] == (report["method"] == "pp+pssl")


def test_the_plan_is_there_while_pp_trains_and_complete_after(tiny_bundle, tmp_path, monkeypatch):
    """The wizard's progress bar reads plan.json: written (PP alone) before PP's first step, whatever auto then
    chooses, and replaced by the whole plan once it has."""
    ctrl_c_after_checkpoint(monkeypatch, lambda phase, step: phase == "pretrain" and step == 10)
    with pytest.raises(KeyboardInterrupt):
        run_transfer(small(tiny_bundle), tmp_path / "run", progress=False)
    monkeypatch.undo()
    plan = json.loads((tmp_path / "run" / "plan.json").read_text())
    assert plan["preliminary"] and plan["method"] == "auto" and plan["phases"] == [{"name": "pretrain", "steps": 30}]
    report = run_transfer(small(tiny_bundle), tmp_path / "run", resume=True, progress=False)
    plan = json.loads((tmp_path / "run" / "plan.json").read_text())
    assert "preliminary" not in plan and plan["method"] == report["method"] and plan["phases"]


def test_auto_resumes_to_the_uninterrupted_result(tiny_bundle, tmp_path, monkeypatch):
    c = small(tiny_bundle)
    whole = run_transfer(c, tmp_path / "whole", progress=False)
    fired = ctrl_c_after_checkpoint(monkeypatch, lambda phase, step: phase != "pretrain" and step == 10)
    with pytest.raises(KeyboardInterrupt):
        run_transfer(c, tmp_path / "cut", progress=False)
    monkeypatch.undo()
    assert (tmp_path / "cut" / "auto.json").is_file() and fired
    (tmp_path / "cut" / "auto.json").write_text('{"method": "pp", "reason"')  # damaged: measured again, the same
    resumed = run_transfer(c, tmp_path / "cut", resume=True, progress=False)
    assert resumed["method"] == whole["method"] and resumed["test_accuracy"] == whole["test_accuracy"]
    a = load_checkpoint(tmp_path / "whole" / "model.pt")["state_dict"]
    b = load_checkpoint(tmp_path / "cut" / "model.pt")["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def _folder(root: Path, n: int, corrupt: int = 0) -> Path:
    root.mkdir(parents=True)
    for i in range(n):
        Image.fromarray((np.random.default_rng(i).random((10, 10)) * 255).astype(np.uint8)).save(root / f"{i}.png")
    for i in range(corrupt):
        (root / f"bad{i}.png").write_bytes(b"not a png at all")
    return root


def test_unlabeled_images_join_the_ssl_phase(tiny_bundle, tmp_path):
    folder = _folder(tmp_path / "u", 24, corrupt=2)
    report = run_transfer(small(tiny_bundle, method="pp+ssl", unlabeled=str(folder),
                                weight_decay=5e-3, pssl={"pool_size": 128, "steps": 20, "real_steps": 20,
                                                         "real_warm_steps": 7, "weight_decay": 1e-4}),
                          tmp_path / "run", progress=False)
    plan = json.loads((tmp_path / "run" / "plan.json").read_text())["phases"]
    assert [(ph["name"], ph["steps"]) for ph in plan] == [("pretrain", 30), ("pp", 7), ("pp_ssl", 20)]
    # the warm start decays as the labels-only phases do, the SSL phase by its own setting
    assert [ph.get("weight_decay") for ph in plan] == [None, 5e-3, 1e-4]
    assert report["unlabeled"]["count"] == 24 and len(report["unlabeled"]["skipped_files"]) == 2
    assert report["unlabeled"]["offered"] == 26  # image files found, the unreadable two among them
    assert report["unlabeled"]["own_images_left_out"] == {}
    assert all("bad" in s for s in report["unlabeled"]["skipped_files"])
    rows = [r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if r["phase"] == "pp_ssl"]
    assert len(rows) == 20 and all("real" in r and "real_mask" in r for r in rows)
    # 'rest': the target pool's own unlabelled images; with pseudo samples as well in pp+pssl.
    both = run_transfer(small(tiny_bundle, method="pp+pssl", unlabeled="rest", max_unlabeled=100), tmp_path / "both",
                        progress=False)
    assert both["unlabeled"]["count"] == 100 < both["unlabeled"]["offered"]  # a fixed subset, max_unlabeled
    row = [r for r in read_jsonl(tmp_path / "both" / "metrics.jsonl") if r["phase"] == "pp_pssl"][-1]
    assert "real" in row and "pseudo" in row


def test_a_run_reports_and_says_what_share_no_label_reached(tiny_bundle, tmp_path, monkeypatch):
    """report.json records the share of unlabelled images pssl.lp_reach left out at the first propagation, and the
    run says so; with lp_reach 0 nothing is left out and nothing is recorded."""
    from edgeppt.transfer import ssl

    true = ssl.propagate

    def half_unreached(*args, **kwargs):  # every other image reached by a hundredth of the others' mass
        prop = true(*args, **kwargs)
        reach = torch.ones_like(prop.reach)
        reach[1::2] = 0.01
        return ssl.Propagation(prop.label, prop.certainty, reach)

    monkeypatch.setattr(ssl, "propagate", half_unreached)
    lines: list[str] = []
    c = small(tiny_bundle, method="pp+ssl", unlabeled="rest", max_unlabeled=40, pssl={"real_steps": 5,
                                                                                      "real_warm_steps": 5})
    report = run_transfer(c, tmp_path / "r", progress=False, log=lines.append)
    unreached = report["unlabeled"]["unreached"]
    assert unreached["limit"] == 0.3 and unreached["gap"] == 8.0
    assert 0.3 < unreached["share"] < 0.7  # per class: about half of each
    assert any("of the unlabelled images left out: little of any label reaches them" in ln for ln in lines)
    off = run_transfer(c.model_copy(update={"pssl": c.pssl.model_copy(update={"lp_reach": 0.0})}), tmp_path / "o",
                       progress=False)
    assert "unreached" not in off["unlabeled"]


def test_bad_unlabeled_input_is_one_line(tiny_bundle, tmp_path):
    with pytest.raises(EdgepptError, match="no readable image"):
        run_transfer(small(tiny_bundle, method="pp+ssl", unlabeled=str(_folder(tmp_path / "bad", 0, corrupt=3))),
                     tmp_path / "a", progress=False)
    np.savez(tmp_path / "u.npz", x=np.zeros((4, 5), np.float32))
    with pytest.raises(EdgepptError, match="x has shape"):
        run_transfer(small(tiny_bundle, method="pp+ssl", unlabeled=str(tmp_path / "u.npz")), tmp_path / "b",
                     progress=False)
    with pytest.raises(EdgepptError, match="give --unlabeled"):
        run_transfer(small(tiny_bundle, method="ssl"), tmp_path / "c", progress=False)
    res = CliRunner().invoke(app, ["transfer", "--source", str(tiny_bundle), "--target", TARGET, "--method", "pp+ssl",
                                   "--unlabeled", str(tmp_path / "missing"), "--out", str(tmp_path / "d"), "--quiet"])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "missing" in res.output and len(res.output.strip().splitlines()) == 1


def test_the_transfer_record_is_typed_and_a_foreign_one_is_refused(tiny_bundle, tmp_path):
    from edgeppt.export.onnx_export import load_run
    from edgeppt.transfer.record import read_report

    run_transfer(small(tiny_bundle, method="scratch", finetune_steps=5), tmp_path / "r", progress=False)
    record = read_report(tmp_path / "r")
    assert record is not None and record.method == "scratch" and record.phases[0].steps == 5
    assert len(record.data_record.labelled) == 20 and record.data_record.test_split
    (tmp_path / "r" / "report.json").write_text('{"test_accuracy": "high"}')
    with pytest.raises(EdgepptError, match="not a transfer report"):
        load_run(tmp_path / "r")


def test_label_propagation_spreads_labels_along_clusters():
    from edgeppt.transfer.ssl import propagate

    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 16, generator=g) * 4
    truth = torch.arange(300) % 3
    feats = centres[truth] + torch.randn(300, 16, generator=g)
    order = torch.cat([torch.tensor([0, 1, 2]), torch.arange(3, 300)])  # one labelled image per class first
    label, certainty, _ = propagate(feats[order], truth[:3], 3, neighbours=10, alpha=0.99)
    assert (label == truth[order]).float().mean() > 0.95
    assert certainty.min() >= 0 and certainty.max() <= 1 and certainty[3:].mean() > 0.2
    noise = torch.randn(300, 16, generator=g)  # no structure: far less certain
    _, unsure, _ = propagate(noise, truth[:3], 3, neighbours=10, alpha=0.99)
    assert unsure[3:].mean() < certainty[3:].mean()


def test_label_propagation_reaches_the_far_end_of_a_long_chain():
    """The propagated labels are the solution of the graph's linear system, not a few steps toward it: on two long
    chains of images (each linked only to its nearest neighbours), labelled at one end, every image gets its chain's
    label. Twenty steps of the series left the far half of each chain at zero, which read as class 0."""
    from edgeppt.transfer.ssl import propagate

    n = 60  # images per chain: its far end lies 30 hops from the labelled one (two neighbours on each side)
    angles = torch.cat([torch.linspace(0.0, 1.4, n), torch.linspace(3.14, 4.54, n)])  # two arcs, far apart
    feats = torch.stack([angles.cos(), angles.sin()], 1)
    truth = (torch.arange(2 * n) >= n).long()
    order = torch.cat([torch.tensor([0, n]), torch.arange(1, n), torch.arange(n + 1, 2 * n)])  # labelled first
    label, certainty, _ = propagate(feats[order], truth[[0, n]], 2, neighbours=4, alpha=0.99)
    assert torch.equal(label, truth[order])
    assert certainty.min() > 0.99  # the chains do not touch: nothing of the other class reaches either


def test_propagated_labels_are_balanced_toward_the_shares_given():
    """Each class's propagated labels weigh their share of the total: by default equal shares (Iscen et al.), so
    where one class holds most unlabelled images each of its labels counts less; with the labels' own shares given
    (as `pssl.lp_balance predicted` gives the model's), each label weighs its certainty alone."""
    from edgeppt.transfer.ssl import label_weights

    label, certainty = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 2, 2]), torch.linspace(0.5, 1.0, 10)
    balanced = label_weights(label, certainty, 3)
    totals = torch.stack([(balanced / certainty)[label == c].sum() for c in range(3)])
    assert torch.allclose(totals, torch.full((3,), 10 / 3))
    assert balanced[0] < certainty[0] and balanced[-1] > certainty[-1]
    shares = torch.tensor([0.6, 0.2, 0.2])  # the labels' own shares: no rebalancing
    assert torch.allclose(label_weights(label, certainty, 3, shares), certainty)
    # a class the pool hardly holds (1 of 10,000) weighs at most 10 times its fair share, not 3,333 times
    rare = torch.zeros(10_000, dtype=torch.long)
    rare[:5000], rare[-1] = 1, 2
    assert label_weights(rare, torch.ones(10_000), 3).max() == 10.0


def _cut_at_ssl_step_10_resumes_to(c: TransferConfig, whole: dict, tmp_path: Path, monkeypatch) -> None:
    """Ctrl-C after the SSL phase's checkpoint at step 10, then --resume: the weights and accuracy of `whole`
    (an uninterrupted run of `c` in tmp_path / "whole")."""
    ctrl_c_after_checkpoint(monkeypatch, lambda phase, step: phase == "pp_ssl" and step == 10)
    with pytest.raises(KeyboardInterrupt):
        run_transfer(c, tmp_path / "cut", progress=False)
    monkeypatch.undo()
    resumed = run_transfer(c, tmp_path / "cut", resume=True, progress=False)
    a = load_checkpoint(tmp_path / "whole" / "model.pt")["state_dict"]
    b = load_checkpoint(tmp_path / "cut" / "model.pt")["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a) and resumed["test_accuracy"] == whole["test_accuracy"]


def test_labelprop_trains_on_propagated_labels_and_resumes_exactly(tiny_bundle, tmp_path, monkeypatch):
    c = small(tiny_bundle, method="pp+ssl", unlabeled="rest",
              pssl={"pool_size": 128, "real_steps": 20, "algorithm": "labelprop", "lp_refresh": 5})
    lines: list[str] = []
    whole = run_transfer(c, tmp_path / "whole", progress=False, log=lines.append)
    # the warm start's predicted class shares of the unlabelled images are recorded, and a run says when they are
    # far from the equal shares that the default class balance assumes
    shares = whole["unlabeled"]["predicted_shares"]
    assert list(shares) == whole["classes"] and sum(shares.values()) == pytest.approx(1.0, abs=1e-5)
    # ... and the SSL model's own, where it is kept (a signal recorded for study, not used)
    final = whole["unlabeled"]["final_shares"]
    assert list(final) == whole["classes"] and sum(final.values()) == pytest.approx(1.0, abs=1e-5)
    top = max(final.values())  # the commonest class's share over an average other's
    assert whole["unlabeled"]["commonest_over_others"]["final"] == pytest.approx(
        top * (len(final) - 1) / (1 - top), rel=1e-4)
    warned = [line for line in lines if "lp_balance=none" in line]
    limit = AutoConfig().uneven_shares  # auto's way back's limit, the warning's too
    assert len(warned) == (commonest_over_others(torch.tensor(list(shares.values()))) > limit), (shares, lines)
    rows = [r for r in read_jsonl(tmp_path / "whole" / "metrics.jsonl") if r["phase"] == "pp_ssl"]
    # real_mask: the batch's mean weight, certainty times class balance over the pool's mean (pssl.lp_relative)
    assert len(rows) == 20 and all(r["real_mask"] > 0 for r in rows)
    assert 0.7 < sum(r["real_mask"] for r in rows) / len(rows) < 1.3, [r["real_mask"] for r in rows]
    _cut_at_ssl_step_10_resumes_to(c, whole, tmp_path, monkeypatch)


def test_labelprop_graph_beside_the_pp_weights_features_resumes_exactly(tiny_bundle, tmp_path, monkeypatch):
    """pssl.lp_graph model+pp: every propagation's graph is built on the model's features beside those of the PP
    weights as PP left them (each L2-normalised), frozen through the SSL phase; a resumed run takes the same
    weights from PP again and ends with the weights of an uninterrupted one."""
    import edgeppt.transfer.ssl as ssl_module

    c = small(tiny_bundle, method="pp+ssl", unlabeled="rest",
              pssl={"pool_size": 128, "real_steps": 20, "algorithm": "labelprop", "lp_refresh": 5,
                    "lp_graph": "model+pp"})
    widths: list[int] = []
    graphs: list[torch.Tensor] = []
    plain = ssl_module.propagate

    def spy(features, labels, *args, **kwargs):
        widths.append(features.shape[1])
        graphs.append(features.clone())
        return plain(features, labels, *args, **kwargs)

    monkeypatch.setattr(ssl_module, "propagate", spy)
    whole = run_transfer(c, tmp_path / "whole", progress=False)
    width = create_model(c.arch, 5, 1).forward_features(torch.zeros(1, 1, 8, 8)).flatten(1).shape[1]
    assert widths == [2 * width] * 4  # propagations at steps 0, 5, 10 and 15
    pp_half = [g[:, width:] for g in graphs]
    assert all(torch.allclose(h, pp_half[0]) for h in pp_half)  # the PP weights' half never moves
    assert not torch.allclose(graphs[0][:, :width], graphs[-1][:, :width])  # the model's own half does
    assert torch.allclose(pp_half[0].norm(dim=1), torch.ones(len(pp_half[0])), atol=1e-5)
    monkeypatch.undo()
    _cut_at_ssl_step_10_resumes_to(c, whole, tmp_path, monkeypatch)


@pytest.mark.parametrize("limit", [0.0, 1.0])
def test_labelprop_graph_auto_adds_the_pp_features_where_they_agree_and_resumes_exactly(limit, tiny_bundle, tmp_path,
                                                                                        monkeypatch):
    """pssl.lp_graph auto: at the first propagation the labels are propagated over the model's features alone and
    over PP's alone; PP's join every graph of the phase where the two agree on at least lp_graph_agree of the
    unlabelled images, and never otherwise. The run reports and records the decision, and a resumed run keeps it."""
    import edgeppt.transfer.ssl as ssl_module

    c = small(tiny_bundle, method="pp+ssl", unlabeled="rest",
              pssl={"pool_size": 128, "real_steps": 20, "algorithm": "labelprop", "lp_refresh": 5,
                    "lp_graph": "auto", "lp_graph_agree": limit})
    widths: list[int] = []
    plain = ssl_module.propagate

    def spy(features, labels, *args, **kwargs):
        widths.append(features.shape[1])
        return plain(features, labels, *args, **kwargs)

    monkeypatch.setattr(ssl_module, "propagate", spy)
    lines: list[str] = []
    whole = run_transfer(c, tmp_path / "whole", progress=False, log=lines.append)
    graph = whole["unlabeled"]["pp_graph"]
    assert 0 <= graph["agreement"] <= 1 and graph["limit"] == limit
    assert graph["used"] == (graph["agreement"] >= limit), graph
    assert graph["used"] == (limit == 0.0)  # both paths run: the tiny pool's agreement is under 1
    width = create_model(c.arch, 5, 1).forward_features(torch.zeros(1, 1, 8, 8)).flatten(1).shape[1]
    # step 0: the model's features alone, PP's alone, then (where PP's join) both; then steps 5, 10 and 15
    assert widths == ([width, width, 2 * width] + [2 * width] * 3 if graph["used"] else [width, width] + [width] * 3)
    assert any(("joined" if graph["used"] else "stayed out of") in line and "pssl.lp_graph_agree" in line
               for line in lines)
    monkeypatch.undo()
    _cut_at_ssl_step_10_resumes_to(c, whole, tmp_path, monkeypatch)


def _labels_and_unlabelled(n_real: int) -> tuple[ImageSet, torch.Tensor]:
    """10 random labelled 8x8 images of 5 classes and n_real unlabelled ones, from a fixed seed."""
    g = torch.Generator().manual_seed(0)
    labelled = ImageSet(torch.rand(10, 1, 8, 8, generator=g), torch.arange(10) % 5, [str(i) for i in range(5)])
    return labelled, torch.rand(n_real, 1, 8, 8, generator=g)


def test_labelprop_computes_only_the_views_its_loss_reads():
    """Propagated labels need no weak-view guess: without the consistency term each real image is seen once."""
    labelled, real = _labels_and_unlabelled(40)
    for consistency, images in ((0.0, 4 + 4), (1.0, 4 + 2 * 4)):  # labelled + real (+ their weak view)
        cfg = PSSLConfig(lp_consistency=consistency, lp_neighbours=5)
        objective = ALGORITHMS["labelprop"](labelled, None, 4, cfg, real=real)
        model = create_model("resnet_xs", 5, 1)
        objective.setup(model)
        loss, stats = objective.loss(model, torch.Generator().manual_seed(1), 0, 10, Dist())
        assert stats["images"] == images and torch.isfinite(loss)


def test_labelprop_agreement_weights_down_labels_the_model_doubts():
    """pssl.lp_agree multiplies each propagated label's weight by the model's own probability of it, to that power:
    the same labels, each weight no larger, and the ones the model disagrees with shrunk the most."""
    labelled, real = _labels_and_unlabelled(60)
    torch.manual_seed(0)
    model = create_model("resnet_xs", 5, 1)
    runs = {}
    for power in (0.0, 1.0, 4.0):
        cfg = PSSLConfig(lp_agree=power, lp_neighbours=5, lp_relative=False)  # the weights as computed, unscaled
        objective = ALGORITHMS["labelprop"](labelled, None, 4, cfg, real=real)
        objective.setup(model)
        runs[power] = (objective.lp_label.clone(), objective.lp_weight.clone(), objective.agreement)
    (label, plain, agree), (_, soft, _), (_, hard, _) = runs[0.0], runs[1.0], runs[4.0]
    assert torch.equal(label, runs[1.0][0]) and torch.equal(label, runs[4.0][0])
    model.eval()
    with torch.no_grad():
        own = torch.softmax(model(real), 1)
    expected = plain * own.gather(1, label[:, None]).squeeze(1)
    assert torch.allclose(soft, expected, rtol=1e-4, atol=1e-7) and (hard <= soft + 1e-7).all()
    assert agree == pytest.approx((own.argmax(1) == label).float().mean().item())
    # pssl.lp_relative (the default) divides the weights by their mean: the same labels and order, mean 1
    relative = ALGORITHMS["labelprop"](labelled, None, 4, PSSLConfig(lp_neighbours=5), real=real)
    relative.setup(model)
    assert torch.equal(relative.lp_label, label) and plain.mean() < 0.9
    assert torch.allclose(relative.lp_weight, plain / plain.mean(), rtol=1e-5)
    _, stats = objective.loss(model.train(), torch.Generator().manual_seed(1), 0, 10, Dist())
    assert stats["lp_agree"] == pytest.approx(agree)


def test_labelprop_leaves_out_the_least_certain_share_of_the_unlabelled_images():
    """pssl.lp_drop: the least certain share of the propagated labels weighs 0 (where images of no target class
    gather); the same labels, and the kept ones class-balanced among themselves."""
    labelled, real = _labels_and_unlabelled(60)
    torch.manual_seed(0)
    model = create_model("resnet_xs", 5, 1)
    runs = {}
    for drop in (0.0, 0.5):
        objective = ALGORITHMS["labelprop"](labelled, None, 4, PSSLConfig(lp_drop=drop, lp_neighbours=5,
                                                                          lp_relative=False), real=real)
        objective.setup(model)
        runs[drop] = (objective.lp_label.clone(), objective.lp_weight.clone())
    (label, every), (same, half) = runs[0.0], runs[0.5]
    assert torch.equal(label, same) and (every > 0).all()
    assert int((half == 0).sum()) == len(real) // 2  # 60 images, no ties in certainty
    kept = half > 0
    # the class balance is recounted over the kept images: each kept label's weight is its weight over all images
    # times (kept / all images) x (the class's labels over all / kept)
    for c in label[kept].unique():
        mine, alone = kept & (label == c), label == c
        ratio = (kept.sum() / len(label)) * (alone.sum() / mine.sum())
        assert torch.allclose(half[mine], every[mine] * ratio, rtol=1e-4), c


def test_labelprop_leaves_out_the_images_little_label_mass_reaches(monkeypatch):
    """pssl.lp_reach: images whose reach is under the limit times the pool's 90th percentile weigh 0; the rest keep
    their labels, balanced among themselves; the warm start's class shares and the agreement are taken over the
    reached images only, and the share left out is kept (checkpointed) for the report."""
    from edgeppt.transfer import ssl

    labelled, real = _labels_and_unlabelled(60)
    torch.manual_seed(0)
    model = create_model("resnet_xs", 5, 1).eval()
    true = ssl.propagate
    far = torch.arange(60) >= 45  # the last 15 unlabelled images: reached by a twentieth of the others' mass

    def fewer(*args, **kwargs):
        prop = true(*args, **kwargs)
        reach = torch.ones_like(prop.reach)
        reach[10:][far] = 0.05
        return ssl.Propagation(prop.label, prop.certainty, reach)

    monkeypatch.setattr(ssl, "propagate", fewer)
    runs = {}
    for limit in (0.0, 0.3):
        cfg = PSSLConfig(lp_reach=limit, lp_neighbours=5, lp_relative=False)
        runs[limit] = objective = ALGORITHMS["labelprop"](labelled, None, 4, cfg, real=real)
        objective.setup(model)
    every, kept = runs[0.0], runs[0.3]
    assert torch.equal(every.lp_label, kept.lp_label)
    assert (kept.lp_weight[far] == 0).all() and (kept.lp_weight[~far] > 0).all() and (every.lp_weight > 0).all()
    assert every.lp_unreached.item() == 0.0 and kept.lp_unreached.item() == pytest.approx(0.25)
    assert "lp_unreached" in kept.state_dict()
    with torch.no_grad():
        own = torch.softmax(model(real), 1)
    assert torch.allclose(kept.lp_shares, own[~far].mean(0), atol=1e-6)
    assert torch.allclose(every.lp_shares, own.mean(0), atol=1e-6)
    assert kept.agreement == pytest.approx((own.argmax(1) == kept.lp_label)[~far].float().mean().item())


def test_uneven_shares_warning_names_the_class_and_the_way_out():
    from edgeppt.transfer.ssl import uneven_shares_warning

    line = uneven_shares_warning(torch.tensor([0.1, 0.7, 0.2]), ["cat", "dog", "cow"])
    assert "70% of the unlabelled images are 'dog', 4.7 times as many as an average other class" in line
    assert "--set pssl.lp_balance=none" in line and "without --unlabeled" in line


def test_labelprop_balances_toward_the_shares_the_warm_start_predicts():
    """pssl.lp_balance predicted: the classes' shares of the unlabelled images are the warm-started model's mean
    prediction over them, taken at the first propagation and kept (a later model has learnt the propagated labels,
    so its shares would only echo them); each class's labels then weigh its share of the total."""
    from edgeppt.transfer.ssl import label_weights

    labelled, real = _labels_and_unlabelled(60)
    torch.manual_seed(0)
    model = create_model("resnet_xs", 5, 1).eval()
    cfg = PSSLConfig(lp_neighbours=5, lp_balance="predicted", lp_relative=False)
    objective = ALGORITHMS["labelprop"](labelled, None, 4, cfg, real=real)
    objective.setup(model)
    with torch.no_grad():
        shares = torch.softmax(model(real), 1).mean(0)
    assert torch.allclose(objective.lp_shares, shares, atol=1e-6)
    label = objective.lp_label
    plain = ALGORITHMS["labelprop"](labelled, None, 4, cfg.model_copy(update={"lp_balance": "none"}), real=real)
    plain.setup(model)  # the same labels, each weighing its certainty alone
    assert torch.equal(plain.lp_label, label)
    assert torch.allclose(objective.lp_weight, label_weights(label, plain.lp_weight, 5, shares), atol=1e-6)
    with torch.no_grad():  # another model later in the phase: the shares stay the warm start's
        for p in model.parameters():
            p.add_(0.5 * torch.randn_like(p))
    objective._propagate(100)
    assert torch.allclose(objective.lp_shares, shares, atol=1e-6)
    assert "lp_shares" in objective.state_dict()  # checkpointed with the labels: a resume keeps them


def test_labelprop_seeds_the_graph_with_views_of_each_labelled_image(monkeypatch):
    """pssl.lp_label_views: that many weak views of each labelled image join it as labelled nodes, with its label,
    drawn from the step's seed (so a resume propagates the same); the real images' labels come out as before."""
    import edgeppt.transfer.ssl as ssl_module

    labelled, real = _labels_and_unlabelled(40)
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    plain = ssl_module.propagate

    def spy(features, labels, *args, **kwargs):
        seen.append((features.clone(), labels.clone()))
        return plain(features, labels, *args, **kwargs)

    monkeypatch.setattr(ssl_module, "propagate", spy)
    model = create_model("resnet_xs", 5, 1)
    for views in (0, 3, 3):
        objective = ALGORITHMS["labelprop"](labelled, None, 4, PSSLConfig(lp_label_views=views, lp_neighbours=5),
                                            real=real)
        objective.setup(model)
        assert objective.lp_label.shape == (40,)
    (f0, y0), (f3, y3), (f3_again, _) = seen
    assert len(f0) == 10 + 40 and torch.equal(y0, labelled.y)
    assert len(f3) == 4 * 10 + 40 and torch.equal(y3, labelled.y.repeat(4))
    assert torch.equal(f3[:10], f0[:10]) and not torch.allclose(f3[10:20], f0[:10])  # views, not copies
    assert torch.equal(f3, f3_again)  # the same step draws the same views


def test_pp_options_blend_classes_and_distil_from_c(tiny_bundle, tmp_path):
    """pretrain_mix conditions G on blends of two source classes and trains toward them; pretrain_teacher adds a
    distillation term toward C; each gets its own PP cache entry, and the default's draws are unchanged."""
    from edgeppt.bundle import open_source
    from edgeppt.transfer.objectives import PseudoPretrain

    bundle = open_source(tiny_bundle, small(tiny_bundle))
    asked: list[torch.Tensor] = []
    generate = bundle.generate
    bundle.generate = lambda p, z=None, generator=None: asked.append(p) or generate(p, z, generator)
    model = create_model("resnet_xs", 5, 1)
    for mix, teacher in ((0.0, 0.0), (0.5, 0.0), (0.0, 1.0)):
        objective = PseudoPretrain(bundle, 16, mix=mix, teacher=teacher)
        objective.setup(model)
        loss, stats = objective.loss(model, torch.Generator().manual_seed(0), 0, 10, Dist())
        p = asked[-1]
        assert torch.isfinite(loss) and torch.allclose(p.sum(1), torch.ones(16))
        if mix:
            second = p.sort(1, descending=True).values[:, 1]
            assert (second <= 0.5).all() and (second > 0).any() and ((p > 0).sum(1) <= 2).all()
        else:
            assert ((p == 1).sum(1) == 1).all() and torch.equal(p, asked[0])  # the same draws as the default
        assert ("kd" in stats) == bool(teacher) and (not teacher or stats["kd"] > 0)  # an untrained student
    cache = tmp_path / "cache"
    for name, kw in (("plain", {}), ("teacher", {"pretrain_teacher": 1.0})):
        run_transfer(small(tiny_bundle, method="pp", **kw), tmp_path / name, progress=False, pp_cache=cache)
    assert len(list(cache.glob("pp-*.pt"))) == 2  # distinct settings, distinct PP weights
    rows = [r for r in read_jsonl(tmp_path / "teacher" / "pretrain" / "metrics.jsonl") if r["phase"] == "pretrain"]
    assert len(rows) == 30 and all(r["kd"] > 0 for r in rows)  # C's outputs are not the student's


def test_nt_xent_is_low_when_each_view_finds_its_pair_and_high_when_it_cannot():
    from edgeppt.transfer.objectives import nt_xent

    g = torch.Generator().manual_seed(0)
    z = torch.randn(32, 16, generator=g)
    matched = nt_xent(z, z + 0.01 * torch.randn(32, 16, generator=g), 0.2).item()
    unmatched = nt_xent(z, torch.randn(32, 16, generator=g), 0.2).item()
    assert matched < 1.0 < np.log(63) - 1.0 < unmatched  # chance is about log(2N - 1)


def test_pp_contrastive_trains_a_projection_beside_the_head_and_keeps_its_own_cache(tiny_bundle, tmp_path,
                                                                                    monkeypatch):
    """pretrain_contrastive adds SimCLR's term on a strong view through a projection that PP drops: the model's
    weights change through it, its PP weights get their own cache entry, and a resumed PP equals an uninterrupted
    one."""
    from edgeppt.bundle import open_source
    from edgeppt.transfer.objectives import PseudoPretrain

    bundle = open_source(tiny_bundle, small(tiny_bundle))
    model = create_model("resnet_xs", 5, 1)
    objective = PseudoPretrain(bundle, 16, contrastive=1.0)
    objective.setup(model)
    net = objective.trainable(model)
    assert {n.split(".")[0] for n, _ in net.named_parameters()} == {"model", "projection"}
    loss, stats = objective.loss(net, torch.Generator().manual_seed(0), 0, 10, Dist())
    assert stats["images"] == 32 and stats["contrastive"] > 0
    loss.backward()
    assert all(p.grad is not None for p in objective.projection.parameters())
    cache = tmp_path / "cache"
    for name, kw in (("plain", {}), ("contrastive", {"pretrain_contrastive": 1.0})):
        run_transfer(small(tiny_bundle, method="pp", **kw), tmp_path / name, progress=False, pp_cache=cache)
    assert len(list(cache.glob("pp-*.pt"))) == 2
    rows = [r for r in read_jsonl(tmp_path / "contrastive" / "pretrain" / "metrics.jsonl") if r["phase"] == "pretrain"]
    assert len(rows) == 30 and all(r["contrastive"] > 0 for r in rows)
    a, b = (load_checkpoint(tmp_path / n / "model.pt")["state_dict"] for n in ("plain", "contrastive"))
    assert any(not torch.equal(a[k], b[k]) for k in a)
    c = small(tiny_bundle, method="pp", pretrain_contrastive=1.0)  # a Ctrl-C inside PP: the projection resumes too
    ctrl_c_after_checkpoint(monkeypatch, lambda phase, step: phase == "pretrain" and step == 10)
    with pytest.raises(KeyboardInterrupt):
        run_transfer(c, tmp_path / "cut", progress=False)
    monkeypatch.undo()
    run_transfer(c, tmp_path / "cut", resume=True, progress=False)
    cut = load_checkpoint(tmp_path / "cut" / "model.pt")["state_dict"]
    assert all(torch.equal(b[k], cut[k]) for k in b)


def test_every_labels_based_objective_smooths_its_labels(tiny_bundle):
    """label_smoothing reaches kd, l2sp and tred as it does scratch, pp and ft: baselines under one regulariser."""
    from edgeppt.bundle import open_source
    from edgeppt.transfer.methods import METHODS

    cfg = small(tiny_bundle, label_smoothing=0.2)
    bundle = open_source(tiny_bundle, cfg)
    labelled = ImageSet(torch.rand(10, 1, 8, 8), torch.arange(10) % 5, [str(i) for i in range(5)])
    for name in ("scratch", "pp", "ft", "kd", "l2sp", "tred"):
        assert METHODS[name].target(cfg, labelled, bundle, None, None).label_smoothing == 0.2, name


def test_ssl_phase_smooths_its_labelled_term_when_asked():
    """pssl.smooth_labels gives the SSL phase's labelled cross-entropy the run's label_smoothing (off: plain)."""
    from edgeppt.transfer.methods import METHODS

    labelled, real = _labels_and_unlabelled(40)
    torch.manual_seed(0)
    model = create_model("resnet_xs", 5, 1)
    sup = {}
    for smooth in (False, True):
        cfg = TransferConfig(target=TARGET, label_smoothing=0.3, pssl={"smooth_labels": smooth, "lp_neighbours": 5})
        objective = METHODS["pp+ssl"].target(cfg, labelled, None, None, real)
        assert objective.label_smoothing == (0.3 if smooth else 0.0)
        objective.setup(model)
        sup[smooth] = objective.loss(model.eval(), torch.Generator().manual_seed(1), 0, 10, Dist())[1]["sup"]
    # the same batch and logits (same seeds, eval mode): only the smoothing differs
    assert sup[True] != pytest.approx(sup[False])


class _ByIntensity(nn.Module):
    """Labels an image by its mean intensity (class c is drawn at brightness (c + 0.5) / k), shifted by `shift`."""

    def __init__(self, k: int, shift: int = 0):
        super().__init__()
        self.k, self.shift, self.dummy = k, shift, nn.Parameter(torch.zeros(1))

    def forward(self, x):
        c = (x.mean((1, 2, 3)) * self.k).long().clamp(0, self.k - 1)
        return nn.functional.one_hot((c + self.shift) % self.k, self.k).float() + 0 * self.dummy


def test_reverse_accuracy_tells_right_labels_of_the_unlabelled_images_from_wrong_ones():
    """A fresh network taught by a model's labels of the unlabelled images recovers the k labels when those
    labels are right, and fails where the model labels every image as its neighbouring class."""
    from edgeppt.transfer.reverse import reverse_accuracy

    k, g = 3, torch.Generator().manual_seed(0)

    def images(n):
        y = torch.arange(n) % k
        return ((y.float() + 0.5) / k).view(-1, 1, 1, 1) + 0.05 * torch.randn(n, 1, 8, 8, generator=g), y

    xl, yl = images(12)
    labelled = ImageSet(xl.clamp(0, 1), yl, [str(i) for i in range(k)])
    real = images(120)[0].clamp(0, 1)
    cfg = TransferConfig(target=TARGET, batch_size=12)
    right = reverse_accuracy(_ByIntensity(k), real, labelled, cfg, steps=60)
    wrong = reverse_accuracy(_ByIntensity(k, shift=1), real, labelled, cfg, steps=60)
    assert right >= 0.9 and wrong <= 0.1


def test_auto_reverse_check_keeps_or_reverts_to_the_warm_start(tiny_bundle, tmp_path, monkeypatch):
    """With real unlabelled images and auto.reverse_check, auto keeps the SSL model or goes back to the warm start
    it kept on disk, by the reverse accuracies, and says which; a resumed run takes the same decision."""
    from edgeppt.transfer import run as run_module

    kw = dict(unlabeled="rest",
              auto={"reverse_check": True, "reverse_steps": 5, "uneven_shares": 0, "agreement_min": 0})
    kept = run_transfer(small(tiny_bundle, **kw), tmp_path / "kept", progress=False)
    rc = kept["reverse_check"]
    assert set(rc) >= {"ssl", "warm", "kept", "reason"} and 0 <= rc["ssl"] <= 1 and 0 <= rc["warm"] <= 1
    assert (tmp_path / "kept" / "warm_start.pt").is_file() and kept["method"] == rc["kept"]
    ssl_name = kept["auto"]["method"]
    # Force the decision both ways: first the SSL model's labels scored above the warm start's ...
    scores = iter([0.8, 0.2])
    monkeypatch.setattr(run_module, "reverse_accuracy", lambda *a, **k: next(scores))
    keep = run_transfer(small(tiny_bundle, **kw), tmp_path / "keep", progress=False)
    assert keep["method"] == keep["reverse_check"]["kept"] == ssl_name
    assert keep["reverse_check"]["reason"].startswith(f"kept {ssl_name}")
    # ... then below it by more than the margin.
    scores = iter([0.2, 0.8, 0.2, 0.8])
    monkeypatch.setattr(run_module, "reverse_accuracy", lambda *a, **k: next(scores))
    back = run_transfer(small(tiny_bundle, **kw), tmp_path / "back", progress=False)
    warm = load_checkpoint(tmp_path / "back" / "warm_start.pt")["model"]
    model = torch.load(tmp_path / "back" / "model.pt", weights_only=True)["state_dict"]
    rc = back["reverse_check"]
    assert back["method"] == rc["kept"] != ssl_name and "went back" in rc["reason"]
    assert all(torch.equal(model[n], warm[n]) for n in warm)
    (tmp_path / "back" / "report.json").unlink()  # a run stopped after training: resume decides the same
    again = run_transfer(small(tiny_bundle, **kw), tmp_path / "back", resume=True, progress=False)
    assert again["method"] == back["method"] and again["test_accuracy"] == back["test_accuracy"]


def test_auto_goes_back_to_the_warm_start_where_one_class_dominates_the_unlabelled_images(tiny_bundle, tmp_path):
    """auto.uneven_shares: where the warm start predicts its commonest class more than that many times as often as
    an average other class among the unlabelled images, auto keeps the labels-only warm start and says so; under the
    limit it keeps the SSL model. (The commonest class is at least as common as the others' mean, so a limit below
    1 always fires.)"""
    lines: list[str] = []
    back = run_transfer(small(tiny_bundle, unlabeled="rest", auto={"uneven_shares": 0.5, "agreement_min": 0}),
                        tmp_path / "back", progress=False, log=lines.append)
    rec, shares = back["uneven_shares"], back["unlabeled"]["predicted_shares"]
    top = max(shares.values())
    assert rec["commonest_over_others"] == pytest.approx(top * (len(shares) - 1) / (1 - top), rel=1e-4)
    assert back["method"] == rec["kept"] in ("pp", "scratch") != back["auto"]["method"]
    # decided before the SSL phase, on the warm start's predictions: that phase is never trained
    ssl_phase = json.loads((tmp_path / "back" / "plan.json").read_text())["phases"][-1]["name"]
    assert rec["ssl_phase_skipped"] and ssl_phase not in {r["phase"] for r in read_jsonl(tmp_path / "back" /
                                                                                        "metrics.jsonl")}
    assert any(line.startswith(f"auto: went back to {rec['kept']}") for line in lines), lines
    warm = load_checkpoint(tmp_path / "back" / "warm_start.pt")["model"]
    model = torch.load(tmp_path / "back" / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(model[n], warm[n]) for n in warm)
    kept = run_transfer(small(tiny_bundle, unlabeled="rest", auto={"uneven_shares": 1e6, "agreement_min": 0}),
                        tmp_path / "kept", progress=False)
    assert kept["uneven_shares"] is None and kept["method"] == kept["auto"]["method"] == back["auto"]["method"]
    assert ssl_phase in {r["phase"] for r in read_jsonl(tmp_path / "kept" / "metrics.jsonl")}


def test_auto_goes_back_to_the_warm_start_where_propagation_disagrees_with_it(tiny_bundle, tmp_path):
    """auto.agreement_min: where label propagation's first labels agree with the warm start's own predictions on
    less than that share of the unlabelled images, auto keeps the labels-only warm start, untrained SSL phase and
    all, and says so; at the limit's floor (0) it keeps the SSL model and still records the agreement."""
    kept = run_transfer(small(tiny_bundle, unlabeled="rest", auto={"uneven_shares": 0, "agreement_min": 0}),
                        tmp_path / "kept", progress=False)
    agree = kept["unlabeled"]["first_agreement"]
    assert 0 < agree < 1 and kept["low_agreement"] is None and kept["method"] == kept["auto"]["method"]
    ssl_phase = json.loads((tmp_path / "kept" / "plan.json").read_text())["phases"][-1]["name"]
    assert ssl_phase in {r["phase"] for r in read_jsonl(tmp_path / "kept" / "metrics.jsonl")}
    lines: list[str] = []
    limit = (agree + 1) / 2
    back = run_transfer(small(tiny_bundle, unlabeled="rest", auto={"uneven_shares": 0, "agreement_min": limit}),
                        tmp_path / "back", progress=False, log=lines.append)
    rec = back["low_agreement"]
    assert rec["agreement"] == pytest.approx(agree) and rec["limit"] == limit and rec["ssl_phase_skipped"]
    assert back["method"] == rec["kept"] in ("pp", "scratch") != back["auto"]["method"]
    assert ssl_phase not in {r["phase"] for r in read_jsonl(tmp_path / "back" / "metrics.jsonl")}
    assert any(line.startswith(f"auto: went back to {rec['kept']}") and "auto.agreement_min" in line
               for line in lines), lines
    warm = load_checkpoint(tmp_path / "back" / "warm_start.pt")["model"]
    model = torch.load(tmp_path / "back" / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(model[n], warm[n]) for n in warm)
    (tmp_path / "back" / "report.json").unlink()  # a run stopped after training: resume decides the same
    again = run_transfer(small(tiny_bundle, unlabeled="rest", auto={"uneven_shares": 0, "agreement_min": limit}),
                         tmp_path / "back", resume=True, progress=False)
    assert again["low_agreement"] == rec and again["test_accuracy"] == back["test_accuracy"]
    # asked by name, the SSL method is trained and kept, with a warning
    lines.clear()
    named = run_transfer(small(tiny_bundle, method=kept["method"], unlabeled="rest",
                               pssl={"pool_size": 128, "steps": 20, "real_steps": 20, "algorithm": "labelprop"},
                               auto={"uneven_shares": 0, "agreement_min": limit}),
                         tmp_path / "named", progress=False, log=lines.append)
    assert named["low_agreement"] is None and named["method"] == kept["method"]
    assert any(line.startswith("warning: label propagation's first labels agree") for line in lines), lines


def test_gain_spread_tells_a_varying_camera_from_fixed_exposure():
    from edgeppt.train.augment import gain_spread

    g = torch.Generator().manual_seed(0)
    shapes = (torch.rand(40, 3, 16, 16, generator=g) > 0.7).float()  # every image peaks at 1
    assert gain_spread(shapes) < 0.05
    tinted = shapes * torch.empty(40, 3, 1, 1).uniform_(0.25, 1.0, generator=g)
    assert gain_spread(tinted) > 0.2 == AutoConfig().gain_spread


def test_auto_turns_the_gain_jitter_on_where_the_images_gain_varies(tiny_bundle, tmp_path):
    """auto.gain_spread: measured on the labelled (and unlabelled) images before training; above the limit auto
    trains with augment.jitter at jitter_amount, says so and records it; config.json keeps the settings as given, so
    a resume decides the same."""
    lines: list[str] = []
    on = run_transfer(small(tiny_bundle, auto={"gain_spread": 1e-9, "jitter_amount": 0.3}), tmp_path / "on",
                      progress=False, log=lines.append)
    assert on["gain"]["spread"] > 1e-9 and on["gain"]["jitter"] == 0.3 and on["settings"]["augment"]["jitter"] == 0.3
    assert any(line.startswith("auto: gain jitter 0.3 on") for line in lines), lines
    assert json.loads((tmp_path / "on" / "config.json").read_text())["augment"]["jitter"] == 0
    (tmp_path / "on" / "report.json").unlink()
    again = run_transfer(small(tiny_bundle, auto={"gain_spread": 1e-9, "jitter_amount": 0.3}), tmp_path / "on",
                         resume=True, progress=False)
    assert again["gain"] == on["gain"] and again["test_accuracy"] == on["test_accuracy"]
    off = run_transfer(small(tiny_bundle, auto={"gain_spread": 100.0}), tmp_path / "off", progress=False)
    assert off["gain"]["jitter"] == 0 and off["settings"]["augment"]["jitter"] == 0
    assert run_transfer(small(tiny_bundle, auto={"gain_spread": 0}), tmp_path / "never", progress=False)["gain"] is None


def test_the_gain_jitter_keeps_colours_that_tell_the_classes_apart():
    """auto.colour_p: where the jitter goes on for colour images, the labels decide whether it tints. Every class
    in a colour of its own (and each image at its own exposure): one gain for all channels, said in the note. A
    tint of each image's own (a camera's white balance): the labels' colours differ by chance alone, and the
    jitter tints as before."""
    from edgeppt.config import AugmentConfig
    from edgeppt.train.augment import _jitter, colour_cue

    g = torch.Generator().manual_seed(0)
    y = torch.arange(5).repeat_interleave(4)
    shapes = (torch.rand(20, 1, 16, 16, generator=g) > 0.6).float()
    colours = torch.tensor([[1, .3, .1], [.2, .8, .2], [.2, .3, 1], [1, .9, .1], [.8, .2, .9]])
    exposure = torch.empty(20, 1, 1, 1).uniform_(0.4, 1.0, generator=g)
    coloured = shapes * colours[y].view(-1, 3, 1, 1) * exposure
    tinted = shapes * torch.empty(20, 3, 1, 1).uniform_(0.25, 1.0, generator=g)
    assert colour_cue(coloured, y) < 0.01 < colour_cue(tinted, y)
    assert colour_cue(coloured, y * 7 + 3) == colour_cue(coloured, y)  # classes numbered anyhow
    assert colour_cue(shapes.expand(-1, 3, -1, -1), y) == 1.0  # grey in three channels: nothing to tell
    assert colour_cue(coloured, torch.arange(20)) == 1.0  # one image a class: no spread within a class to compare
    rules = AutoConfig()
    kept = augment_rules.fit_augmentation(AugmentConfig(), 0.0, rules, coloured, y, None, pretrain=False, seed=0)
    assert kept.augment.jitter == rules.jitter_amount and not kept.augment.jitter_tint
    assert kept.records["gain"]["tint"] is False and "no tint" in kept.notes[0]
    tint = augment_rules.fit_augmentation(AugmentConfig(), 0.0, rules, tinted, y, None, pretrain=False, seed=0)
    assert tint.augment.jitter == rules.jitter_amount and tint.augment.jitter_tint and "no tint" not in tint.notes[0]
    off = augment_rules.fit_augmentation(AugmentConfig(), 0.0, rules.model_copy(update={"colour_p": 0}), coloured,
                                         y, None, pretrain=False, seed=0)
    assert off.augment.jitter_tint and "colour_cue_p" not in off.records["gain"]
    grey = augment_rules.fit_augmentation(AugmentConfig(), 0.0, rules, shapes * exposure, y, None, pretrain=False,
                                          seed=0)
    assert grey.augment.jitter and "colour_cue_p" not in grey.records["gain"]  # one channel: nothing to tint
    # one gain for all channels, from the same draws (the random stream goes on alike)
    a, b = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    same = _jitter(torch.full((4, 3, 2, 2), 0.5), a, 0.5, tint=False)
    assert torch.allclose(same, same[:, :1].expand_as(same))
    _jitter(torch.full((4, 3, 2, 2), 0.5), b, 0.5)
    assert torch.equal(torch.rand(3, generator=a), torch.rand(3, generator=b))
    assert "jitter_tint" not in AugmentConfig().key() and "jitter_tint" in AugmentConfig(jitter_tint=False).key()
    # PP never jitters, so its settings (and the cache of its weights) do not follow the tint's choice
    bundle = type("B", (), {"manifest": type("M", (), {"info": {}})()})()
    assert augment_rules.pp_augment(kept.augment, 0.0, bundle).key() == augment_rules.pp_augment(
        AugmentConfig(), 0.0, bundle).key()


def test_mirror_share_tells_digits_from_objects_that_face_either_way():
    """About half the images' nearest neighbours are unmirrored where mirroring keeps the distribution (each image
    flipped or not at random), nearly all where mirrored images look like none of them (the digits)."""
    from edgeppt.data import load_dataset, reshape_images

    digits = load_dataset("digits").x[:200]
    test = augment_rules.mirror_test(digits)
    assert test.share >= AutoConfig().mirror_share and test.p < augment_rules.MIRROR_P
    either = torch.where(torch.rand(200, 1, 1, 1, generator=torch.Generator().manual_seed(0)) < 0.5, digits,
                         digits.flip(-1))
    test = augment_rules.mirror_test(either)
    assert abs(test.share - 0.5) < 0.1 and test.p > 0.05
    # Animals that face either way, each shrunk to 17 px and set half a pixel left of centre (its mirror half a
    # pixel right, 1 px apart): placement is not a class that mirroring changes. Uncentred, the share read 0.88.
    animals = load_dataset("animals:elephant,giraffe,horse").x[::10]
    aside = torch.nn.functional.pad(reshape_images(animals, 17, None), (5, 6, 5, 6))
    test = augment_rules.mirror_test(aside)
    assert abs(test.share - 0.5) < 0.1 and test.p > 0.05, test
    assert torch.equal(augment_rules.centred(augment_rules.centred(aside)), augment_rules.centred(aside))


def test_auto_leaves_flips_out_where_the_target_looks_unlike_its_mirror_images(tiny_bundle, tmp_path):
    """auto.mirror_share: flips go where the images are not mirror-symmetric as a set (the digits), with a line and a
    record; where half of them are mirrored at random they stay; 0 turns the rule off."""
    from edgeppt.data import load_dataset

    lines: list[str] = []
    digits = run_transfer(small(tiny_bundle, labels_per_class=8), tmp_path / "digits", progress=False,
                          log=lines.append)
    assert digits["mirror"]["share"] >= digits["mirror"]["limit"] and digits["mirror"]["hflip"] is False
    assert digits["settings"]["augment"]["hflip"] is False
    assert any(line.startswith("auto: flips off") for line in lines), lines
    assert json.loads((tmp_path / "digits" / "config.json").read_text())["augment"]["hflip"] is True
    ds = load_dataset(TARGET)
    flip = torch.rand(len(ds), 1, 1, 1, generator=torch.Generator().manual_seed(0)) < 0.5
    np.savez(tmp_path / "either.npz", x=(torch.where(flip, ds.x.flip(-1), ds.x).numpy() * 255).astype(np.uint8),
             y=ds.y.numpy(), classes=ds.classes)
    either = run_transfer(small(tiny_bundle, target=str(tmp_path / "either.npz"), labels_per_class=8),
                          tmp_path / "either", progress=False)
    assert either["mirror"]["hflip"] is True and either["settings"]["augment"]["hflip"] is True
    never = run_transfer(small(tiny_bundle, auto={"mirror_share": 0}), tmp_path / "never", progress=False)
    assert never["mirror"] is None and never["settings"]["augment"]["hflip"] is True


def _turn(x: torch.Tensor, degrees: float, seed: int) -> torch.Tensor:
    from edgeppt.config import AugmentConfig
    from edgeppt.train.augment import weak

    return weak(x, torch.Generator().manual_seed(seed), AugmentConfig(hflip=False, max_shift=0, max_rotation=degrees))


def _generated_target(bundle, path: Path, degrees: float, seed: int) -> str:
    """A target of G's own samples (40 per source class, labelled by it), each turned by up to `degrees`."""
    y = torch.arange(200) % bundle.num_classes
    x = _turn(bundle.sample_classes(y, generator=torch.Generator().manual_seed(seed)), degrees, seed)
    np.savez(path, x=(x.numpy() * 255).round().astype(np.uint8), y=y.numpy(), classes=bundle.classes)
    return str(path)


def test_pose_score_places_upright_targets_near_minus_one_and_turned_ones_near_plus_one(tiny_bundle):
    from edgeppt.transfer.methods import pp_augment

    bundle = open_source_for(tiny_bundle)
    aug = pp_augment(small(tiny_bundle), bundle)
    g = torch.Generator().manual_seed(7)
    x = bundle.sample_classes(torch.arange(20) % bundle.num_classes, generator=g)  # twenty, as 4 labels of 5 classes
    upright = augment_rules.pose_score(bundle, x, aug, seed=0)
    turned = augment_rules.pose_score(bundle, _turn(x, 180, seed=7), aug, seed=0)
    assert upright < -0.5 and turned >= AutoConfig().pose_score, (upright, turned)


def test_a_dim_camera_is_not_read_as_turned():
    """The shipped bundle and twenty of the example's target images at 40% of their brightness: upright, as they
    are at full brightness. G's turned samples hold less of the object (empty corners), and without each image's
    levels stretched first the dim target read +2.4, far past the limit."""
    from edgeppt.bundle import load_bundle
    from edgeppt.data import few_shot, load_dataset

    bundle = load_bundle(ROOT / "bundles" / "animals-src")
    aug = augment_rules.pp_augment(TransferConfig(target="x").augment, 0.0, bundle)
    x = few_shot(load_dataset(EXAMPLE_TARGET), 4, 0)[0].x
    upright, dim = (augment_rules.pose_score(bundle, v, aug, seed=0) for v in (x, 0.4 * x))
    assert upright < -0.5 and dim < -0.5, (upright, dim)


def test_auto_rotates_pp_where_the_target_lies_turned(tiny_bundle, tmp_path):
    """auto.pose_score: measured before PP; at or above the limit PP trains on samples turned by up to
    rotation_amount degrees (its own cache entry), auto says so and records it; upright targets keep upright PP."""
    bundle = open_source_for(tiny_bundle)
    lines: list[str] = []
    turned = run_transfer(small(tiny_bundle, target=_generated_target(bundle, tmp_path / "turned.npz", 180, 1)),
                          tmp_path / "turned", progress=False, log=lines.append)
    assert turned["pose"]["score"] >= 1 and turned["pose"]["rotation"] == 180
    assert turned["settings"]["pretrain_rotation"] == 180
    assert any(line.startswith("auto: PP rotation 180 on") for line in lines), lines
    notes = json.loads((tmp_path / "turned" / "plan.json").read_text())["notes"]  # what the wizard shows
    assert len(notes) == 1 and notes[0] in lines and notes[0].startswith("auto: PP rotation 180 on")
    assert json.loads((tmp_path / "turned" / "config.json").read_text())["pretrain_rotation"] == 0
    # where auto then trains from scratch, the line says the rotation went unused
    said: list[str] = []
    scratch = run_transfer(small(tiny_bundle, target=str(tmp_path / "turned.npz"), auto={"pp_margin": 1.0}),
                           tmp_path / "scratch", progress=False, log=said.append)
    assert scratch["method"] == "scratch"
    assert [line for line in said if line.startswith("auto: PP rotation 180 on")][0].endswith(
        "(unused: scratch does not pre-train)"), said
    upright = run_transfer(small(tiny_bundle, target=_generated_target(bundle, tmp_path / "upright.npz", 0, 1)),
                           tmp_path / "upright", progress=False)
    assert upright["pose"]["score"] < 0 and upright["pose"]["rotation"] == 0
    assert upright["settings"]["pretrain_rotation"] == 0
    never = run_transfer(small(tiny_bundle, auto={"pose_score": 0}), tmp_path / "never", progress=False)
    assert never["pose"] is None


def test_pp_views_take_the_pretrain_rotation_and_never_the_target_jitter(tiny_bundle):
    """PP's augmentation: pretrain_rotation rotates G's samples (and keys the PP cache only when set), the target's
    gain jitter never reaches them."""
    from edgeppt.bundle import open_source
    from edgeppt.transfer.methods import pp_augment
    from edgeppt.transfer.run import _pp_key

    bundle = open_source(tiny_bundle, small(tiny_bundle))
    plain, rotated = small(tiny_bundle), small(tiny_bundle, pretrain_rotation=90.0)
    jittered = small(tiny_bundle, augment={"jitter": 0.5})
    assert pp_augment(plain, bundle).max_rotation == 0 and pp_augment(rotated, bundle).max_rotation == 90
    assert pp_augment(jittered, bundle).jitter == 0 and jittered.augment.jitter == 0.5
    keys = {name: _pp_key(cfg, bundle, 1, 8) for name, cfg in
            (("plain", plain), ("rotated", rotated), ("jittered", jittered))}
    assert keys["plain"] == keys["jittered"] != keys["rotated"]


def test_pp_trains_at_the_size_the_target_network_works_at(tiny_bundle):
    """With image_size other than the bundle's, PP feeds G's samples at the target's size, as fine-tuning and the
    deployed model see images."""
    from edgeppt.bundle import open_source
    from edgeppt.transfer.objectives import PseudoPretrain

    bundle = open_source(tiny_bundle, small(tiny_bundle))
    side = bundle.image_shape[1] + 6
    seen: list[tuple[int, ...]] = []
    model = create_model("resnet_xs", 5, 1)
    model.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape)))
    for size, want in ((side, side), (None, bundle.image_shape[1])):
        objective = PseudoPretrain(bundle, 8, image_size=size)
        objective.setup(model)
        loss, _ = objective.loss(model, torch.Generator().manual_seed(0), 0, 10, Dist())
        assert torch.isfinite(loss) and seen[-1][-2:] == (want, want)


def test_a_bundle_drawn_smaller_than_the_target_does_not_shrink_it(tiny_bundle, tmp_path):
    """The model works at the target images' own side where they hold finer detail than the bundle's (8 px here),
    for pp as for scratch; PP's samples are raised to it."""
    from edgeppt.data import EXAMPLE_TARGET, load_dataset, reshape_images

    ds = load_dataset(EXAMPLE_TARGET.replace("sheep,zebra", "sheep"))  # four of the animals, shrunk to 12 px
    ds = ds.subset(torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))[:400])
    path = tmp_path / "target12.npz"
    np.savez(path, x=(reshape_images(ds.x, 12, None).numpy() * 255).round().astype(np.uint8), y=ds.y.numpy(),
             classes=ds.classes)
    for method in ("pp", "scratch", "pp+pssl"):  # (P-SSL's pseudo samples are raised to the side too)
        report = run_transfer(small(tiny_bundle, target=str(path), method=method, finetune_steps=5,
                                    pretrain_steps=5), tmp_path / method, progress=False)
        assert report["model"]["image_size"] == 12 and report["data_record"]["image_size"] == 12
    assert load_checkpoint(tmp_path / "pp" / "model.pt")["image_size"] == 12


def test_the_config_names_every_method_the_transfer_stage_runs():
    """The CLI, the config and the wizard read the names from edgeppt.config; the recipes live in transfer."""
    import typing

    from edgeppt.config import METHODS as NAMES
    from edgeppt.transfer.methods import METHODS

    assert set(NAMES) == {"auto", *METHODS}
    assert set(typing.get_args(TransferConfig.model_fields["method"].annotation)) == set(NAMES)


def test_pp_restarts_its_upper_blocks_from_the_initial_weights():
    torch.manual_seed(0)
    model = create_model("resnet_xs", 5, 1)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for v in model.state_dict().values():
            v.add_(1)  # stands for PP's weights and statistics
    assert restart_layers(model, initial, 0.5) == ["blocks.1", "blocks.2"]  # stem, blocks.0 | blocks.1, blocks.2
    state = model.state_dict()
    for k, v in state.items():
        upper = k.startswith(("blocks.1.", "blocks.2."))
        assert torch.equal(v, initial[k]) == upper, k  # the head is the target phase's own
    assert restart_layers(model, initial, 1.0) == []


def test_auto_keeps_only_pp_s_lower_blocks_where_its_gain_is_doubtful():
    cfg = AutoConfig(pp_margin=0.0, keep_margin=0.2, keep_share=0.5)
    def pick(init: float, pp: float) -> coverage.Choice:
        cov = coverage.Coverage(chance=0.2, init_probe=init, pp_probe=pp, pseudo_share=0.0)
        return coverage.choose(cov, cfg, has_source=True, has_unlabeled=False)
    assert pick(0.5, 0.45).method == "scratch"
    doubtful = pick(0.5, 0.6)
    assert (doubtful.method, doubtful.pretrain_keep) == ("pp", 0.5) and "lower 50%" in doubtful.reason
    clear = pick(0.3, 0.9)
    assert (clear.method, clear.pretrain_keep) == ("pp", 1.0)


def test_auto_adds_pseudo_samples_only_where_pseudo_min_is_set():
    cov = coverage.Coverage(chance=0.2, init_probe=0.3, pp_probe=0.9, pseudo_share=1.0)
    default = coverage.choose(cov, AutoConfig(), has_source=True, has_unlabeled=False)
    assert (default.method, default.pseudo_samples) == ("pp", False) and "auto.pseudo_min" in default.reason
    with_real = coverage.choose(cov, AutoConfig(), has_source=True, has_unlabeled=True)
    assert (with_real.method, with_real.pseudo_samples) == ("pp+ssl", False)
    asked = coverage.choose(cov, AutoConfig(pseudo_min=0.9), has_source=True, has_unlabeled=False)
    assert (asked.method, asked.pseudo_samples) == ("pp+pssl", True)
    few = coverage.Coverage(chance=0.2, init_probe=0.3, pp_probe=0.9, pseudo_share=0.5)
    assert coverage.choose(few, AutoConfig(pseudo_min=0.9), has_source=True, has_unlabeled=False).method == "pp"


def test_pp_with_restarted_blocks_and_an_averaged_ssl_phase(tiny_bundle, tmp_path, monkeypatch):
    c = small(tiny_bundle, method="pp", pretrain_keep=0.5)
    kept = run_transfer(c, tmp_path / "kept", progress=False)
    assert kept["pretrain"]["restarted"] == ["blocks.1", "blocks.2"]
    ctrl_c_after_checkpoint(monkeypatch, lambda phase, step: phase == "pp" and step == 10)
    with pytest.raises(KeyboardInterrupt):
        run_transfer(c, tmp_path / "cut", progress=False)
    monkeypatch.undo()
    run_transfer(c, tmp_path / "cut", resume=True, progress=False)  # a resumed run ends on the same weights
    a = load_checkpoint(tmp_path / "kept" / "model.pt")["state_dict"]
    b = load_checkpoint(tmp_path / "cut" / "model.pt")["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    # The SSL phase's weight average changes what it ends on, and nothing before it.
    runs = {}
    for name, average in (("plain", 0.0), ("averaged", 0.5)):
        runs[name] = run_transfer(small(tiny_bundle, method="pp+ssl", unlabeled="rest", max_unlabeled=64,
                                        pssl={"pool_size": 128, "steps": 20, "real_steps": 20, "average": average}),
                                  tmp_path / name, progress=False)
    a = load_checkpoint(tmp_path / "plain" / "model.pt")["state_dict"]
    b = load_checkpoint(tmp_path / "averaged" / "model.pt")["state_dict"]
    assert any(not torch.equal(a[k], b[k]) for k in a)
    losses = {n: [r["loss"] for r in read_jsonl(tmp_path / n / "metrics.jsonl") if r["phase"] == "pp"] for n in runs}
    assert losses["plain"] == losses["averaged"]  # the warm start is the same run


def test_uneven_shares_mean_the_same_at_every_number_of_classes():
    """The way back's measure: the commonest class over an average other class. At two classes a 90/10 split
    reads 9 (the largest share over the equal one could never pass 2 there); equal shares read 1 at any k."""
    assert commonest_over_others(torch.tensor([0.9, 0.1])) == pytest.approx(9.0)
    assert commonest_over_others(torch.tensor([0.6, 0.1, 0.1, 0.1, 0.1])) == pytest.approx(6.0)
    for k in (2, 3, 10):
        assert commonest_over_others(torch.full((k,), 1.0 / k)) == pytest.approx(1.0)
    assert commonest_over_others(torch.tensor([1.0, 0.0])) > AutoConfig().uneven_shares  # one class only


def test_cross_validation_folds_deal_each_class_out_evenly_and_need_enough_labels():
    from edgeppt.data import stratified_folds as folds

    y = torch.arange(20) % 5  # 4 labels per class
    f = folds(y, 2, seed=3)
    assert f is not None and torch.equal(f, folds(y, 2, seed=3)) and not torch.equal(f, folds(y, 2, seed=4))
    for c in range(5):
        assert torch.bincount(f[y == c], minlength=2).tolist() == [2, 2]
    assert folds(y, 5, seed=0) is None and folds(y, 1, seed=0) is None  # a fold would train without a class


def test_auto_uses_pp_only_where_the_probes_and_the_cross_validated_labels_both_favour_it():
    """The probes measure where fine-tuning starts; with cv_folds, PP must also win where fine-tuning ends, on
    held-out labels, and the reason says so."""
    def pick(cv_scratch: float | None, cv_pp: float | None, init: float = 0.4, pp: float = 0.8,
             **kw) -> coverage.Choice:
        cov = coverage.Coverage(chance=0.2, init_probe=init, pp_probe=pp, cv_scratch=cv_scratch, cv_pp=cv_pp)
        return coverage.choose(cov, AutoConfig(cv_folds=2, **kw), has_source=True, has_unlabeled=False)

    assert pick(None, None).method == "pp"  # not measured (too few labels): the probes decide
    against = pick(0.70, 0.60)
    assert against.method == "scratch" and "cross-validated" in against.reason and "0.60" in against.reason
    both = pick(0.60, 0.70)
    assert both.method == "pp" and "cross-validated" in both.reason and both.pretrain_keep == 1.0
    assert pick(0.60, 0.70, init=0.8, pp=0.4).method == "scratch"  # the probes alone already say no
    assert pick(0.60, 0.65, cv_margin=0.1).method == "scratch"
    assert coverage.choose(against.coverage, AutoConfig(cv_folds=2), True, True).method == "ssl"


def test_auto_cross_validation_trains_copies_fold_by_fold_then_the_chosen_method_itself(tiny_bundle, tmp_path,
                                                                                              monkeypatch):
    from edgeppt.transfer import crossval

    seen: list[tuple[str, int]] = []
    score = crossval.score

    def spy(cfg, start, name, labelled, fold, device=None):
        seen.append((name, len(labelled)))
        before = {k: v.clone() for k, v in start.state_dict().items()}
        out = score(cfg, start, name, labelled, fold, device)
        assert all(torch.equal(v, before[k]) for k, v in start.state_dict().items())  # copies train, not the start
        return out

    monkeypatch.setattr(crossval, "score", spy)
    never = run_transfer(small(tiny_bundle, auto={"cv_folds": 2, "pp_margin": 1.0}), tmp_path / "no", progress=False)
    assert never["method"] == "scratch" and seen == []  # the probes cannot favour PP: nothing to check
    c = small(tiny_bundle, auto={"cv_folds": 2, "pp_margin": -1.0, "keep_margin": -1.0})  # the probes favour PP
    report = run_transfer(c, tmp_path / "cv", progress=False)
    cov = report["auto"]["coverage"]
    assert seen == [("scratch", 20), ("pp", 20)] and 0 < cov["cv_scratch"] < 1 and 0 < cov["cv_pp"] < 1
    assert report["method"] == ("pp" if cov["cv_pp"] > cov["cv_scratch"] else "scratch")
    assert "cross-validated" in report["auto"]["reason"]
    # What it then trains is the chosen method itself, from the same weights as without cross-validation.
    fitted = {k: report["settings"][k] for k in ("augment", "pretrain_rotation")}  # auto's augmentation rules
    plain = run_transfer(small(tiny_bundle, method=report["method"], **fitted), tmp_path / "plain", progress=False)
    assert plain["test_accuracy"] == report["test_accuracy"]


def test_label_propagation_reach_marks_images_of_no_labelled_class():
    """Three labelled clusters and a fourth that no label belongs to. Tied to class 0 by a bridge of a few images,
    the fourth is as certain as any cluster (all the mass that arrives is class 0's), yet little arrives: reach tells
    it apart. With no bridge no mass arrives at all: certainty 0, not class 0 at 1.0."""
    from edgeppt.transfer.ssl import propagate

    g = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 16, generator=g) * 4
    truth = torch.arange(400) % 4  # one label for each of classes 0-2 first; class 3 has none
    feats = centres[truth] + torch.randn(400, 16, generator=g) * 0.3
    for bridged in (True, False):
        bridge = centres[0] + torch.linspace(0.1, 0.9, 12)[:, None] * (centres[3] - centres[0])
        prop = propagate(torch.cat([feats, bridge]) if bridged else feats, truth[:3], 3, neighbours=10, alpha=0.99)
        outside, inside = truth[3:] == 3, truth[3:] != 3
        reach, certainty = prop.reach[3:400] / prop.reach[3:400].quantile(0.9), prop.certainty[3:400]
        assert reach[outside].max() < 0.3 <= reach[inside].min()
        if bridged:
            assert certainty[outside].min() > 0.99  # certainty alone cannot tell them apart
            assert (prop.label[3:400][outside] == 0).all()
        else:
            assert (certainty[outside] == 0).all() and (prop.reach[3:400][outside] == 0).all()


def test_within_reach_keeps_a_class_ten_times_as_common_as_the_others():
    """A class's labels spread their mass over all of its images, so each image of a common class gets less: the
    limit is taken per propagated class. A pool-wide percentile would leave the whole commonest class out here."""
    from edgeppt.transfer.ssl import propagate, within_reach

    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 16, generator=g) * 4
    truth = torch.cat([torch.arange(3), torch.zeros(600, dtype=torch.long), torch.full((60,), 1), torch.full((60,), 2)])
    prop = propagate(centres[truth] + torch.randn(len(truth), 16, generator=g) * 0.3, truth[:3], 3, neighbours=10,
                     alpha=0.99)
    reach, label = prop.reach[3:], prop.label[3:]
    assert (reach[truth[3:] == 0] < 0.3 * reach.quantile(0.9)).all()  # what a pool-wide limit would do
    assert within_reach(label, reach, 0.3).all() and within_reach(label, reach, 0.0).all()


def test_widest_gap_is_the_brute_force_one():
    """widest_gap's vectorised suffix quantiles give what torch.quantile gives over each suffix."""
    from edgeppt.transfer.ssl import widest_gap

    g = torch.Generator().manual_seed(0)
    reach = torch.cat([torch.rand(70, generator=g) * 0.1 + 0.6, torch.rand(30, generator=g) * 0.2 + 0.2])
    v = reach.log().sort().values
    best = max((((v[i] - v[i - 1]) / (v[i:].quantile(0.75) - v[i:].quantile(0.25)).clamp_min(0.01)).item(), i)
               for i in range(10, 90))
    score, at = widest_gap(reach)
    assert score == pytest.approx(best[0], rel=1e-4)
    assert v[best[1] - 1].exp() < at < v[best[1]].exp() and 0.4 < at < 0.6
    assert widest_gap(reach[:20]) == (0.0, 0.0)  # too few images for 10 on each side


def test_within_reach_leaves_out_outsiders_below_a_gap_that_the_limit_keeps():
    """pssl.lp_reach_gap, on reach shaped as a hand-made folder showed it: a label's own images reached alike
    (here 0.61-0.63) and outsiders tied to it by a strong bridge reached about half as much (0.26-0.52), above the
    limit (0.3 of 0.63). The gap leaves them out; a class whose reach spreads without a gap (log-normal) and a class
    of near-identical images lose nothing."""
    from edgeppt.transfer.ssl import within_reach

    g = torch.Generator().manual_seed(0)
    own = 0.61 + 0.02 * torch.rand(60, generator=g)
    outsiders = 0.26 + 0.26 * torch.rand(200, generator=g)
    spread = (0.2 * torch.randn(500, generator=g)).exp()
    same = torch.cat([torch.ones(50), torch.full((12,), 0.995)])
    reach = torch.cat([own, outsiders, spread, same])
    label = torch.cat([torch.zeros(260), torch.ones(500), torch.full((62,), 2)]).long()
    outside = torch.arange(len(reach)).ge(60) & torch.arange(len(reach)).lt(260)
    assert within_reach(label, reach, 0.3).all()  # the limit alone keeps every outsider
    kept = within_reach(label, reach, 0.3, 8.0)
    assert not kept[outside].any() and kept[~outside].all()
    assert within_reach(label, reach, 0.0, 8.0).all()  # lp_reach 0 keeps every image, whatever the gap


def _save_png(img: torch.Tensor, path: Path) -> None:
    Image.fromarray((img[0].numpy() * 255).round().astype(np.uint8)).save(path)


def _digit_folders(root: Path, per_class: int) -> Path:
    """Class folders of the first `per_class` 8x8 digits of 0, 1 and 2, as PNG files."""
    from edgeppt.data import load_dataset

    digits = load_dataset("digits:0,1,2", 8, 1)
    for c, name in enumerate(digits.classes):
        (root / name).mkdir(parents=True)
        for i, img in enumerate(digits.x[digits.y == c][:per_class]):
            _save_png(img, root / name / f"{i}.png")
    return root

def test_the_targets_own_test_and_labelled_images_never_join_as_unlabelled(tmp_path):
    """--unlabeled pointed at the very folder the target's classes are in: its test-split and labelled images are
    left out of the unlabelled ones (the test split only reports), the others join; an --unlabeled that holds
    nothing else is a one-line error."""
    from edgeppt.transfer.run import prepare_splits, unlabeled_images

    _digit_folders(tmp_path / "target", 30)
    cfg = TransferConfig(target=str(tmp_path / "target"), unlabeled=str(tmp_path / "target"), method="scratch",
                         labels_per_class=4, test_fraction=0.2)
    labelled, test, rest, _ = prepare_splits(cfg, None)
    got = unlabeled_images(cfg, labelled, test, rest)
    assert got.offered == 90 and got.dropped == {"test": len(test), "labelled": 12}
    assert got.images is not None and len(got.images) == 90 - len(test) - 12 == len(rest)
    pixels = {bytes((t * 255).round().byte().flatten().numpy()) for t in got.images}
    assert pixels == {bytes((t * 255).round().byte().flatten().numpy()) for t in rest.x}
    (tmp_path / "only").mkdir()
    for i, img in enumerate(test.x):
        _save_png(img, tmp_path / "only" / f"{i}.png")
    with pytest.raises(EdgepptError, match="every image is one of the target's own test or labelled images"):
        unlabeled_images(cfg.model_copy(update={"unlabeled": str(tmp_path / "only")}), labelled, test, rest)


def test_a_test_image_saved_in_another_format_never_joins_as_unlabelled(tmp_path):
    """The target's test images saved again as BMP, TIFF and lossless WebP (other bytes, the same pixels) in an
    --unlabeled folder beside other images: exactly those copies are left out. A JPEG copy is not a copy (its
    pixels differ, as a device camera's distinct frames do: benchmarks/copies.py) and joins."""
    from edgeppt.data import load_builtin
    from edgeppt.transfer.run import prepare_splits, unlabeled_images

    animals = load_builtin("animals")
    x = animals.x[:, None] if animals.x.ndim == 3 else animals.x
    picked: list[int] = []  # images with other pixels than one another
    for i in range(len(x)):
        if all(not torch.equal(x[i], x[j]) for j in picked):
            picked.append(i)
        if len(picked) == 60:
            break
    (tmp_path / "target" / "a").mkdir(parents=True)
    (tmp_path / "target" / "b").mkdir()
    for n, i in enumerate(picked[:40]):
        _save_png(x[i], tmp_path / "target" / "ab"[n % 2] / f"{n}.png")
    cfg = TransferConfig(target=str(tmp_path / "target"), unlabeled=str(tmp_path / "unl"), method="scratch",
                         labels_per_class=4, test_fraction=0.25)
    labelled, test, rest, _ = prepare_splits(cfg, None)
    (tmp_path / "unl").mkdir()
    for n, img in enumerate(test.x):
        a = Image.fromarray((img[0].numpy() * 255).round().astype(np.uint8))
        a.save(tmp_path / "unl" / f"t{n}.{('bmp', 'tif', 'webp')[n % 3]}", lossless=True)
        a.save(tmp_path / "unl" / f"j{n}.jpg", quality=90)
    for n, i in enumerate(picked[40:]):
        _save_png(x[i], tmp_path / "unl" / f"o{n}.png")
    got = unlabeled_images(cfg, labelled, test, rest)
    assert got.offered == 2 * len(test) + 20 and got.dropped == {"test": len(test)}
    assert got.images is not None and len(got.images) == len(test) + 20


def test_test_images_that_copy_a_trained_image_are_counted_and_reported_apart(tmp_path):
    """A target folder that holds every picture twice: the held-out split puts some twins of the labelled images
    in the test split. report.json counts them and gives the test accuracy without them, recomputed here from
    the saved model; a folder without twins reports none."""
    from edgeppt.export.onnx_export import load_run, run_data
    from edgeppt.train.evaluate import evaluate
    from edgeppt.transfer.run import run_transfer

    _digit_folders(tmp_path / "target", 15)
    for f in list((tmp_path / "target").rglob("*.png")):
        (f.parent / f"twin-{f.name}").write_bytes(f.read_bytes())
    cfg = TransferConfig(target=str(tmp_path / "target"), method="scratch", labels_per_class=4, test_fraction=0.5,
                         finetune_steps=20, arch="resnet_xs")
    lines: list[str] = []
    data = run_transfer(cfg, tmp_path / "run", progress=False, log=lines.append)["data"]
    run = load_run(tmp_path / "run")
    labelled, test = run_data(run)
    twin = (test.x[:, None] - labelled.x[None]).abs().flatten(2).amax(2).min(1).values == 0
    assert data["test_copies_of_training"] == int(twin.sum()) > 0
    kept = test.subset((~twin).nonzero().flatten().tolist())
    assert data["test_accuracy_without_copies"] == pytest.approx(evaluate(run.model, kept)["accuracy"])
    n = int(twin.sum())
    said = f"note: {n} of the {len(test)} test images {'copies' if n == 1 else 'copy'} an image the model trained on"
    assert any(line.startswith(said) for line in lines)
    unused = [line for line in lines if "not used" in line]  # the pool's images beyond the labels are named
    assert data["unused"] == 90 - len(test) - len(labelled) > 0  # (3 classes of 15 images and their 15 twins)
    assert len(unused) == 1 and f"other {data['unused']:,} training images" in unused[0], lines
    _digit_folders(tmp_path / "plain", 15)
    data = run_transfer(cfg.model_copy(update={"target": str(tmp_path / "plain")}), tmp_path / "run2",
                        progress=False)["data"]
    assert data["test_copies_of_training"] == 0 and data["test_accuracy_without_copies"] is None


def test_a_separate_test_set_is_never_trained_on_even_where_the_target_holds_it_too(tmp_path):
    """--test given as images the --target folder also holds: those are left out of the target's pool (never
    labelled, never in the pool a later stage calibrates on), and --test equal to --target is a one-line error."""
    from edgeppt.config import SearchConfig
    from edgeppt.data import exact_copies
    from edgeppt.search.proxy import prepare
    from edgeppt.transfer.run import prepare_splits

    _digit_folders(tmp_path / "target", 30)
    _digit_folders(tmp_path / "test", 10)  # the first 10 of each of the target's classes
    cfg = TransferConfig(target=str(tmp_path / "target"), test=str(tmp_path / "test"), method="scratch",
                         labels_per_class=4)
    labelled, test, rest, record = prepare_splits(cfg, None)
    assert len(test) == 30 and len(labelled) + len(rest) == 60
    assert not exact_copies(labelled.x, test.x).any() and not exact_copies(rest.x, test.x).any()
    assert len(record.test_copies) == 30 and not exact_copies(record.pool().x, test.x).any()
    assert len(record.pool()) == 60 and record.splits()[0].positions() == labelled.positions()
    searched = prepare(  # the search draws the labels exactly as transfer does
        SearchConfig(target=cfg.target, test=cfg.test, labels_per_class=4, val_per_class=0))
    assert searched.labelled.positions() == labelled.positions()
    with pytest.raises(EdgepptError, match="every target image is also a test image"):
        prepare_splits(cfg.model_copy(update={"test": str(tmp_path / "target")}), None)
