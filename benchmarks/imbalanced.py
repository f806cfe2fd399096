"""Real unlabelled images whose classes are not equally many: the device's images rarely are.

    python benchmarks/imbalanced.py --cache DIR          # example and other classes, seeds 0-2 (about 25 minutes)

For each (pairing, seed) the unlabelled images are the training pool less its labels, as `--unlabeled rest` gives,
but with the first class in full and every other class cut to `--share` of its images (0.1: about 720 against
72 each, 1,000 in all), written as an .npz and read as a user's would be. The same runs with a pool of the same
size and equal classes are the control of pool size. Rows: auto without unlabelled images, and auto with them,
the propagated labels weighed (`pssl.lp_balance`) with Iscen et al.'s class balance (each class the same total
weight, as if the images held every class equally), toward the class shares the model predicts over the images,
or by certainty alone. Validation accuracy chooses; test
(balanced, as the benchmark's other tables) only reports. The result: docs/transfer.md ("Unlabelled images
whose classes are not equally many").
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from edgeppt.data import load_dataset
from edgeppt.models import create_model
from edgeppt.train.evaluate import evaluate
from edgeppt.transfer import run_transfer
from edgeppt.transfer.run import prepare_splits

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.transfer import config, write_pairing  # noqa: E402

BALANCE = {"class-balanced labels": "equal", "labels balanced as predicted": "predicted",
           "labels by certainty": "none"}  # pssl.lp_balance
POOLS = {"equal classes": "equal", "one class in full": "skewed"}
ROWS = {"auto, no unlabelled images": (None, {})} | {  # row -> (unlabelled pool, pssl settings)
    f"auto, {pool}, {how}": (kind, {"lp_balance": balance}) for pool, kind in POOLS.items()
    for how, balance in BALANCE.items()}


def pool_index(y: np.ndarray, share: float, kind: str) -> np.ndarray:
    """`skewed`: the first class in full, the others at `share`; `equal`: as many images, equally from each class."""
    k = int(y.max()) + 1
    if kind == "skewed":
        keep = [len(np.flatnonzero(y == c)) if c == 0 else int(share * (y == c).sum()) for c in range(k)]
    else:
        total = len(np.flatnonzero(y == 0)) + sum(int(share * (y == c).sum()) for c in range(1, k))
        keep = [total // k] * k
    return np.concatenate([np.flatnonzero(y == c)[:keep[c]] for c in range(k)])


def one(pairing: str, row: str, seed: int, share: float, cache: Path, work: Path) -> dict:
    torch.set_num_threads(1)
    kind, pssl = ROWS[row]
    work = Path(tempfile.mkdtemp(dir=work))  # one folder per run: runs in parallel write their own files
    files = write_pairing(pairing, work)
    cfg = config(pairing, "auto", seed, {}, files, 4)
    update: dict = {"pssl": cfg.pssl.model_copy(update=pssl)}
    if kind is not None:
        _, _, rest, _ = prepare_splits(cfg, None)
        idx = pool_index(rest.y.numpy(), share, kind)
        path = work / "unlabelled.npz"
        np.savez(path, x=(rest.x[idx].numpy() * 255).round().astype(np.uint8))
        update["unlabeled"] = str(path)
    cfg = cfg.model_copy(update=update)
    out = work / "run"
    report = run_transfer(cfg, out, progress=False, pp_cache=cache)
    state = torch.load(out / "model.pt", weights_only=True)  # our own run's file
    model = create_model(state["arch"], len(state["classes"]), state["in_chans"])
    model.load_state_dict(state["state_dict"])
    rec = {"pairing": pairing, "row": row, "seed": seed, "test": 100 * report["test_accuracy"],
           "val": 100 * evaluate(model, load_dataset(str(files["val"])))["accuracy"], "method": report["method"]}
    print(json.dumps(rec), flush=True)
    return rec


def _one(args: tuple) -> dict:
    return one(*args)


def paired(runs: list[dict], a: str, b: str, key: str) -> str:
    by = {(r["pairing"], r["row"], r["seed"]): r[key] for r in runs}
    d = [by[(p, a, s)] - by[(p, b, s)] for (p, r, s) in by if r == a and (p, b, s) in by]
    return f"{statistics.mean(d):+.2f} ± {statistics.stdev(d):.2f} ({sum(x > 0 for x in d)} up, " \
           f"{sum(x < 0 for x in d)} down)" if len(d) > 1 else "n/a"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairings", nargs="+", default=["example", "other classes"])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--share", type=float, default=0.1, help="share kept of every class but the first")
    ap.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--cache", type=Path, default=None, help="shared with benchmarks/transfer.py's --cache")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "imbalanced.json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cache = args.cache or Path(tmp) / "cache"
        cache.mkdir(parents=True, exist_ok=True)
        tasks = [(p, r, s, args.share, cache, Path(tmp)) for s in range(args.seeds) for p in args.pairings
                 for r in args.rows]
        with ProcessPoolExecutor(args.jobs) as ex:
            runs = list(ex.map(_one, tasks))
    print("| row | " + " | ".join(args.pairings) + " | mean |\n|---|" + "---:|" * (len(args.pairings) + 1))
    for r in args.rows:
        means = [statistics.mean(x["val"] for x in runs if x["row"] == r and x["pairing"] == p) for p in args.pairings]
        print(f"| {r} | " + " | ".join(f"{m:.1f}" for m in means) + f" | {statistics.mean(means):.1f} |")
    base = "auto, no unlabelled images"
    for r in args.rows:
        if r != base:
            print(f"{r} - {base}: validation {paired(runs, r, base, 'val')}, test {paired(runs, r, base, 'test')}")
    for pool in POOLS:
        for how in ("labels balanced as predicted", "labels by certainty"):
            a, b = f"auto, {pool}, {how}", f"auto, {pool}, class-balanced labels"
            if a in args.rows and b in args.rows:
                print(f"{pool}: {how} - class-balanced: validation {paired(runs, a, b, 'val')}, "
                      f"test {paired(runs, a, b, 'test')}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"share": args.share, "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
