"""Search benchmark: at one latency budget on x86-cpu, the searched architecture vs random search with the same
trial count vs the hand-designed MobileNet-like baseline at the widest width that fits the budget.

    python benchmarks/search.py            # default: 20 trials per search, 3 transfer seeds per architecture
    python benchmarks/search.py --quick                                  # smoke run, a few minutes
    python benchmarks/search.py --search-seeds 3 --strategies evolution  # the gap over three search seeds
    python benchmarks/search.py --reuse benchmarks/results/search.json --reference-widths 1.0 0.5
                                           # add reference rows to an earlier result without searching again

Each architecture is then trained with pp+pssl (transfer.run_transfer) on the built-in example and tested on the
held-out test split. The latencies of all rows are re-measured together at the end (interleaved rounds,
the least disturbed round of each, as the search itself judges a candidate: search/latency.py), so they compare
within one run on a shared, noisy machine. Prints a Markdown table and writes the raw
results next to it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from edgeppt.config import SearchConfig, TransferConfig
from edgeppt.data import EXAMPLE_TARGET
from edgeppt.devices import load_profile
from edgeppt.models import create_model
from edgeppt.search import run_search
from edgeppt.search.costs import count_costs
from edgeppt.search.latency import measure_latency
from edgeppt.search.reference import WIDTHS, reference_arch
from edgeppt.transfer import run_transfer

ROOT = Path(__file__).resolve().parents[1]

BUNDLE = ROOT / "bundles" / "animals-src"


def baseline(budget_ms: float, in_shape, threads: int, classes: int) -> tuple[dict, float, float]:
    """The widest MobileNet-like baseline whose measured latency fits (the hand-designed choice)."""
    t = time.perf_counter()
    for w in WIDTHS:
        arch = reference_arch(w)
        lat = measure_latency(create_model(arch, classes, in_shape[0]), in_shape, threads)
        if lat <= budget_ms:
            return {**arch, "width_mult": w}, lat, time.perf_counter() - t
    raise SystemExit(f"no baseline width fits {budget_ms} ms")


def gap_table(rows: dict[str, dict]) -> list[str]:
    """Each search's winner minus the hand-designed baseline, paired over the transfer seeds (the same seeds
    train every row), then per strategy the mean ± std of those gaps over the search seeds."""
    base = next((r for k, r in rows.items() if k.startswith("hand-designed")), None)
    searched = {k: r for k, r in rows.items() if k.startswith(("searched", "random"))}
    if base is None or not searched:
        return []
    out = ["| search | winner - hand-designed, paired over transfer seeds | per transfer seed |", "|---|---:|---|"]
    by_strategy: dict[str, list[float]] = {}
    for k, r in searched.items():
        diffs = [a - b for a, b in zip(r["test_accs"], base["test_accs"])]
        sd = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
        out.append(f"| {k} | {statistics.mean(diffs):+.2f} ± {sd:.2f} | {', '.join(f'{d:+.1f}' for d in diffs)} |")
        by_strategy.setdefault(k.split(",")[0], []).append(statistics.mean(diffs))
    for name, g in by_strategy.items():
        if len(g) > 1:
            out.append(f"| {name}: over {len(g)} search seeds | {statistics.mean(g):+.2f} ± {statistics.stdev(g):.2f}"
                       " | |")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--latency-ms", type=float, default=0.3)
    ap.add_argument("--trials", type=int, default=None)
    ap.add_argument("--seeds", type=int, default=None, help="transfer seeds per architecture")
    ap.add_argument("--population", type=int, default=8, help="evolution population (the search default)")
    ap.add_argument("--proxy-steps", type=int, nargs=2, default=None, metavar=("PP", "FT"),
                    help="proxy pre-training and fine-tuning steps (default: the search defaults)")
    ap.add_argument("--pretrain-steps", type=int, default=300, help="transfer: PP steps")
    ap.add_argument("--finetune-steps", type=int, default=150, help="transfer: P-SSL steps")
    ap.add_argument("--reference-widths", type=float, nargs="*", default=[],
                    help="also train the MobileNet-like layout at these width multipliers (reference rows)")
    ap.add_argument("--search-seeds", type=int, default=1,
                    help="searches per strategy, each with its own seed: the gap to the hand-designed baseline is "
                         "reported per search seed and as mean ± std over them")
    ap.add_argument("--strategies", nargs="+", default=["evolution", "random"], choices=["evolution", "random"])
    ap.add_argument("--reuse", type=Path, default=None,
                    help="keep the rows of an earlier result file (their searches and test accuracies); train only "
                         "new rows, then re-measure every latency together")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "search.json")
    ap.add_argument("--work", type=Path, default=None,
                    help="keep the searches' run directories here (default: a temporary folder); a search already "
                         "there is resumed, so a stopped benchmark picks up where it was")
    args = ap.parse_args()
    trials = args.trials or (3 if args.quick else 20)
    seeds = args.seeds or (1 if args.quick else 3)
    proxy = dict(pretrain_steps=20, finetune_steps=20) if args.quick else {}
    if args.proxy_steps:
        proxy = dict(pretrain_steps=args.proxy_steps[0], finetune_steps=args.proxy_steps[1])
    train = dict(pretrain_steps=60, finetune_steps=40, pretrain_pool=512) if args.quick else \
        dict(pretrain_steps=args.pretrain_steps, pretrain_batch=64, pretrain_pool=2048,
             finetune_steps=args.finetune_steps)
    profile = load_profile("x86-cpu")
    t_all = time.perf_counter()
    rows: dict[str, dict] = json.loads(args.reuse.read_text())["rows"] if args.reuse else {}
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = args.work or Path(tmp_dir)
        names = {"evolution": "searched (regularised evolution)", "random": "random sampling"}
        searches = [(names[st] + (f", search seed {n}" if args.search_seeds > 1 else ""), st, n)
                    for n in range(args.search_seeds) for st in args.strategies]
        for label, strategy, search_seed in searches:
            if label in rows:
                continue
            cfg = SearchConfig(source=BUNDLE, target=EXAMPLE_TARGET, labels_per_class=4, device="x86-cpu",
                               latency_ms=args.latency_ms, strategy=strategy, trials=trials, proxy=proxy,
                               population=args.population, tournament=min(3, args.population),
                               seed=search_seed if strategy == "evolution" else 1000 + search_seed)  # other samples
            t = time.perf_counter()
            run_dir = tmp / f"{strategy}-{search_seed}"
            s = run_search(cfg, run_dir, resume=(run_dir / "search_config.json").exists(), progress=True)
            rows[label] = {"arch": s["best"]["arch"], "search_s": time.perf_counter() - t,
                           "proxy_accuracy": s["best"]["proxy_accuracy"], "rejected": s["rejected"],
                           "why": s["why"], "reference": s["reference"]}
            print(f"{label}: search {rows[label]['search_s']:.0f}s, proxy acc {s['best']['proxy_accuracy']:.3f}, "
                  f"latency {s['best']['latency_ms']:.3f} ms, {s['rejected']} rejected; chosen: {s['why']}"
                  + (f"; the search's own reference {s['reference']['name']} scored "
                     f"{s['reference']['proxy_accuracy']:.3f}" + (" and is the pick" if s["reference"]["chosen"]
                                                                  else "") if s["reference"] else ""), flush=True)
        in_shape, classes = (1, 28, 28), 5
        if not any(k.startswith("hand-designed") for k in rows):
            arch, lat, t_base = baseline(args.latency_ms, in_shape, profile.threads, classes)
            width = arch.pop("width_mult")
            rows[f"hand-designed MobileNet-like (width x{width})"] = {"arch": arch, "search_s": t_base,
                                                                     "proxy_accuracy": None, "rejected": 0}
        for w in args.reference_widths:
            rows.setdefault(f"reference: MobileNet-like width x{w:g}", {
                "arch": reference_arch(w), "search_s": 0.0, "proxy_accuracy": None,
                "rejected": 0})
        for label, r in rows.items():
            if len(r.get("test_accs", [])) == seeds:
                continue  # reused from --reuse
            accs: list[float] = []
            for seed in range(seeds):
                tc = TransferConfig(source=BUNDLE, target=EXAMPLE_TARGET, labels_per_class=4, arch=r["arch"],
                                    method="pp+pssl", seed=seed, **train)
                rep = run_transfer(tc, tmp / f"t-{len(accs)}-{abs(hash(label))}", progress=False)
                accs.append(100 * rep["test_accuracy"])
            r["test_accs"] = accs
            r.update(count_costs(create_model(r["arch"], classes, 1), in_shape).dict())
            print(f"{label}: test accuracy {statistics.mean(accs):.2f} ({accs})", flush=True)
        # Final latencies, measured together: interleaved rounds, the least disturbed round per architecture (the
        # statistic the search's own measurement keeps, so a winner and its re-measurement agree).
        models = {k: create_model(r["arch"], classes, 1) for k, r in rows.items()}
        lats: dict[str, list[float]] = {k: [] for k in rows}
        for _ in range(5):
            for k, m in models.items():
                lats[k].append(measure_latency(m, in_shape, profile.threads, warmup=20, repeats=100))
        for k in rows:
            rows[k]["latency_ms"] = min(lats[k])
    total = time.perf_counter() - t_all
    table = [f"| architecture | test accuracy % (pp+pssl, {seeds} seed{'s' * (seeds > 1)}) | measured latency ms "
             f"(budget {args.latency_ms:g}) | MACs | params | peak activation KiB | search wall time s |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for k, r in rows.items():
        acc = statistics.mean(r["test_accs"])
        sd = statistics.pstdev(r["test_accs"])
        table.append(f"| {k} | {acc:.2f} ± {sd:.2f} | {r['latency_ms']:.3f} | {r['macs']:,} | {r['params']:,} | "
                     f"{r['peak_activation_kib']:.1f} | {'-' if k.startswith('reference') else round(r['search_s'])} |")
    print()
    print(f"x86-cpu ({profile.threads} threads), budget {args.latency_ms} ms, {trials} trials per search "
          f"(evolution population {args.population}), proxy {proxy or 'default'}, "
          f"transfer {train}, "
          f"torch threads {torch.get_num_threads()}, total {total / 60:.1f} min"
          + (f" (this run; rows reused from {args.reuse})" if args.reuse else ""))
    print("\n".join(table))
    gaps = gap_table(rows)
    if gaps:
        print()
        print("\n".join(gaps))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"budget_ms": args.latency_ms, "trials": trials, "seeds": seeds,
                                    "total_s": total, "rows": rows, "table": table, "gaps": gaps}, indent=2))


if __name__ == "__main__":
    main()
