"""Candidate label-free coverage signals against where PP actually paid, per (pairing, seed).

    python benchmarks/coverage_signals.py --cache /tmp/ppcache   # PP weights made (or reused) there, ~2 min cached
    python benchmarks/coverage_signals.py --cache DIR --labels 2 --pairings example "other classes" "style shift" \
        "other dataset" --results benchmarks/results/transfer-2-labels.json   # auto's probe at 2 labels per class

For each pairing of `benchmarks/transfer.py` (the four tuned and the two held-out) and seed, at the default budget:
auto's two probes (the labels' leave-one-out class-mean accuracy in the untrained and the PP features), and the PP
network's own view of the target: its source head's mean top-1 probability on the labelled images and on 400
unlabelled pool images (maximum softmax probability, the usual out-of-distribution score: a target unlike G's
samples should get less confident outputs), beside the validation and test difference pp - scratch of the same
seeds from the given result files. Beside auto's probe, two variants of it that might hold up with fewer labels:
`views` (16 weak views of each labelled image, classified by the class means of the other images' views) and
`soft` (the mean probability of the own class, a softmax over cosine similarities to the class means / 0.1:
graded, where 10 images move the accuracy in steps of 10%). Nothing here is chosen on the test split: it reports.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.transfer import PAIRINGS, config, write_pairing  # noqa: E402
from edgeppt.bundle import open_source  # noqa: E402
from edgeppt.models import ClassifierNet, create_model  # noqa: E402
from edgeppt.train import augment  # noqa: E402
from edgeppt.train.loop import Dist  # noqa: E402
from edgeppt.train.probe import features, label_probe, label_probe_soft  # noqa: E402
from edgeppt.transfer.run import prepare_splits, pseudo_pretrain  # noqa: E402


def views_probe(model: ClassifierNet, x: torch.Tensor, y: torch.Tensor, k: int, aug, views: int = 16) -> float:
    """auto's leave-one-out class-mean probe over weak views: each view of an image is classified by the class
    means of the other images' views."""
    g = torch.Generator().manual_seed(0)
    f = features(model, torch.cat([augment.weak(x, g, aug) for _ in range(views)]))  # view j of image i: j*n + i
    n = len(x)
    src, ys = torch.arange(n).repeat(views), y.repeat(views)
    sums = torch.zeros(k, f.shape[1]).index_add_(0, ys, f)
    counts = torch.bincount(ys, minlength=k).float()
    own = torch.zeros(n, f.shape[1]).index_add_(0, src, f)
    dist = torch.cdist(f, sums / counts[:, None])
    dist[torch.arange(len(f)), ys] = (f - (sums[ys] - own[src]) / (counts[ys] - views)[:, None]).norm(dim=1)
    return (dist.argmin(1) == ys).float().mean().item()


def probes(model: ClassifierNet, name: str, x: torch.Tensor, y: torch.Tensor, k: int, aug) -> dict:
    f = features(model, x)
    return {f"{name}_probe": label_probe(f, y, k), f"{name}_soft": label_probe_soft(f, y, k),
            f"{name}_views": views_probe(model, x, y, k, aug)}


def signals(pairing: str, seed: int, files: dict[str, Path], cache: Path, work: Path, labels: int) -> dict:
    cfg = config(pairing, "auto", seed, {}, files, labels)
    assert cfg.source is not None  # every pairing has a bundle
    bundle = open_source(cfg.source, cfg, torch.device("cpu"))
    labelled, _, rest, _ = prepare_splits(cfg, bundle)
    k = len(labelled.classes)
    torch.manual_seed(seed)  # the untrained network scratch starts from
    model = create_model(cfg.arch, k, labelled.shape[0])
    init = probes(model, "init", labelled.x, labelled.y, k, cfg.augment)
    pseudo_pretrain(cfg, model, bundle, work / f"{pairing}-{seed}", Dist(), False, cache, False, labelled.shape[0],
                    labelled.shape[1])
    model.eval()
    with torch.no_grad():
        conf = [F.softmax(model(x), 1).max(1).values.mean().item() for x in (labelled.x, rest.x[:400])]
    return {"pairing": pairing, "seed": seed, **init, **probes(model, "pp", labelled.x, labelled.y, k, cfg.augment),
            "pp_confidence_labels": conf[0], "pp_confidence_pool": conf[1]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--labels", type=int, default=4, help="labelled images per class")
    ap.add_argument("--pairings", nargs="+", default=list(PAIRINGS), choices=list(PAIRINGS))
    ap.add_argument("--cache", type=Path, required=True, help="PP weights, shared with benchmarks/transfer.py")
    ap.add_argument("--results", nargs="+", type=Path, default=[ROOT / "benchmarks/results/transfer.json",
                                                                ROOT / "benchmarks/results/transfer-held-out.json"])
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(1)
    done: dict[tuple[str, str, int], dict] = {}
    for path in args.results:
        done |= {(r["pairing"], r["row"], r["seed"]): r["result"] for r in json.loads(path.read_text())["runs"]}
    work = Path(tempfile.mkdtemp())
    rows = []
    print("| pairing | seed | init probe | PP probe | views: init, PP | soft: init, PP | PP confidence, labels "
          "| PP confidence, pool | pp - scratch, val | pp - scratch, test |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for pairing in args.pairings:
        files = write_pairing(pairing, work)
        for seed in range(args.seeds):
            r = signals(pairing, seed, files, args.cache, work, args.labels)
            pp, scratch = done.get((pairing, "pp", seed)), done.get((pairing, "scratch", seed))
            if pp and scratch:
                r |= {"pp_minus_scratch_val": 100 * (pp["val"] - scratch["val"]),
                      "pp_minus_scratch_test": 100 * (pp["test"] - scratch["test"])}
            rows.append(r)
            print(f"| {pairing} | {seed} | {r['init_probe']:.2f} | {r['pp_probe']:.2f} | "
                  f"{r['init_views']:.2f}, {r['pp_views']:.2f} | {r['init_soft']:.2f}, {r['pp_soft']:.2f} | "
                  f"{r['pp_confidence_labels']:.3f} | {r['pp_confidence_pool']:.3f} | "
                  f"{r.get('pp_minus_scratch_val', float('nan')):+.1f} | "
                  f"{r.get('pp_minus_scratch_test', float('nan')):+.1f} |", flush=True)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
