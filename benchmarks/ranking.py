"""How well the search's proxies rank architectures: Kendall tau between each proxy's scores and the accuracy the
architectures reach when transfer trains them properly, over architectures sampled from the search space (the
part a latency budget keeps: up to --max-macs).

Proxies compared (the search's default proxy budget; the first four from one PP run per architecture):
- `cv`: k-fold cross-validation over the k training labels alone (`--val-per-class 0`);
- `pp_probe`: after the proxy's PP, the leave-one-out nearest-class-mean probe of the k labels in the PP
  features, as the probability it gives the right class (k labels, no fine-tuning);
- `pp_source`: after the proxy's PP, its accuracy on generated source images held out from PP (no target label);
- `init_probe`: the same probe in the untrained network's features (no training at all);
- `val20`: 20 extra labelled validation images per class (the default: 6x the labels at k = 4);
- `macs`, `params`: the architecture's size.

The reference is the mean accuracy over --ref-seeds transfer seeds of `edgeppt transfer --method pp` at the
CLI's default budget, on --ref-per-class labelled images per class of the target pool that are none of the
training labels of any of those seeds, nor val20's images, nor the test split (which is not used here at all).
How far one reference seed agrees with another is printed too: the most a proxy trained once can be expected
to reach. Each architecture's row is written to --json as it finishes; `--reuse` the file to continue.

    python benchmarks/ranking.py [--archs 12] [--seed 0] [--ref-seeds 3] [--json benchmarks/results/ranking.json]
    # side by side: each of N processes --shard I/N --json part-I.json, then --reuse part-*.json for the table
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from scipy.stats import kendalltau, rankdata, spearmanr

from edgeppt.config import SearchConfig, SpaceConfig, TransferConfig
from edgeppt.data import EXAMPLE_TARGET, ImageSet, few_shot, load_dataset, train_test_split
from edgeppt.models import create_model
from edgeppt.runs import atomic_write_text
from edgeppt.search.costs import count_costs
from edgeppt.search.proxy import ProxyData, evaluate_arch, prepare
from edgeppt.search.space import random_sample, to_arch
from edgeppt.train.evaluate import evaluate
from edgeppt.train.probe import features, label_probe_soft
from edgeppt.transfer import run_transfer

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "bundles" / "animals-src"


def reference_split(seed: int, k: int, per_class: int, seeds: list[int]) -> ImageSet:
    """Labelled images from the target pool outside the test split, outside val20's 20 per class (drawn exactly
    as search/proxy.py draws them) and outside the k training labels of every reference seed."""
    target = load_dataset(EXAMPLE_TARGET, 28, 1)
    train, _test = train_test_split(target, 0.2, seed=0)
    _, rest = few_shot(train, k, seed)
    _, rest = few_shot(rest, 20, seed + 1)
    taken = {i for s in seeds for i in few_shot(train, k, s)[0].positions()}
    rest = rest.subset([j for j, i in enumerate(rest.positions()) if i not in taken])
    ref, _ = few_shot(rest, per_class, seed + 2)
    return ref


def reference(arch: dict, ref: ImageSet, seed: int, pp_steps: int, ft_steps: int) -> float:
    """Test-free accuracy of `arch` after transfer's pp at the given budget."""
    base = dict(source=BUNDLE, target=EXAMPLE_TARGET, labels_per_class=4, seed=seed)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "arch.json").write_text(json.dumps(arch))
        cfg = TransferConfig(**base, method="pp", arch=str(Path(tmp) / "arch.json"), eval_every=10**6,
                             checkpoint_every=10**6, pretrain_steps=pp_steps, finetune_steps=ft_steps)
        run_transfer(cfg, Path(tmp) / "run", progress=False)
        ck = torch.load(Path(tmp) / "run" / "model.pt", weights_only=True)
    model = create_model(arch, len(ref.classes), 1)
    model.load_state_dict(ck["state_dict"])
    return evaluate(model, ref)["accuracy"]


def measure(arch: dict, data: dict[str, ProxyData], proxies: dict[str, SearchConfig], ref: ImageSet,
            args: argparse.Namespace) -> dict:
    model = create_model(arch, len(ref.classes), 1)
    costs = count_costs(model, (1, 28, 28))
    labelled = data["cv"].labelled
    row: dict = {"arch": arch, "macs": costs.macs, "params": sum(p.numel() for p in model.parameters()),
                 "init_probe": label_probe_soft(features(model, labelled.x), labelled.y, len(ref.classes))}
    for name, cfg in proxies.items():
        r = evaluate_arch(arch, data[name], cfg.proxy, seed=args.seed)
        row[name], row[f"{name}_s"] = r["accuracy"], r["train_s"]
        if name == "cv":  # the PP-only scores come from the same PP run
            row["pp_probe"], row["pp_source"] = r["pp_probe"], r["pp_source"]
    t = time.perf_counter()
    row["reference_seeds"] = [reference(arch, ref, s, args.pp_steps, args.ft_steps) for s in range(args.ref_seeds)]
    row["reference"] = sum(row["reference_seeds"]) / len(row["reference_seeds"])
    row["transfer_s"] = time.perf_counter() - t
    return row


# proxy -> labels per class it reads, beyond none (k: the training labels)
PROXIES = {"cv": "k", "pp_probe": "k", "init_probe": "k", "pp_source": "0", "val20": "k + 20", "macs": "0",
           "params": "0"}


