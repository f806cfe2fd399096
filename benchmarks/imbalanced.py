"""Real unlabelled images whose classes are not equally many: the device's images rarely are.

    python benchmarks/imbalanced.py --cache DIR     # example and other classes, seeds 0-2, every row (about 70 minutes)
    python benchmarks/imbalanced.py --cache DIR --pairings "two classes" "two of the example's"   # two classes

For each (pairing, seed) the unlabelled images are the training pool less its labels, as `--unlabeled rest` gives,
but with the first class in full and every other class cut to `--share` of its images (0.1: about 720 against 72
each, 1,000 in all), written as an .npz and read as a user's would be. The same runs with a pool of the same size
and equal classes are the control of pool size. Rows: auto without unlabelled images, and auto with them, the
propagated labels weighed (`pssl.lp_balance`) with Iscen et al.'s class balance (each class the same total weight,
as if the images held every class equally), toward the class shares the model predicts over the images, or by
certainty alone; and the default without its way back (`auto.uneven_shares 0`), which shows what the way back keeps
from happening and, with `--share`, where it fires (each run records the warm start's predicted shares and the way
back's measure of them); and the whole pool less its labels, alone, with as many images of the dataset's other
classes, and with scikit-learn's digits (for the digits target, `other dataset`, the animals the example leaves
out; a device sees more than its classes), each also with every image kept (`pssl.lp_reach 0`: what the default
leaves out, kept) and with the fixed limit alone (`pssl.lp_reach_gap 0`). Accuracy is given over equal classes (the
split as it is) and with each class's accuracy weighed by its share of the skewed pool: where the unlabelled images
are the device's own, their classes come as the device will see them. Validation accuracy chooses; test only reports.
The result: docs/transfer.md ("Unlabelled images whose classes are not equally many").
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgeppt.data import load_dataset
from edgeppt.models import create_model
from edgeppt.train.evaluate import evaluate
from edgeppt.transfer import run_transfer
from edgeppt.transfer.run import prepare_splits
from edgeppt.transfer.ssl import commonest_over_others

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.transfer import PAIRINGS, config, write_pairing  # noqa: E402

BALANCE = {"class-balanced labels": "equal", "labels balanced as predicted": "predicted",
           "labels by certainty": "none"}  # pssl.lp_balance
POOLS = {"equal classes": "equal", "one class in full": "skewed"}
NO_WAY_BACK = "auto, one class in full, class-balanced labels, no way back"
# row -> (unlabelled pool, pssl settings, auto settings)
ROWS: dict[str, tuple[str | None, dict[str, Any], dict[str, Any]]] = {
    "auto, no unlabelled images": (None, {}, {})} | {
    f"auto, {pool}, {how}": (kind, {"lp_balance": balance}, {}) for pool, kind in POOLS.items()
    for how, balance in BALANCE.items()} | {
    # what the default's way back keeps from happening: the skew's cost, where it fires and where it does not
    NO_WAY_BACK: ("skewed", {}, {"uneven_shares": 0.0}),
    # A device sees more than its classes: the whole pool less its labels, alone and with as many images of the
    # dataset's other classes (images no label covers)
    "auto, the rest": ("rest", {}, {}),
    "auto, the rest and as many images of other classes": ("outsiders", {}, {}),
    # the least certain half of the propagated labels left out (pssl.lp_drop), where the outsiders gather
    "auto, the rest, least certain half left out": ("rest", {"lp_drop": 0.5}, {}),
    "auto, the rest and as many images of other classes, least certain half left out": ("outsiders",
                                                                                         {"lp_drop": 0.5}, {}),
    # ... and with images of another dataset (scikit-learn's 1,797 digits: a third of the pool), which look like
    # nothing of the target's
    "auto, the rest and the digits": ("digits", {}, {})} | {
    # each pool as before pssl.lp_reach: the images little label mass reaches kept too
    f"{row}, every image kept": (kind, {"lp_reach": 0.0}, {}) for row, kind in (
        ("auto, the rest", "rest"), ("auto, the rest and as many images of other classes", "outsiders"),
        ("auto, the rest and the digits", "digits"))} | {
    # ... and with the fixed limit alone (pssl.lp_reach_gap 0)
    f"{row}, no gap": (kind, {"lp_reach_gap": 0.0}, {}) for row, kind in (
        ("auto, the rest", "rest"), ("auto, the rest and the digits", "digits"))}

def pool_index(y: np.ndarray, share: float, kind: str) -> np.ndarray:
    """`skewed`: the first class in full, the others at `share`; `equal`: as many images, equally from each class."""
    k = int(y.max()) + 1
    if kind == "skewed":
        keep = [len(np.flatnonzero(y == c)) if c == 0 else int(share * (y == c).sum()) for c in range(k)]
    else:
        total = len(np.flatnonzero(y == 0)) + sum(int(share * (y == c).sum()) for c in range(1, k))
        keep = [total // k] * k
    return np.concatenate([np.flatnonzero(y == c)[:keep[c]] for c in range(k)])


def outsiders(pairing: str, n: int) -> torch.Tensor:
    """`n` images of the target dataset's classes that are not the pairing's, in a fixed random order."""
    _, spec, transform, _ = PAIRINGS[pairing]
    name, _, classes = spec.partition(":")
    if transform is not None or not classes:
        raise SystemExit(f"{pairing!r}: images of other classes need a target that is a class subset, untransformed")
    others = [c for c in load_dataset(name, 28, 1).classes if c not in classes.split(",")]
    x = load_dataset(f"{name}:{','.join(others)}", 28, 1).x
    return x[torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:n]]


def digits(n: int) -> torch.Tensor:
    """The first `n` of scikit-learn's digits at 28 px (1,797 in all): images of another dataset, which look like
    nothing of the animals'."""
    return load_dataset("digits", 28, 1).x[:n]


