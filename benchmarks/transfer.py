"""Transfer benchmark: every method on the built-in example, at 4 and 10 labels per class, over seeds.

    python benchmarks/transfer.py            # default budget (about 30 minutes on 2 CPU cores)
    python benchmarks/transfer.py --quick    # one seed, smaller budget: a smoke run
    python benchmarks/transfer.py --full     # longer budget (a GPU helps)

Prints a Markdown table (mean and std of test accuracy, wall time, training images/s) and writes the
raw results next to it. The PP weights of a seed are trained once and reused by every PP row of that
seed (they do not depend on the target labels), which the wall-time column reflects.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgeppt.config import TransferConfig  # noqa: E402
from edgeppt.data import EXAMPLE_TARGET  # noqa: E402
from transfer import run_transfer  # noqa: E402

BUNDLE = ROOT / "bundles" / "animals-src"

# (row label, method, overrides): the five methods, then each P-SSL design choice on its own.
ROWS: list[tuple[str, str, dict]] = [
    ("scratch", "scratch", {}),
    ("kd", "kd", {}),
    ("pp", "pp", {}),
    ("pssl", "pssl", {}),
    ("pp+pssl", "pp+pssl", {}),
]
ABLATIONS: list[tuple[str, str, dict]] = [
    ("pssl: plain FixMatch, random z", "pssl",
     {"pssl": {"algorithm": "fixmatch", "z_search_steps": 0, "relevance": "none", "unlabeled_weight": 1.0,
               "ramp_fraction": 0.0}}),
    ("pp + plain FixMatch, random z", "pp+pssl",
     {"pssl": {"algorithm": "fixmatch", "z_search_steps": 0, "relevance": "none", "unlabeled_weight": 1.0,
               "ramp_fraction": 0.0}}),
    ("pp + UDA soft targets, ramped+capped weight", "pp+pssl",
     {"pssl": {"algorithm": "uda", "z_search_steps": 0, "relevance": "none"}}),
    ("  + relevance filtering", "pp+pssl",
     {"pssl": {"algorithm": "uda", "z_search_steps": 0, "relevance": "filter"}}),
    ("  + z chosen near x_t (= pp+pssl default)", "pp+pssl", {}),
]


def budgets(mode: str) -> dict:
    if mode == "quick":
        return dict(pretrain_steps=300, finetune_steps=200)
    if mode == "full":
        return dict(pretrain_steps=6000, finetune_steps=1000)
    return {}  # the TransferConfig defaults are the default budget


def run_one(method: str, overrides: dict, labels: int, seed: int, budget: dict, work: Path, cache: Path) -> dict:
    merged = {**budget, **overrides}
    if "pssl" in overrides:
        merged["pssl"] = {**TransferConfig(target="x").pssl.model_dump(), **overrides["pssl"]}
    cfg = TransferConfig(source=BUNDLE, target=EXAMPLE_TARGET, labels_per_class=labels, method=method, seed=seed,
                         **merged)
    out = Path(tempfile.mkdtemp(dir=work))
    t = time.perf_counter()
    report = run_transfer(cfg, out, progress=False, pp_cache=cache)
    wall = time.perf_counter() - t
    seen = report["images_per_s"]
    return {"acc": report["test_accuracy"], "wall_s": wall,
            "img_per_s": statistics.mean(seen.values()) if seen else 0.0,
            "pp_cached": "cached" in report.get("pretrain", {})}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true")
    mode.add_argument("--full", action="store_true")
    ap.add_argument("--seeds", type=int, default=None)
    ap.add_argument("--labels", type=int, nargs="+", default=[4, 10])
    ap.add_argument("--no-ablations", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "transfer.json")
    args = ap.parse_args()
    m = "quick" if args.quick else "full" if args.full else "default"
    seeds = range(args.seeds or (1 if args.quick else 3))
    budget = budgets(m)
    rows = [(lab, meth, ov, labels) for labels in args.labels for lab, meth, ov in ROWS]
    if not args.no_ablations:
        rows += [(lab, meth, ov, args.labels[0]) for lab, meth, ov in ABLATIONS]
    results: list[dict] = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work, cache = Path(tmp) / "runs", Path(tmp) / "pp-cache"
        work.mkdir()
        for label, method, ov, labels in rows:
            runs = [run_one(method, ov, labels, s, budget, work, cache) for s in seeds]
            accs = [100 * r["acc"] for r in runs]
            row = {"row": label, "method": method, "overrides": ov, "labels_per_class": labels,
                   "acc_mean": statistics.mean(accs), "acc_std": statistics.pstdev(accs), "accs": accs,
                   "wall_s": statistics.mean(r["wall_s"] for r in runs),
                   "img_per_s": statistics.mean(r["img_per_s"] for r in runs)}
            results.append(row)
            print(f"{label:45s} k={labels:<3d} {row['acc_mean']:6.2f} ± {row['acc_std']:4.2f}  "
                  f"{row['wall_s']:6.1f}s  {row['img_per_s']:7.0f} img/s", flush=True)
    total = time.perf_counter() - t0
    table = ["| row | labels/class | test accuracy % (mean ± std) | wall time / run (s) | train images/s |",
             "|---|---:|---:|---:|---:|"]
    table += [f"| {r['row']} | {r['labels_per_class']} | {r['acc_mean']:.2f} ± {r['acc_std']:.2f} | "
              f"{r['wall_s']:.1f} | {r['img_per_s']:.0f} |" for r in results]
    print()
    print(f"budget: {m}; seeds: {len(seeds)}; torch threads: {torch.get_num_threads()}; total {total / 60:.1f} min")
    print("\n".join(table))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"budget": m, "seeds": len(seeds), "total_s": total, "rows": results}, indent=2))


if __name__ == "__main__":
    main()
