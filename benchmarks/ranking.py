"""How well the search's proxy ranks architectures: Kendall tau between each proxy's scores and the accuracy the
architectures reach when transfer trains them properly, over architectures sampled from the search space (the
part a latency budget keeps: up to --max-macs).

Proxies compared (both with the search's default PP budget):
- `cv`: k-fold cross-validation over the k training labels alone (the default: no label beyond k);
- `val20`: 20 extra labelled validation images per class (the former default: 6x the labels at k = 4).

The reference accuracy is measured on a labelled split of the target pool that is neither the training labels
nor the test split (the test split is not used here at all), after `edgeppt transfer --method pp` at the
default budget (the CLI's: `TransferConfig`'s PP and target steps; results/ranking.json was measured at 400 and
200, the default then).

    python benchmarks/ranking.py [--archs 12] [--seed 0] [--json benchmarks/results/ranking.json]
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
from scipy.stats import kendalltau

from edgeppt.config import SearchConfig, SpaceConfig, TransferConfig
from edgeppt.data import EXAMPLE_TARGET, few_shot, load_dataset, train_test_split
from edgeppt.models import create_model
from edgeppt.search.costs import count_costs
from edgeppt.search.proxy import evaluate_arch, prepare
from edgeppt.search.space import random_sample, to_arch
from edgeppt.train.evaluate import evaluate
from edgeppt.transfer import run_transfer

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "bundles" / "animals-src"


def reference_split(seed: int, k: int, per_class: int = 40):
    """Labelled images from the target pool outside the k training labels, outside val20's 20 per class (drawn
    exactly as search/proxy.py draws them) and outside the test split."""
    target = load_dataset(EXAMPLE_TARGET, 28, 1)
    train, _test = train_test_split(target, 0.2, seed=0)
    _, rest = few_shot(train, k, seed)
    _, rest = few_shot(rest, 20, seed + 1)
    ref, _ = few_shot(rest, per_class, seed + 2)
    return ref


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-macs", type=float, default=4e6, help="sample only architectures up to this many MACs")
    defaults = TransferConfig(target="x")  # the CLI's default budget
    ap.add_argument("--pp-steps", type=int, default=defaults.pretrain_steps, help="transfer's PP steps")
    ap.add_argument("--ft-steps", type=int, default=defaults.finetune_steps, help="transfer's target steps")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--skip", type=int, default=0, help="draw and skip this many architectures first (to finish "
                                                         "an interrupted run in parts)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    space, rng = SpaceConfig(), random.Random(args.seed)
    archs: list[dict] = []
    while len(archs) < args.skip + args.archs:  # the part of the space a latency budget keeps (about 0.3 ms)
        arch = to_arch(random_sample(space, rng), space)
        if count_costs(create_model(arch, 5, 1), (1, 28, 28)).macs <= args.max_macs:
            archs.append(arch)
    archs = archs[args.skip:]
    base = dict(source=BUNDLE, target=EXAMPLE_TARGET, labels_per_class=4, seed=args.seed)
    proxies = {"cv": SearchConfig(**base, val_per_class=0), "val20": SearchConfig(**base, val_per_class=20)}
    data = {name: prepare(cfg) for name, cfg in proxies.items()}
    ref = reference_split(args.seed, 4)
    rows = []
    for i, arch in enumerate(archs):
        row: dict = {"arch": arch}
        for name, cfg in proxies.items():
            r = evaluate_arch(arch, data[name], cfg.proxy, seed=args.seed)
            row[name], row[f"{name}_s"] = r["accuracy"], r["train_s"]
        t = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "arch.json").write_text(json.dumps(arch))
            tcfg = TransferConfig(**base, method="pp", arch=str(Path(tmp) / "arch.json"), eval_every=10**6,
                                  checkpoint_every=10**6, pretrain_steps=args.pp_steps, finetune_steps=args.ft_steps)
            run_transfer(tcfg, Path(tmp) / "run", progress=False)
            ck = torch.load(Path(tmp) / "run" / "model.pt", weights_only=True)
            model = create_model(arch, len(ref.classes), 1)
            model.load_state_dict(ck["state_dict"])
            row["reference"] = evaluate(model, ref)["accuracy"]
        row["transfer_s"] = time.perf_counter() - t
        rows.append(row)
        print(f"{i + 1}/{len(archs)}: cv {row['cv']:.3f}  val20 {row['val20']:.3f}  reference {row['reference']:.3f}"
              f"  ({row['cv_s']:.0f} + {row['val20_s']:.0f} + {row['transfer_s']:.0f} s)", flush=True)
    ref_acc = [r["reference"] for r in rows]
    print(f"\n| proxy | labels per class | Kendall tau vs reference ({len(rows)} archs) | p | mean proxy s |")
    print("|---|---:|---:|---:|---:|")
    out: dict[str, Any] = {"rows": rows, "tau": {}}
    for name, cfg in proxies.items():
        tau, p = kendalltau([r[name] for r in rows], ref_acc)
        out["tau"][name] = {"tau": tau, "p": p}
        secs = sum(r[f"{name}_s"] for r in rows) / len(rows)
        print(f"| {name} | {cfg.labels_per_class + cfg.val_per_class} | {tau:.3f} | {p:.3f} | {secs:.1f} |")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=str))


if __name__ == "__main__":
    main()
