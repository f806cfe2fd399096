"""Label propagation's labels on the unlabelled pool: the solved system against 20 steps of its series.

    python benchmarks/propagation.py --cache DIR     # the four tuned pairings, seeds 0-2 (about 12 minutes cold)

For each (pairing, seed) the warm start of the SSL phase (pp's labels-only model, as `benchmarks/transfer.py` trains
it; shared through the cache) gives features for the labelled images and the rest of the training pool, whose
labels the product never sees. The labels propagated over them are scored against those labels: plainly, and
weighted by certainty and class balance as the SSL phase weighs them. Neither the test nor the validation split is
read. The result: docs/transfer-selection.md ("Label propagation solved, not truncated").
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from edgeppt.models import create_model
from edgeppt.transfer import run_transfer
from edgeppt.transfer.run import prepare_splits
from edgeppt.transfer.ssl import label_weights, propagate

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.transfer import PAIRINGS, TUNED, config, write_pairing  # noqa: E402


def series(features: torch.Tensor, labels: torch.Tensor, k: int, neighbours: int, alpha: float,
           steps: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """The former propagation: `steps` steps of z <- alpha W z + y over the same graph (dense: pools are small)."""
    f = F.normalize(features.float(), dim=1)
    sim = f @ f.T
    sim.fill_diagonal_(-1.0)
    v, j = sim.topk(min(neighbours, len(f) - 1), dim=1)
    w = torch.zeros_like(sim).scatter_(1, j, v.clamp_min(0).pow(3))
    w = (w + w.T) / 2
    d = w.sum(1).clamp_min(1e-12).rsqrt()
    w = w * d[:, None] * d[None, :]
    y = torch.zeros(len(f), k)
    y[torch.arange(len(labels)), labels] = 1.0
    z = y.clone()
    for _ in range(steps):
        z = alpha * w @ z + y
    p = F.normalize(z.clamp_min(0), p=1, dim=1)
    certainty = 1 + (p * p.clamp_min(1e-12).log()).sum(1) / torch.log(torch.tensor(float(k)))
    return p.argmax(1), certainty.clamp(0, 1)


def score(label: torch.Tensor, certainty: torch.Tensor, truth: torch.Tensor, k: int) -> dict[str, float]:
    right = (label == truth).float()
    weight = label_weights(label, certainty, k)  # as the SSL phase weighs each label
    return {"accuracy": 100 * right.mean().item(), "mean_weight": weight.mean().item(),
            "weighted": 100 * (right * weight).sum().item() / weight.sum().item()}


def one(pairing: str, seed: int, work: Path, cache: Path) -> dict:
    cfg = config(pairing, "pp", seed, {}, write_pairing(pairing, work), 4)
    out = work / f"{pairing.replace(' ', '-')}-{seed}"
    run_transfer(cfg, out, progress=False, pp_cache=cache)
    state = torch.load(out / "model.pt", weights_only=True)  # our own run's file
    model = create_model(state["arch"], len(state["classes"]), state["in_chans"])
    model.load_state_dict(state["state_dict"])
    model.eval()
    labelled, _, rest, _ = prepare_splits(cfg, None)
    x, k, n = torch.cat([labelled.x, rest.x]), len(labelled.classes), len(labelled)
    with torch.no_grad():
        feats = torch.cat([model.forward_features(x[i:i + 512]) for i in range(0, len(x), 512)])
    p = cfg.pssl
    rec = {"pairing": pairing, "seed": seed, "pool": len(rest)}
    for name, fn in (("series", series), ("solved", propagate)):
        label, certainty = fn(feats, labelled.y, k, p.lp_neighbours, p.lp_alpha)
        rec[name] = score(label[n:], certainty[n:], rest.y, k)
    return rec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairings", nargs="+", default=TUNED, choices=list(PAIRINGS))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--cache", type=Path, default=None,
                    help="PP weights and labels-only phases, shared with benchmarks/transfer.py's --cache")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "propagation.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        cache = args.cache or Path(tmp) / "cache"
        cache.mkdir(parents=True, exist_ok=True)
        runs = [one(p, s, Path(tmp), cache) for s in range(args.seeds) for p in args.pairings]
    print("| pairing | seed | accuracy, 20 steps | solved | weighted, 20 steps | solved | mean weight, 20 steps "
          "| solved |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in runs:
        a, b = r["series"], r["solved"]
        print(f"| {r['pairing']} | {r['seed']} | {a['accuracy']:.1f} | {b['accuracy']:.1f} | {a['weighted']:.1f} | "
              f"{b['weighted']:.1f} | {a['mean_weight']:.2f} | {b['mean_weight']:.2f} |")
    for key in ("accuracy", "weighted"):
        d = [r["solved"][key] - r["series"][key] for r in runs]
        print(f"solved - 20 steps, {key}: {statistics.mean(d):+.2f} ± {statistics.stdev(d):.2f} "
              f"({sum(x > 0 for x in d)} of {len(d)} up)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(runs, indent=2))


if __name__ == "__main__":
    main()