def another_dataset(pairing: str, n: int) -> torch.Tensor:
    """`n` images of another dataset than the pairing's target: the digits, or for the digits target (`other
    dataset`) the animals of the classes the example leaves out."""
    return outsiders("example", n) if pairing == "other dataset" else digits(n)


def one(pairing: str, row: str, seed: int, share: float, cache: Path, work: Path) -> dict:
    torch.set_num_threads(1)
    kind, pssl, auto = ROWS[row]
    work = Path(tempfile.mkdtemp(dir=work))  # one folder per run: runs in parallel write their own files
    files = write_pairing(pairing, work)
    cfg = config(pairing, "auto", seed, {}, files, 4)
    update: dict = {"pssl": cfg.pssl.model_copy(update=pssl), "auto": cfg.auto.model_copy(update=auto)}
    _, _, rest, _ = prepare_splits(cfg, None)
    y = rest.y.numpy()
    skew = np.bincount(y[pool_index(y, share, "skewed")], minlength=len(rest.classes))
    skew = skew / skew.sum()  # the classes' shares where one class is most images (a device's, say)
    if kind is not None:
        path = work / "unlabelled.npz"
        x = rest.x if kind == "rest" else torch.cat([rest.x, outsiders(pairing, len(rest.x))]) \
            if kind == "outsiders" else torch.cat([rest.x, another_dataset(pairing, len(rest.x))]) if kind == "digits" \
            else rest.x[pool_index(y, share, kind)]
        np.savez(path, x=(x.numpy() * 255).round().astype(np.uint8))
        update["unlabeled"] = str(path)
    cfg = cfg.model_copy(update=update)
    out = work / "run"
    report = run_transfer(cfg, out, progress=False, pp_cache=cache)
    state = torch.load(out / "model.pt", weights_only=True)  # our own run's file
    model = create_model(state["arch"], len(state["classes"]), state["in_chans"])
    model.load_state_dict(state["state_dict"])
    val = list(evaluate(model, load_dataset(str(files["val"])))["per_class_accuracy"].values())
    test = list(report["per_class_accuracy"].values())
    shares = (report.get("unlabeled") or {}).get("predicted_shares")
    rec = {"pairing": pairing, "row": row, "seed": seed, "method": report["method"],
           "test": 100 * report["test_accuracy"], "val": 100 * float(np.mean(val)),
           # accuracy where the classes come as the skewed pool's do: each class's accuracy weighed by its share
           "test_skewed": 100 * float(np.dot(skew, test)), "val_skewed": 100 * float(np.dot(skew, val)),
           # the warm start's predicted shares of the pool, and the way back's measure of them (auto.uneven_shares)
           "predicted_shares": shares,
           "commonest_over_others": commonest_over_others(torch.tensor(list(shares.values()))) if shares else None,
           "went_back": report.get("uneven_shares") is not None,
           # the share of the unlabelled images pssl.lp_reach (and its gap) left out at the first propagation
           "unreached": ((report.get("unlabeled") or {}).get("unreached") or {}).get("share"),
           "per_class_val": val, "per_class_test": test}
    print(json.dumps({k: v for k, v in rec.items() if not k.startswith("per_class")}), flush=True)
    return rec


