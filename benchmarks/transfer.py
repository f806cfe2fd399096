"""Transfer benchmark: every method on the built-in example, at 4 and 10 labels per class, over seeds.

    python benchmarks/transfer.py            # default budget (about 30 minutes on 2 CPU cores)
    python benchmarks/transfer.py --quick    # one seed, smaller budget: a smoke run
    python benchmarks/transfer.py --full     # the TransferConfig defaults (resnet_s, longer training; a GPU helps)

Source bundle: bundles/animals-src (bear, bird, cat, cow, dog); target: elephant, giraffe, horse, sheep, zebra.
Prints a Markdown table (mean and std of test accuracy, wall time, training images/s) and writes the raw
results next to it. The PP weights of a seed, and the pseudo-sample pool of a labelled set, are made once and
reused by every row that needs them (they do not depend on the rest of the settings); their one-off cost is
printed apart and left out of the per-run wall time.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

from edgeppt.config import TransferConfig
from edgeppt.data import EXAMPLE_TARGET
from edgeppt.transfer import run_transfer

BUNDLE = ROOT / "bundles" / "animals-src"
METHOD_ROWS = ["scratch", "kd", "pp", "pssl", "pp+pssl"]

# Each P-SSL design choice, shown by switching it in the full method (pp+pssl with the PSSLConfig defaults:
# warm start, anchor labels, ramped and capped weight, no consistency term, random z, no relevance weights).
# "pssl" (the same stage without the PP weights) is among the method rows.
DESIGN_ROWS: list[tuple[str, dict]] = [
    ("pp+pssl without the warm start (SSL from step 0, own targets)", {"warm_start": False}),
    ("pp+pssl, consistency only (FixMatch), no anchor labels", {"anchor_weight": 0.0, "consistency": 1.0}),
    ("pp+pssl + FixMatch consistency (hard targets)", {"consistency": 1.0, "algorithm": "fixmatch"}),
    ("pp+pssl + UDA consistency (soft targets)", {"consistency": 1.0, "algorithm": "uda"}),
    ("pp+pssl without the ramp and cap (weight 1 from step 0)", {"unlabeled_weight": 1.0, "ramp_fraction": 0.0}),
    ("pp+pssl + relevance weighting", {"relevance": "weight"}),
    ("pp+pssl + z chosen near x_t (10 search steps)", {"z_search_steps": 10}),
]

BUDGETS = {
    "quick": dict(arch="resnet_xs", pretrain_steps=150, finetune_steps=100),
    "default": dict(arch="resnet_xs", pretrain_steps=400, finetune_steps=200),
    "full": {},  # the TransferConfig defaults
}


def run_one(method: str, pssl: dict, labels: int, seed: int, budget: dict, work: Path, cache: Path) -> dict:
    base = TransferConfig(target=EXAMPLE_TARGET)
    cfg = TransferConfig(source=BUNDLE, target=EXAMPLE_TARGET, labels_per_class=labels, method=method, seed=seed,
                         eval_every=10**6, checkpoint_every=10**6, **budget,
                         pssl=base.pssl.model_copy(update=pssl))
    out = Path(tempfile.mkdtemp(dir=work))
    t = time.perf_counter()
    report = run_transfer(cfg, out, progress=False, pp_cache=cache)
    wall = time.perf_counter() - t
    once = 0.0  # one-off work shared through the cache: PP weights, pseudo-sample pool
    if "pretrain" in report and "cached" not in report["pretrain"]:
        once += report["timings_s"].get("pretrain", 0.0)
    if "pseudo_samples" in report and not report["pseudo_samples"]["cached"]:
        once += report["timings_s"].get("pseudo_samples", 0.0)
    phase = method.replace("+", "_")
    return {"acc": report["test_accuracy"], "wall_s": wall - once, "once_s": once,
            "img_per_s": report["images_per_s"].get(phase, 0.0),
            "pp_s": report["timings_s"].get("pretrain", 0.0) if once else 0.0}


def _one_thread() -> None:
    torch.set_num_threads(1)


def _task(args: tuple) -> dict:
    return run_one(*args)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true")
    mode.add_argument("--full", action="store_true")
    ap.add_argument("--seeds", type=int, default=None, help="number of seeds (default 3; 1 with --quick)")
    ap.add_argument("--labels", type=int, nargs="+", default=[4, 10])
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time, one torch thread each (small models on a "
                    "few cores train faster this way than one run on several threads)")
    ap.add_argument("--no-design-rows", action="store_true", help="only the five method rows")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "transfer.json")
    args = ap.parse_args()
    m = "quick" if args.quick else "full" if args.full else "default"
    seeds = list(range(args.seeds or (1 if args.quick else 3)))
    budget = BUDGETS[m]
    rows = [(meth, meth, {}, k) for k in args.labels for meth in METHOD_ROWS]
    if not args.no_design_rows:
        rows += [(label, "pp+pssl", ov, args.labels[0]) for label, ov in DESIGN_ROWS]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, ProcessPoolExecutor(
            args.jobs, mp_context=mp.get_context("spawn"), initializer=_one_thread) as pool:
        work, cache = Path(tmp) / "runs", Path(tmp) / "cache"
        work.mkdir()
        tasks = {(i, s): (meth, ov, k, s, budget, work, cache) for i, (_, meth, ov, k) in enumerate(rows) for s in seeds}
        # Waves, so that what the cache shares is made once: PP weights per seed (the pp rows at the first
        # label count, alongside the rows that need neither PP nor pools), then the default pseudo-sample pools
        # (pp+pssl rows), then everything else.
        first = [key for key in tasks if rows[key[0]][1] == "pp" and rows[key[0]][3] == args.labels[0]]
        first += [key for key in tasks if rows[key[0]][1] in ("scratch", "kd")]
        second = [key for key in tasks if rows[key[0]][1] == "pp+pssl" and not rows[key[0]][2]]
        waves = [first, second, [key for key in tasks if key not in first and key not in second]]
        done: dict = {}
        for wave in waves:
            for key, r in zip(wave, pool.map(_task, [tasks[key] for key in wave])):
                done[key] = r
                print(f"  {rows[key[0]][0][:50]:50s} k={rows[key[0]][3]:<3d} seed {key[1]}: {100 * r['acc']:.2f}% "
                      f"{r['wall_s']:.0f}s (+{r['once_s']:.0f}s one-off)", flush=True)
    results: list[dict] = []
    once = [{"row": rows[i][0], "labels_per_class": rows[i][3], "seconds": r["once_s"], "pp_s": r["pp_s"]}
            for (i, _), r in done.items() if r["once_s"]]
    for i, (label, method, ov, labels) in enumerate(rows):
        runs = [done[(i, s)] for s in seeds]
        accs = [100 * r["acc"] for r in runs]
        results.append({"row": label, "method": method, "pssl_overrides": ov, "labels_per_class": labels,
                        "acc_mean": statistics.mean(accs), "acc_std": statistics.pstdev(accs), "accs": accs,
                        "wall_s": statistics.mean(r["wall_s"] for r in runs),
                        "img_per_s": statistics.mean(r["img_per_s"] for r in runs)})
    total = time.perf_counter() - t0
    pp_s = [o["pp_s"] for o in once if o["pp_s"]]
    pool_s = [o["seconds"] - o["pp_s"] for o in once if o["seconds"] - o["pp_s"] > 0]
    table = ["| row | labels/class | test accuracy % (mean ± std) | wall time / run (s) | train images/s |",
             "|---|---:|---:|---:|---:|"]
    table += [f"| {r['row']} | {r['labels_per_class']} | {r['acc_mean']:.2f} ± {r['acc_std']:.2f} | "
              f"{r['wall_s']:.1f} | {r['img_per_s']:.0f} |" for r in results]
    print()
    print(f"budget: {m} {budget or '(TransferConfig defaults)'}; seeds: {len(seeds)}; "
          f"{args.jobs} runs at a time, 1 torch thread each; total {total / 60:.1f} min")
    if pp_s:
        print(f"one-off, shared through the cache: PP pre-training {statistics.mean(pp_s):.0f} s per seed "
              f"(x{len(pp_s)}); pseudo-sample pools {statistics.mean(pool_s) if pool_s else 0:.0f} s each "
              f"(x{len(pool_s)})")
    print("\n".join(table))
    by = {(r["row"], r["labels_per_class"]): r["acc_mean"] for r in results}
    for k in args.labels:
        if all((meth, k) in by for meth in METHOD_ROWS):
            best = max(METHOD_ROWS, key=lambda meth: by[(meth, k)])
            print(f"k={k}: pp+pssl - scratch = {by[('pp+pssl', k)] - by[('scratch', k)]:+.2f} points; "
                  f"pp+pssl - kd = {by[('pp+pssl', k)] - by[('kd', k)]:+.2f}; best method row: {best}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"budget": m, "budget_settings": budget, "seeds": len(seeds), "total_s": total,
                                    "one_off": once, "rows": results}, indent=2))


if __name__ == "__main__":
    main()