def table(rows: list[dict]) -> dict[str, Any]:
    ref_acc = [r["reference"] for r in rows]
    print(f"\n| proxy | labels per class | Kendall tau vs reference ({len(rows)} archs) | p | mean proxy s |")
    print("|---|---:|---:|---:|---:|")
    out: dict[str, Any] = {}
    for name, labels in PROXIES.items():
        tau, p = kendalltau([r[name] for r in rows], ref_acc)
        out[name] = {"tau": tau, "p": p}
        secs = {"cv": "cv_s", "pp_probe": "cv_s", "pp_source": "cv_s", "val20": "val20_s"}.get(name)
        cost = f"{sum(r[secs] for r in rows) / len(rows):.1f}" if secs else "0"
        print(f"| {name} | {labels} | {tau:.3f} | {p:.3f} | {cost} |")
    # Is a proxy's ranking error tied to size? Spearman of (rank by reference - rank by proxy) against MACs and
    # parameters: positive where the proxy under-rates the larger networks (search/report.py's tie rule).
    print("\n| proxy | its rank error vs MACs (Spearman, p) | vs parameters |\n|---|---:|---:|")
    for name in ("val20", "cv", "pp_probe", "pp_source", "init_probe"):
        err = rankdata(ref_acc) - rankdata([r[name] for r in rows])
        by = {k: spearmanr(err, [r[k] for r in rows]) for k in ("macs", "params")}
        out[name]["rank_error_vs"] = {k: {"rho": v[0], "p": v[1]} for k, v in by.items()}
        print(f"| {name} | " + " | ".join(f"{by[k][0]:+.2f} ({by[k][1]:.3f})" for k in ("macs", "params")) + " |")
    seeds = len(rows[0]["reference_seeds"])
    pairs = [kendalltau([r["reference_seeds"][a] for r in rows], [r["reference_seeds"][b] for r in rows])[0]
             for a in range(seeds) for b in range(a + 1, seeds)]
    if pairs:
        out["reference_seed_vs_seed"] = sum(pairs) / len(pairs)
        print(f"\none reference seed against another: Kendall tau {out['reference_seed_vs_seed']:.3f} "
              f"(mean of {len(pairs)} pairs); reference accuracy {min(ref_acc):.3f}-{max(ref_acc):.3f}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-macs", type=float, default=4e6, help="sample only architectures up to this many MACs")
    defaults = TransferConfig(target="x")  # the CLI's default budget
    ap.add_argument("--pp-steps", type=int, default=defaults.pretrain_steps, help="transfer's PP steps")
    ap.add_argument("--ft-steps", type=int, default=defaults.finetune_steps, help="transfer's target steps")
    ap.add_argument("--ref-seeds", type=int, default=3, help="transfer seeds the reference averages")
    ap.add_argument("--ref-per-class", type=int, default=150, help="labelled reference images per class")
    ap.add_argument("--json", type=Path, default=None, help="write the rows here as they finish")
    ap.add_argument("--reuse", type=Path, nargs="*", default=[], help="rows already measured (--json files of this "
                                                                     "script, e.g. one per shard)")
    ap.add_argument("--shard", default="0/1", help="I/N: measure only every N-th architecture from the I-th (to run "
                                                   "N processes side by side; --reuse their files for the table)")
    args = ap.parse_args()
    shard, shards = map(int, args.shard.split("/"))
    torch.set_num_threads(args.threads)
    space, rng = SpaceConfig(), random.Random(args.seed)
    archs: list[dict] = []
    while len(archs) < args.archs:  # the part of the space a latency budget keeps (about 0.3 ms)
        arch = to_arch(random_sample(space, rng), space)
        if count_costs(create_model(arch, 5, 1), (1, 28, 28)).macs <= args.max_macs:
            archs.append(arch)
    base = dict(source=BUNDLE, target=EXAMPLE_TARGET, labels_per_class=4, seed=args.seed)
    proxies = {"cv": SearchConfig(**base, val_per_class=0), "val20": SearchConfig(**base, val_per_class=20)}
    data = {name: prepare(cfg) for name, cfg in proxies.items()}
    ref = reference_split(args.seed, 4, args.ref_per_class, list(range(args.ref_seeds)))
    done = [r for f in args.reuse for r in json.loads(f.read_text())["rows"]]
    rows: list[dict] = []
    for i, arch in enumerate(archs):
        if i % shards != shard:
            continue
        row = next((r for r in done if r["arch"] == arch and len(r["reference_seeds"]) == args.ref_seeds), None)
        row = row or measure(arch, data, proxies, ref, args)
        rows.append(row)
        print(f"{i + 1}/{len(archs)}: " + "  ".join(f"{n} {row[n]:.3g}" for n in PROXIES)
              + f"  reference {row['reference']:.3f} {[round(a, 3) for a in row['reference_seeds']]}"
              f"  ({row['cv_s']:.0f} + {row['val20_s']:.0f} + {row['transfer_s']:.0f} s)", flush=True)
        if args.json:
            atomic_write_text(args.json, json.dumps({"rows": rows}, indent=2, default=str))
    if shards > 1:
        return  # one shard's rows: the table is made over all of them (--reuse every shard's file)
    out = {"rows": rows, "tau": table(rows), "reference_per_class": len(ref) // len(ref.classes)}
    if args.json:
        atomic_write_text(args.json, json.dumps(out, indent=2, default=str))


if __name__ == "__main__":
    main()