def _one(args: tuple) -> dict:
    return one(*args)


def paired(runs: list[dict], a: str, b: str, key: str) -> str:
    by = {(r["pairing"], r["row"], r["seed"]): r[key] for r in runs}
    d = [by[(p, a, s)] - by[(p, b, s)] for (p, r, s) in by if r == a and (p, b, s) in by]
    return f"{statistics.mean(d):+.2f} ± {statistics.stdev(d):.2f} ({sum(x > 0 for x in d)} up, " \
           f"{sum(x < 0 for x in d)} down)" if len(d) > 1 else "n/a"


LIMITS = (2.2, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0, float("inf"))


def fit_limit(files: list[Path]) -> None:
    """auto.uneven_shares on validation: over the skewed pools of `files` (runs of the row without the way back
    beside auto without unlabelled images), what auto would gain over the labels-only model at each limit (where the
    run's measure passes the limit it goes back: +0)."""
    pairs = []
    for f in files:  # paired within a file: its share weighs the labels-only run's classes too
        runs = json.loads(f.read_text())["runs"]
        alone = {(r["pairing"], r["seed"]): r for r in runs if r["row"] == "auto, no unlabelled images"}
        pairs += [(r, alone[(r["pairing"], r["seed"])]) for r in runs if r["row"] == NO_WAY_BACK]
    print(f"\n{len(pairs)} skewed pools: validation gain over auto without unlabelled images, mean over the runs:\n"
          "| auto.uneven_shares | goes back on | equal classes | as the pool | both |\n|---|---:|---:|---:|---:|")
    for limit in LIMITS:
        gain = [(0.0, 0.0) if r["commonest_over_others"] > limit else
                (r["val"] - b["val"], r["val_skewed"] - b["val_skewed"]) for r, b in pairs]
        eq, pool = statistics.mean(g[0] for g in gain), statistics.mean(g[1] for g in gain)
        print(f"| {limit} | {sum(r['commonest_over_others'] > limit for r, _ in pairs)} | {eq:+.2f} | {pool:+.2f} | "
              f"{(eq + pool) / 2:+.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairings", nargs="+", default=["example", "other classes"])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--share", type=float, default=0.1, help="share kept of every class but the first")
    ap.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--cache", type=Path, default=None, help="shared with benchmarks/transfer.py's --cache")
    ap.add_argument("--reuse", type=Path, default=None, help="keep the runs of an earlier result; run the rest")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "imbalanced.json")
    ap.add_argument("--fit", type=Path, nargs="+", default=None,
                    help="only print auto.uneven_shares's fit over these results (the row without the way back)")
    args = ap.parse_args()
    if args.fit:
        fit_limit(args.fit)
        return
    with tempfile.TemporaryDirectory() as tmp:
        cache = args.cache or Path(tmp) / "cache"
        cache.mkdir(parents=True, exist_ok=True)
        kept = json.loads(args.reuse.read_text())["runs"] if args.reuse else []
        have = {(r["pairing"], r["row"], r["seed"]) for r in kept}
        tasks = [(p, r, s, args.share, cache, Path(tmp)) for s in range(args.seeds) for p in args.pairings
                 for r in args.rows if (p, r, s) not in have]
        with ProcessPoolExecutor(args.jobs) as ex:
            runs = [r for r in kept if r["row"] in args.rows] + list(ex.map(_one, tasks))
    for key, what in (("val", "equal classes"), ("val_skewed", "classes as the skewed pool's")):
        print(f"\nValidation accuracy %, {what}:\n| row | " + " | ".join(args.pairings) + " | mean |\n|---|"
              + "---:|" * (len(args.pairings) + 1))
        for r in args.rows:
            means = [statistics.mean(x[key] for x in runs if x["row"] == r and x["pairing"] == p)
                     for p in args.pairings]
            print(f"| {r} | " + " | ".join(f"{m:.1f}" for m in means) + f" | {statistics.mean(means):.1f} |")
        for r in args.rows:
            for base in ("auto, no unlabelled images", "auto, one class in full, class-balanced labels"):
                if r != base and base in args.rows and "full" in r:
                    print(f"{r} - {base}: validation {paired(runs, r, base, key)}, "
                          f"test {paired(runs, r, base, key.replace('val', 'test'))}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"share": args.share, "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
