"""Candidate label-free coverage signals against where PP actually paid, per (pairing, seed).

    python benchmarks/coverage_signals.py --cache /tmp/ppcache   # PP weights made (or reused) there, ~2 min cached

For each pairing of `benchmarks/transfer.py` (the four tuned and the two held-out) and seed, at the default budget:
auto's two probes (the labels' leave-one-out class-mean accuracy in the untrained and the PP features), and the PP
network's own view of the target: its source head's mean top-1 probability on the labelled images and on 400
unlabelled pool images (maximum softmax probability, the usual out-of-distribution score: a target unlike G's
samples should get less confident outputs), beside the validation and test difference pp - scratch of the same
seeds from the given result files. Nothing here is chosen on the test split: it reports.
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
from edgeppt.models import create_model  # noqa: E402
from edgeppt.train.loop import Dist  # noqa: E402
from edgeppt.train.probe import features, label_probe  # noqa: E402
from edgeppt.transfer.run import prepare_splits, pseudo_pretrain  # noqa: E402


def signals(pairing: str, seed: int, files: dict[str, Path], cache: Path, work: Path) -> dict:
    cfg = config(pairing, "auto", seed, {}, files, 4)
    assert cfg.source is not None  # every pairing has a bundle
    bundle = open_source(cfg.source, cfg, torch.device("cpu"))
    labelled, _, rest, _ = prepare_splits(cfg, bundle)
    k = len(labelled.classes)
    torch.manual_seed(seed)  # the untrained network scratch starts from
    model = create_model(cfg.arch, k, labelled.shape[0])
    init_probe = label_probe(features(model, labelled.x), labelled.y, k)
    pseudo_pretrain(cfg, model, bundle, work / f"{pairing}-{seed}", Dist(), False, cache, False, labelled.shape[0])
    model.eval()
    with torch.no_grad():
        conf = [F.softmax(model(x), 1).max(1).values.mean().item() for x in (labelled.x, rest.x[:400])]
    return {"pairing": pairing, "seed": seed, "init_probe": init_probe,
            "pp_probe": label_probe(features(model, labelled.x), labelled.y, k),
            "pp_confidence_labels": conf[0], "pp_confidence_pool": conf[1]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=5)
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
    print("| pairing | seed | init probe | PP probe | PP confidence, labels | PP confidence, pool "
          "| pp - scratch, val | pp - scratch, test |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for pairing in PAIRINGS:
        files = write_pairing(pairing, work)
        for seed in range(args.seeds):
            r = signals(pairing, seed, files, args.cache, work)
            pp, scratch = done.get((pairing, "pp", seed)), done.get((pairing, "scratch", seed))
            if pp and scratch:
                r |= {"pp_minus_scratch_val": 100 * (pp["val"] - scratch["val"]),
                      "pp_minus_scratch_test": 100 * (pp["test"] - scratch["test"])}
            rows.append(r)
            print(f"| {pairing} | {seed} | {r['init_probe']:.2f} | {r['pp_probe']:.2f} | "
                  f"{r['pp_confidence_labels']:.3f} | {r['pp_confidence_pool']:.3f} | "
                  f"{r.get('pp_minus_scratch_val', float('nan')):+.1f} | "
                  f"{r.get('pp_minus_scratch_test', float('nan')):+.1f} |", flush=True)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
