"""Screens of ideas for transfer, measured without the long SSL phase, before any of them is built into a default.

    python benchmarks/screens.py --cache DIR graph        # six pairings, seeds 0-2, ~1 minute with PP cached
    python benchmarks/screens.py --cache DIR outsiders    # example and other classes, seeds 0-2, ~1 minute
    python benchmarks/screens.py --cache DIR ensemble     # six pairings, seeds 0-2, ~8 minutes (trains scratch)
    python benchmarks/screens.py --cache DIR distill      # the four tuned pairings, seeds 0-2, ~20 minutes
    python benchmarks/screens.py --cache DIR soup         # the four tuned pairings, seeds 0-2, ~25 minutes
    python benchmarks/screens.py --cache DIR cv           # six pairings, seeds 0-2, ~4 minutes each with PP cached
    python benchmarks/screens.py --cache DIR reach        # six pairings, seeds 0-2, ~6 minutes (PP partly cached)
    python benchmarks/screens.py --cache DIR views        # six pairings, seeds 0-2, ~8 minutes (PP partly cached)
    python benchmarks/screens.py --cache DIR realsource   # example and other classes, seeds 0-2, ~8 minutes

- `graph`: label propagation's first labels (the warm start's features, as the SSL phase starts from them) scored
  against the unlabelled pool's true labels, with the warm start's batch-norm statistics (what the default uses) and
  with statistics re-estimated over the labels and the whole pool (AdaBN, Li et al., 2016): 20 labelled images set
  the warm start's statistics, 3,580 images could set them better.
- `outsiders`: the pool less its labels, alone and with as many images of the dataset's other classes: how well
  label-free scores (propagation certainty, nearest label's cosine, maximum softmax) tell the outsiders apart
  (AUROC), and whether the certainty's distribution shows them as a mode of their own (a two-component Gaussian
  mixture against one: BIC gain per image and Ashman's D), which a filter could be gated on; and how often the
  first propagation's labels agree with the warm start's predictions on each pool (what auto.agreement_min reads).
- `reach`: how much propagated label mass reaches each image of the pool (`Propagation.reach`), over the 90th
  percentile of the images propagated the same label, on the clean pool, on one whose first class is in full and the
  others at a tenth, and with images of no target class beside it (the dataset's other classes; another dataset's
  images): what share of each a limit leaves out (`pssl.lp_reach`), and AUROCs beside certainty's; and an adaptive
  cut, screened and not built: below the widest gap in each label's log reach, where the gap is wide against the
  spread above it.
- `views`: the first propagation's labels scored as in `graph`, over each image's features as they are and averaged
  over 4 or 8 weak views of it (the views the warm start was trained invariant to).
- `realsource`: pp with PP on G's samples against PP on the real images G was trained on (the bundle's classes from
  animal-mnist; no user has them), and scratch: how much a better generator could lift PP at most.
- `ensemble`: scratch, pp, and the average of their softmax outputs (what a distilled ensemble could at best reach),
  validation and test accuracy: a hedge between the two choices auto makes from the labels alone.
- `distill`: one network distilled from that ensemble, as a device could run it: starting from pp's (or scratch's)
  fine-tuned weights, 400 steps toward the ensemble's outputs on strong views of the labelled images, half of them
  mixed in pairs, beside the labels' cross-entropy: the labels are the only target images there are.
- `soup`: pp's labels-only phase run 4 times from the same PP weights with other trainer seeds, and the average of
  their weights (a uniform model soup, Wortsman et al., 2022): one network, so no latency cost, where an ensemble
  pays one inference per member.
- `cv`: auto's choice between scratch and pp made by 2-fold cross-validation over the k labels (each method
  fine-tuned on half of each class's labels and scored on the other half, both ways), beside the probe that auto
  uses: how often each picks the method that validates better with all k labels, and what the picks are worth.

Validation accuracy (or the pool's labels, which a run never sees) judges; test only reports. The result:
docs/transfer-selection.md ("Screened and not built").
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.mixture import GaussianMixture

from edgeppt.bundle import open_source
from edgeppt.config import PSSLConfig
from edgeppt.data import load_dataset, reshape_images, stratified_folds
from edgeppt.models import ClassifierNet, create_model
from edgeppt.train import augment, probe
from edgeppt.train.loop import Dist, Phase, Trainer
from edgeppt.transfer import crossval, run_transfer
from edgeppt.transfer.methods import supervised
from edgeppt.transfer.run import prepare_splits, pseudo_pretrain
from edgeppt.transfer.ssl import propagate, widest_gap, within_reach

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.imbalanced import another_dataset, outsiders, pool_index  # noqa: E402
from benchmarks.transfer import config, write_pairing  # noqa: E402

SIX = ["example", "other classes", "style shift", "other dataset", "rotated", "noisy camera"]


def trained(pairing: str, row: str, seed: int, files: dict[str, Path], cache: Path, work: Path) -> ClassifierNet:
    out = work / f"{pairing.replace(' ', '-')}-{seed}-{row}"
    run_transfer(config(pairing, row, seed, {}, files, 4), out, progress=False, pp_cache=cache)
    state = torch.load(out / "model.pt", weights_only=True)  # our own run's file
    model = create_model(state["arch"], len(state["classes"]), state["in_chans"])
    model.load_state_dict(state["state_dict"])
    return model.eval()


def features(model: ClassifierNet, x: torch.Tensor) -> torch.Tensor:
    return probe.features(model, x, normalize=False)


@torch.no_grad()
def adabn(model: ClassifierNet, x: torch.Tensor) -> ClassifierNet:
    """A copy whose batch-norm statistics are re-estimated over x (a cumulative average over batches of 256)."""
    model = copy.deepcopy(model)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    for i in range(0, len(x), 256):
        model.forward_features(x[i:i + 256])
    return model.eval()


def graph(pairing: str, seed: int, files: dict[str, Path], cache: Path, work: Path) -> dict:
    cfg = config(pairing, "pp", seed, {}, files, 4)
    model = trained(pairing, "pp", seed, files, cache, work)
    labelled, _, rest, _ = prepare_splits(cfg, None)
    x, k, out = torch.cat([labelled.x, rest.x]), len(labelled.classes), {"pairing": pairing, "seed": seed}
    for name, m in (("warm_start", model), ("adabn", adabn(model, x))):
        f = features(m, x)
        label = propagate(f, labelled.y, k, cfg.pssl.lp_neighbours, cfg.pssl.lp_alpha).label
        out[f"{name}_propagated"] = (label[len(labelled):] == rest.y).float().mean().item()
        out[f"{name}_head"] = (m.head(f[len(labelled):]).argmax(1) == rest.y).float().mean().item()
    return out


def real_source(pairing: str, seed: int, files: dict[str, Path], cache: Path, work: Path) -> dict:
    """pp with PP on G's samples (the method), on the real images G was trained on (what no user has: the bundle's
    classes from animal-mnist, drawn at random in place of G's samples), and scratch, each then fine-tuned as pp's
    labels-only phase is: whether a better generator could lift PP, measured by the best one there is."""
    cfg = config(pairing, "pp", seed, {}, files, 4)
    assert cfg.source is not None
    val = load_dataset(str(files["val"]))
    out: dict = {"pairing": pairing, "seed": seed}
    for kind in ("generated", "real", "scratch"):
        bundle = open_source(cfg.source, cfg)
        if kind == "real":
            src = load_dataset("animals:" + ",".join(bundle.classes), bundle.image_shape[1], bundle.image_shape[0])
            g = torch.Generator().manual_seed(seed + 99)

            def draw(p: torch.Tensor, z=None, generator=None, src=src, g=g) -> torch.Tensor:
                y, x = p.argmax(1), torch.empty(len(p), *src.x.shape[1:])
                for c in y.unique():
                    pool = (src.y == c).nonzero().squeeze(1)
                    x[y == c] = src.x[pool[torch.randint(0, len(pool), (int((y == c).sum()),), generator=g)]]
                return x

            bundle.generate = draw  # type: ignore[method-assign]
        labelled = prepare_splits(cfg, bundle)[0]
        torch.manual_seed(cfg.seed)
        model = create_model(cfg.arch, len(labelled.classes), labelled.shape[0])
        if kind != "scratch":  # real images' PP weights are not cached: their key would be G's
            pseudo_pretrain(cfg, model, bundle, work / f"pp-{kind}-{pairing}-{seed}", Dist(), False,
                            cache if kind == "generated" else None, False, *labelled.shape[:2])
        Trainer(model, [Phase("pp", cfg.finetune_steps, supervised(cfg, labelled), cfg.lr, cfg.weight_decay)], None,
                cfg.seed, progress=False, channels_last=True).run()
        with torch.no_grad():
            out[kind] = 100 * (model.eval()(val.x).argmax(1) == val.y).float().mean().item()
    return out


VIEWS = (4, 8)  # feature averages over the image and this many weak views less one


def view_features(model: ClassifierNet, x: torch.Tensor, views: int, cfg, seed: int) -> torch.Tensor:
    """The mean of the features of `x` and of views - 1 weak views of it (flips where the run allows them)."""
    g = torch.Generator().manual_seed(seed)
    return torch.stack([features(model, x)] + [features(model, augment.weak(x, g, cfg.augment))
                                               for _ in range(views - 1)]).mean(0)


def views(pairing: str, seed: int, files: dict[str, Path], cache: Path, work: Path) -> dict:
    """Label propagation's first labels (the warm start's features) scored against the pool's true labels, with
    each image's features as they are and averaged over weak views of it (the views the warm start was trained
    invariant to): a graph less moved by what the views change, such as noise and small shifts."""
    cfg = config(pairing, "pp", seed, {}, files, 4)
    model = trained(pairing, "pp", seed, files, cache, work)
    labelled, _, rest, _ = prepare_splits(cfg, None)
    x, k, out = torch.cat([labelled.x, rest.x]), len(labelled.classes), {"pairing": pairing, "seed": seed}
    for name, f in [("plain", features(model, x))] + [(f"views_{v}", view_features(model, x, v, cfg, seed))
                                                       for v in VIEWS]:
        label = propagate(f, labelled.y, k, cfg.pssl.lp_neighbours, cfg.pssl.lp_alpha).label
        out[name] = (label[len(labelled):] == rest.y).float().mean().item()
    return out


def auroc(inside: torch.Tensor, outside: torch.Tensor) -> float:
    """P(an image of the target scores above an outsider)."""
    r = torch.cat([inside, outside]).argsort().argsort().double() + 1
    n, m = len(inside), len(outside)
    return ((r[:n].sum() - n * (n + 1) / 2) / (n * m)).item()


def modes(v: np.ndarray) -> dict:
    one, two = (GaussianMixture(c, random_state=0).fit(v[:, None]) for c in (1, 2))
    mu, sd = two.means_.ravel(), np.sqrt(two.covariances_.ravel())
    return {"bic_gain_per_image": float((one.bic(v[:, None]) - two.bic(v[:, None])) / len(v)),
            "ashman_d": float(abs(mu[0] - mu[1]) / np.sqrt((sd[0] ** 2 + sd[1] ** 2) / 2))}


def outsider_scores(pairing: str, seed: int, files: dict[str, Path], cache: Path, work: Path) -> dict:
    cfg = config(pairing, "pp", seed, {}, files, 4)
    model = trained(pairing, "pp", seed, files, cache, work)
    labelled, _, rest, _ = prepare_splits(cfg, None)
    k, n, out = len(labelled.classes), len(rest), {"pairing": pairing, "seed": seed}
    fl = features(model, labelled.x)
    for pool, x in (("clean", rest.x), ("mixed", torch.cat([rest.x, outsiders(pairing, n)]))):
        f = features(model, x)
        label, certainty, _ = propagate(torch.cat([fl, f]), labelled.y, k, cfg.pssl.lp_neighbours, cfg.pssl.lp_alpha)
        label, certainty = label[len(labelled):], certainty[len(labelled):]
        with torch.no_grad():  # what auto.agreement_min reads
            agree = (model.head(f).argmax(1) == label).float().mean().item()
        out[pool] = modes(certainty.numpy()) | {"first_agreement": agree}
        if pool == "mixed":
            near = (F.normalize(f, dim=1) @ F.normalize(fl, dim=1).T).max(1).values
            with torch.no_grad():
                top = F.softmax(model.head(f), 1).max(1).values
            out["auroc"] = {name: auroc(s[:n], s[n:]) for name, s in
                            (("certainty", certainty), ("nearest_label_cosine", near), ("max_softmax", top))}
    return out


REACH_LIMITS = (0.2, 0.3, 0.4, 0.5)  # reach over the 90th percentile of the images propagated the same label
GAP_SCORES = (1.0, 2.0, 4.0, 8.0)  # beside the limit: a label's widest gap in log reach over the spread above it


def reach(pairing: str, seed: int, files: dict[str, Path], cache: Path, work: Path) -> dict:
    """How much propagated label mass reaches each pool image (`Propagation.reach`), on the clean pool, on a pool
    whose first class is in full and the others at a tenth (a device's commonest class), and, where the target is a
    class subset, with as many images of the dataset's other classes, and with scikit-learn's digits (another
    dataset; for the digits target, the animals' other classes): the share of each kind that each limit leaves out
    (`within_reach`), the pool-wide percentile's share beside it, and how well reach and certainty tell outsiders
    apart (AUROC)."""
    cfg = config(pairing, "pp", seed, {}, files, 4)
    model = trained(pairing, "pp", seed, files, cache, work)
    labelled, _, rest, _ = prepare_splits(cfg, None)
    k, n, out = len(labelled.classes), len(rest), {"pairing": pairing, "seed": seed}
    skew = torch.from_numpy(pool_index(rest.y.numpy(), 0.1, "skewed"))
    pools = {"clean": (rest.x, rest.y), "one class in full": (rest.x[skew], rest.y[skew])}
    try:
        pools["other classes"] = (torch.cat([rest.x, outsiders(pairing, n)]), rest.y)
    except SystemExit:  # a transformed target: its dataset's other classes would not look like its images
        pass
    far = another_dataset(pairing, n)
    pools["another dataset"] = (torch.cat([rest.x, reshape_images(far, labelled.shape[1], labelled.shape[0])]),
                                rest.y)
    fl = features(model, labelled.x)
    for pool, (x, y) in pools.items():
        prop = propagate(torch.cat([fl, features(model, x)]), labelled.y, k, cfg.pssl.lp_neighbours,
                         cfg.pssl.lp_alpha)
        label, cert, r = (v[len(labelled):] for v in prop)
        m = len(y)  # the pool's target images come first
        q: dict = {"target_quantiles": (r[:m] / r.quantile(0.9)).quantile(torch.tensor([0.001, 0.01, 0.05, 0.5]))
                   .tolist()}
        for t in REACH_LIMITS:
            kept, pooled = within_reach(label, r, t), r >= t * r.quantile(0.9)
            q[f"below_{t}"] = [(~kept[:m]).float().mean().item(), (~kept[m:]).float().mean().item() if len(x) > m
                               else None]
            q[f"below_{t}_pool_wide"] = [(~pooled[:m]).float().mean().item(),
                                         (~pooled[m:]).float().mean().item() if len(x) > m else None]
            q[f"below_{t}_per_class"] = [(~kept[:m][y == c]).float().mean().item() for c in range(k)]
        if len(x) > m:
            q["auroc"] = {"reach": auroc(r[:m], r[m:]), "certainty": auroc(cert[:m], cert[m:])}
        q["gap_max"] = max((widest_gap(r[label == c])[0] for c in label.unique()), default=0.0)
        for t in GAP_SCORES:  # the default limit, and each label's images below its widest gap where it scores t
            kept = within_reach(label, r, PSSLConfig().lp_reach, t)
            q[f"gap_{t}"] = [(~kept[:m]).float().mean().item(), (~kept[m:]).float().mean().item() if len(x) > m
                             else None]
        out[pool] = q
    return out


def accuracies(nets: dict[str, ClassifierNet], files: dict[str, Path]) -> dict[str, float]:
    """Validation and test accuracy % of each network and of the scratch + pp ensemble (their mean softmax)."""
    out: dict[str, float] = {}
    for split in ("val", "test"):
        data = load_dataset(str(files[split]))
        with torch.no_grad():
            p = {row: torch.cat([F.softmax(m(data.x[i:i + 512]), 1) for i in range(0, len(data), 512)])
                 for row, m in nets.items()}
        p["ensemble"] = (p["scratch"] + p["pp"]) / 2
        out |= {f"{split}_{row}": 100 * (q.argmax(1) == data.y).float().mean().item() for row, q in p.items()}
    return out


def ensemble(pairing: str, seed: int, files: dict[str, Path], cache: Path, work: Path) -> dict:
    models = {row: trained(pairing, row, seed, files, cache, work) for row in ("scratch", "pp")}
    return {"pairing": pairing, "seed": seed} | accuracies(models, files)


def distill_from(student: ClassifierNet, teachers: list[ClassifierNet], cfg, labelled, steps: int = 400,
                 lr: float = 0.01) -> ClassifierNet:
    """student, trained toward the teachers' mean softmax on strong views of the labels (half of each batch mixed in
    pairs) and on the labels' cross-entropy (weak views, smoothed as the target phase smooths them)."""
    g = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.SGD(student.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay)
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        idx = torch.randint(0, len(labelled), (64,), generator=g)
        x = augment.strong(labelled.x[idx], g, cfg.augment)
        lam, perm = torch.rand(64, 1, 1, 1, generator=g), torch.randperm(64, generator=g)
        x = torch.where((torch.arange(64) < 32)[:, None, None, None], lam * x + (1 - lam) * x[perm], x)
        with torch.no_grad():
            target = cast(torch.Tensor, sum(F.softmax(t(x), 1) for t in teachers)) / len(teachers)
        weak = augment.weak(labelled.x[idx[:32]], g, cfg.augment)
        student.train()
        out = student(torch.cat([x, weak]))
        loss = (F.kl_div(F.log_softmax(out[:64], 1), target, reduction="batchmean")
                + F.cross_entropy(out[64:], labelled.y[idx[:32]], label_smoothing=cfg.label_smoothing))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return student.eval()


def distill(pairing: str, seed: int, files: dict[str, Path], cache: Path, work: Path) -> dict:
    models = {row: trained(pairing, row, seed, files, cache, work) for row in ("scratch", "pp")}
    cfg = config(pairing, "pp", seed, {}, files, 4)
    labelled = prepare_splits(cfg, None)[0]
    nets = models | {f"distilled from {init}": distill_from(copy.deepcopy(models[init]), list(models.values()), cfg,
                                                            labelled) for init in ("pp", "scratch")}
    return {"pairing": pairing, "seed": seed} | accuracies(nets, files)


SOUP = 4  # members of a soup


def soup(pairing: str, seed: int, files: dict[str, Path], cache: Path, work: Path) -> dict:
    """pp's labels-only phase run SOUP times from the same PP weights (the trainer's seed varies batch order, views
    and the new head), each member alone, their weights averaged (a uniform soup: one network), and their mean
    softmax (an ensemble of SOUP networks, for scale)."""
    cfg = config(pairing, "pp", seed, {}, files, 4)
    assert cfg.source is not None
    bundle = open_source(cfg.source, cfg)
    labelled = prepare_splits(cfg, bundle)[0]
    members = []
    for m in range(SOUP):
        torch.manual_seed(cfg.seed)
        model = create_model(cfg.arch, len(labelled.classes), labelled.shape[0])
        pseudo_pretrain(cfg, model, bundle, work / "soup-pp", Dist(), False, cache, False, *labelled.shape[:2])
        Trainer(model, [Phase("pp", cfg.finetune_steps, supervised(cfg, labelled), cfg.lr, cfg.weight_decay)], None,
                cfg.seed + 7919 * m, progress=False, channels_last=True).run()
        members.append(model.eval())
    avg = copy.deepcopy(members[0])
    avg.load_state_dict({k: (sum(m.state_dict()[k].double() for m in members) / SOUP).to(v.dtype)
                         for k, v in avg.state_dict().items()})
    out: dict = {"pairing": pairing, "seed": seed}
    for split in ("val", "test"):
        data = load_dataset(str(files[split]))
        with torch.no_grad():
            p = [torch.cat([F.softmax(m(data.x[i:i + 512]), 1) for i in range(0, len(data), 512)])
                 for m in [*members, avg]]
        acc = [100 * (q.argmax(1) == data.y).float().mean().item() for q in p]
        out |= {f"{split}_members": acc[:-1], f"{split}_soup": acc[-1],
                f"{split}_ensemble": 100 * (torch.stack(p[:-1]).mean(0).argmax(1) == data.y).float().mean().item()}
    return out


FOLDS = 2


def cv(pairing: str, seed: int, files: dict[str, Path], cache: Path, work: Path) -> dict:
    """scratch and pp with all k labels (validation and test), auto's labels-only choice, and each method's
    FOLDS-fold cross-validation over the k labels: fine-tuned as the method's target phase is (same steps and
    settings) on the other folds, scored on the fold's own labels (accuracy, and the mean probability of the true
    class, a finer score where 10-20 images decide)."""
    out: dict = {"pairing": pairing, "seed": seed}
    for row in ("scratch", "pp", "auto"):
        run = work / f"{pairing.replace(' ', '-')}-{seed}-cv-{row}"
        report = run_transfer(config(pairing, row, seed, {}, files, 4), run, progress=False, pp_cache=cache)
        state = torch.load(run / "model.pt", weights_only=True)  # our own run's file
        model = create_model(state["arch"], len(state["classes"]), state["in_chans"])
        model.load_state_dict(state["state_dict"])
        val = load_dataset(str(files["val"]), state["image_size"], state["in_chans"])
        with torch.no_grad():
            out[f"val_{row}"] = 100 * (model.eval()(val.x).argmax(1) == val.y).float().mean().item()
        out[f"test_{row}"] = report["test_accuracy"]
        if row == "auto":
            out["auto_chose"] = report["method"]
            out["auto_probe"] = {k: (report.get("auto") or {}).get("coverage", {}).get(k)
                                 for k in ("init_probe", "pp_probe")}
    cfg = config(pairing, "pp", seed, {}, files, 4)
    assert cfg.source is not None
    bundle = open_source(cfg.source, cfg)
    labelled = prepare_splits(cfg, bundle)[0]
    fold = stratified_folds(labelled.y, FOLDS, seed)
    assert fold is not None
    for row in ("scratch", "pp"):
        torch.manual_seed(cfg.seed)
        start = create_model(cfg.arch, len(labelled.classes), labelled.shape[0])
        if row == "pp":
            pseudo_pretrain(cfg, start, bundle, work / "cv-pp", Dist(), False, cache, False, *labelled.shape[:2])
        score = crossval.score(cfg, start, row, labelled, fold)
        out[f"cv_{row}"], out[f"cv_prob_{row}"] = 100 * score["accuracy"], score["prob"]
    return out


SCREENS = {"graph": (graph, SIX), "outsiders": (outsider_scores, ["example", "other classes"]),
           "ensemble": (ensemble, SIX), "distill": (distill, SIX[:4]), "soup": (soup, SIX[:4]), "cv": (cv, SIX),
           "reach": (reach, SIX), "views": (views, SIX),
           "realsource": (real_source, SIX[:2])}


def _cv_pick(r: dict, margin: float = 0.0) -> str:
    return "pp" if r["cv_prob_pp"] - r["cv_prob_scratch"] > margin else "scratch"


def _probe_pick(r: dict) -> str:
    return "pp" if r["auto_chose"].startswith("pp") else "scratch"


CV_RULES: dict[str, Callable[[dict], str]] = {
    "probes (auto's default)": _probe_pick,
    "cross-validated accuracy (ties: the probes)": lambda r: {1: "pp", -1: "scratch"}.get(
        int(np.sign(r["cv_pp"] - r["cv_scratch"])), _probe_pick(r)),
    **{f"cross-validated probability, margin {m:+.2f}": partial(_cv_pick, margin=m) for m in (-0.02, 0.0, 0.02)},
    "pp where both favour it (auto.cv_folds 2)": lambda r: "pp" if _probe_pick(r) == _cv_pick(r) == "pp"
    else "scratch",
    "pp where either favours it": lambda r: "pp" if "pp" in (_probe_pick(r), _cv_pick(r)) else "scratch",
    "always pp": lambda r: "pp",
    "the better with all k labels (validation; no rule can know it)": lambda r: "pp" if r["val_pp"] >= r["val_scratch"]
    else "scratch"}


def cv_summary(rows: list[dict]) -> None:
    """Each rule's pick between scratch and pp, scored by that method's accuracy with all k labels: the mean, and
    the paired difference against the probes' pick (what auto does by default), on the tuned and the held-out
    pairings."""
    for part, names in (("tuned", SIX[:4]), ("held out", SIX[4:])):
        sub = [r for r in rows if r["pairing"] in names]
        if not sub:
            continue
        print(f"{part} pairings, {len(sub)} runs: validation % of the pick, paired against the probes' pick "
              "(test, reported)")
        for name, rule in CV_RULES.items():
            val = [r[f"val_{rule(r)}"] for r in sub]
            d = [v - r[f"val_{_probe_pick(r)}"] for v, r in zip(val, sub)]
            t = [100 * (r[f"test_{rule(r)}"] - r[f"test_{_probe_pick(r)}"]) for r in sub]
            print(f"  {name:62s} {np.mean(val):6.2f}  {np.mean(d):+.2f} ± {np.std(d):.2f} "
                  f"({sum(x > 0 for x in d)} up, {sum(x < 0 for x in d)} down)  (test {np.mean(t):+.2f})")


def report(screen: str, rows: list[dict], summary: bool = True) -> None:
    for r in rows:
        if screen == "graph":
            print(f"{r['pairing']:14s} {r['seed']}  propagated labels right: warm start "
                  f"{r['warm_start_propagated']:.3f}, AdaBN {r['adabn_propagated']:.3f}  "
                  f"(head {r['warm_start_head']:.3f} / {r['adabn_head']:.3f})")
        elif screen == "outsiders":
            a, c, m = r["auroc"], r["clean"], r["mixed"]
            print(f"{r['pairing']:14s} {r['seed']}  AUROC certainty {a['certainty']:.2f} cosine "
                  f"{a['nearest_label_cosine']:.2f} softmax {a['max_softmax']:.2f} | two modes, clean pool: BIC gain "
                  f"{c['bic_gain_per_image']:.2f} D {c['ashman_d']:.2f}; with outsiders: "
                  f"{m['bic_gain_per_image']:.2f} D {m['ashman_d']:.2f}")
        elif screen == "realsource":
            print(f"{r['pairing']:14s} {r['seed']}  validation: PP on G's samples {r['generated']:.1f}, on the real "
                  f"source images {r['real']:.1f}, scratch {r['scratch']:.1f}")
        elif screen == "views":
            print(f"{r['pairing']:14s} {r['seed']}  propagated labels right: plain {r['plain']:.3f} "
                  + " ".join(f"{v} views {r[f'views_{v}']:.3f}" for v in VIEWS))
        elif screen == "soup":
            print(f"{r['pairing']:14s} {r['seed']}  validation members {' '.join(f'{a:.1f}' for a in r['val_members'])}"
                  f"  soup {r['val_soup']:.1f}  ensemble {r['val_ensemble']:.1f}")
        elif screen == "cv":
            print(f"{r['pairing']:14s} {r['seed']}  validation scratch {r['val_scratch']:.1f} pp {r['val_pp']:.1f} "
                  f"(auto chose {r['auto_chose']}) | cross-validated scratch {r['cv_scratch']:.1f} "
                  f"({r['cv_prob_scratch']:.3f}) pp {r['cv_pp']:.1f} ({r['cv_prob_pp']:.3f})")
        elif screen == "distill":
            print(f"{r['pairing']:14s} {r['seed']}  validation scratch {r['val_scratch']:.1f} pp {r['val_pp']:.1f} "
                  f"ensemble {r['val_ensemble']:.1f} distilled from pp {r['val_distilled from pp']:.1f}, from scratch "
                  f"{r['val_distilled from scratch']:.1f}")
        elif screen == "reach":
            for pool, q in r.items():
                if isinstance(q, dict):
                    print(f"{r['pairing']:14s} {r['seed']} {pool:15s} target q.001/.01/.05/.5 "
                          + " ".join(f"{v:.2f}" for v in q["target_quantiles"]) + " | below "
                          + " ".join(f"{t}: {a:.3f}/{b if b is None else round(b, 3)}" for t in REACH_LIMITS
                                     for a, b in [q[f"below_{t}"]])
                          + (f" | AUROC reach {q['auroc']['reach']:.2f} certainty {q['auroc']['certainty']:.2f}"
                             if "auroc" in q else "")
                          + f" | widest gap {q['gap_max']:.2f}, cut at "
                          + " ".join(f"{t:g}: {a:.3f}/{b if b is None else round(b, 3)}" for t in GAP_SCORES
                                     for a, b in [q[f"gap_{t}"]]))
        else:
            print(f"{r['pairing']:14s} {r['seed']}  validation scratch {r['val_scratch']:.1f} pp {r['val_pp']:.1f} "
                  f"ensemble {r['val_ensemble']:.1f}  (test {r['test_scratch']:.1f} / {r['test_pp']:.1f} / "
                  f"{r['test_ensemble']:.1f})")
    if summary and screen == "graph":
        d = [r["adabn_propagated"] - r["warm_start_propagated"] for r in rows]
        print(f"AdaBN - warm start: {100 * np.mean(d):+.2f} ± {100 * np.std(d):.2f} points "
              f"({sum(x > 0 for x in d)} up, {sum(x < 0 for x in d)} down)")
    elif summary and screen == "realsource":
        for a, b in (("real", "generated"), ("generated", "scratch"), ("real", "scratch")):
            d = [r[a] - r[b] for r in rows]
            print(f"{a} - {b}, validation: {np.mean(d):+.2f} ± {np.std(d):.2f} "
                  f"({sum(x > 0 for x in d)} up, {sum(x < 0 for x in d)} down)")
    elif summary and screen == "views":
        for v in VIEWS:
            for part, names in (("tuned", SIX[:4]), ("held out", SIX[4:])):
                d = [r[f"views_{v}"] - r["plain"] for r in rows if r["pairing"] in names]
                if d:
                    print(f"{v} views - plain, {part}: {100 * np.mean(d):+.2f} ± {100 * np.std(d):.2f} points "
                          f"({sum(x > 0 for x in d)} up, {sum(x < 0 for x in d)} down)")
    elif summary and screen == "distill":
        for init in ("pp", "scratch"):
            for base in (init, "ensemble"):
                d = [r[f"val_distilled from {init}"] - r[f"val_{base}"] for r in rows]
                print(f"distilled from {init} - {base}, validation: {np.mean(d):+.2f} ± {np.std(d):.2f} "
                      f"({sum(x > 0 for x in d)} up, {sum(x < 0 for x in d)} down)")
    elif summary and screen == "soup":
        for base, f in (("its first member", lambda r: r["val_members"][0]),
                        ("the mean member", lambda r: float(np.mean(r["val_members"]))),
                        ("the ensemble", lambda r: r["val_ensemble"])):
            d = [r["val_soup"] - f(r) for r in rows]
            print(f"soup - {base}, validation: {np.mean(d):+.2f} ± {np.std(d):.2f} "
                  f"({sum(x > 0 for x in d)} up, {sum(x < 0 for x in d)} down)")
    elif summary and screen == "cv":
        cv_summary(rows)
    elif summary and screen == "reach":
        pools = sorted({k for r in rows for k, v in r.items() if isinstance(v, dict)})
        for key in [f"below_{t}" for t in REACH_LIMITS] + [f"gap_{t}" for t in GAP_SCORES]:
            print(f"{key:10s} " + " | ".join(
                f"{pool}: target images left out, worst run {max(r[pool][key][0] for r in rows if pool in r):.3f}"
                + (f", outsiders mean {np.mean([r[pool][key][1] for r in rows if pool in r]):.3f}"
                   if any(r[pool][key][1] is not None for r in rows if pool in r) else "")
                for pool in pools))
    elif summary and screen == "ensemble":
        for base in ("scratch", "pp"):
            d = [r["val_ensemble"] - r[f"val_{base}"] for r in rows]
            print(f"ensemble - {base}, validation: {np.mean(d):+.2f} ± {np.std(d):.2f}")
        d = [r["val_ensemble"] - max(r["val_scratch"], r["val_pp"]) for r in rows]
        print(f"ensemble - the better of the two, validation: {np.mean(d):+.2f} ± {np.std(d):.2f} "
              f"({sum(x > 0 for x in d)} up, {sum(x < 0 for x in d)} down)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("screen", choices=sorted(SCREENS))
    ap.add_argument("--cache", type=Path, required=True, help="PP weights, shared with benchmarks/transfer.py")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", type=Path, help="default: benchmarks/results/screen-SCREEN.json")
    ap.add_argument("--pairings", nargs="+", help="default: the screen's own")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    fn, pairings = SCREENS[args.screen]
    pairings = args.pairings or pairings
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for pairing in pairings:
            files = write_pairing(pairing, Path(tmp))
            for seed in range(args.seeds):
                rows.append(fn(pairing, seed, files, args.cache, Path(tmp)))
                report(args.screen, rows[-1:], summary=False)
    print()
    report(args.screen, rows)
    out = args.out or ROOT / f"benchmarks/results/screen-{args.screen}.json"
    out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
