"""The search's artifacts: trials.json / trials.csv, pareto.png, best.json and summary.json (all atomic)."""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from pathlib import Path

from rich.console import Console

from edgeppt.errors import EdgepptError
from edgeppt.runs import atomic_write_bytes, atomic_write_json, atomic_write_text

from .record import BEST_FILE, SearchResult

console = Console(stderr=True)

COLUMNS = ["order", "trial", "status", "accuracy", "final_accuracy", "finalist", "pp_source", "pp_probe", "latency_ms",
           "latency_kind", "macs", "params", "peak_activation_kib", "train_s", "violations", "reference", "arch"]


def score(rec: dict) -> float:
    """A trained candidate's proxy accuracy: the mean over its seeds for a finalist, else its one run."""
    final = rec.get("final_accuracy")  # absent, or None in trials.json rows of non-finalists
    return rec["accuracy"] if final is None else final


def noise_margin(finals: list[dict]) -> float:
    """One standard error of the difference between two finalists' means, from the spread of their own seeds."""
    runs = [r["seed_accuracies"] for r in finals if len(r.get("seed_accuracies") or []) > 1]
    if not runs:
        return 0.0
    return math.sqrt(2 * statistics.mean(statistics.variance(a) for a in runs) / min(len(a) for a in runs))


def choose_best(trained: list[dict]) -> tuple[dict, str]:
    """(winner, why). Among the finalists whose mean is within `noise_margin` of the best mean, the one with the
    most MACs: the proxy's short training under-rates larger networks (its ranking error grows with MACs,
    docs/search.md), so where it cannot tell two finalists apart the larger is the better bet. Without
    finalists, the best single run (ties: the faster)."""
    finals = [r for r in trained if r.get("final_accuracy") is not None]
    if not finals:
        best = max(trained, key=lambda r: (score(r), -r["latency_ms"]))
        return best, "the best proxy accuracy (one seed each, no finalists)"
    top, margin = max(score(r) for r in finals), noise_margin(finals)
    near = [r for r in finals if score(r) >= top - margin - 1e-9]
    best = max(near, key=lambda r: (r["macs"], score(r), -r["latency_ms"]))
    if len(near) == 1:
        ref = " (the hand-designed reference among them)" if any(r.get("reference") for r in finals) else ""
        return best, f"the best proxy mean of {len(finals)} finalists{ref}"
    return best, (f"the most MACs of the {len(near)} finalists within one standard error ({margin:.3f}) of the best "
                  f"proxy mean ({top:.3f}); the proxy cannot tell them apart and under-rates larger networks")


def pareto_front(rows: list[dict]) -> list[dict]:
    """Trained candidates that no other is both faster and at least as accurate as (sorted by latency)."""
    front, best = [], -1.0
    for r in sorted(rows, key=lambda r: (r["latency_ms"], -score(r))):
        if score(r) > best:
            front.append(r)
            best = score(r)
    return front


def plot(rows: list[dict], rejected: list[dict], budget_ms: float | None, best: dict | None, path: Path,
         title: str) -> None:
    """Accuracy (finalists: the mean of their seeds, the bar spanning the seeds) against latency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    rejected = [r for r in rejected if r["latency_ms"] is not None]
    if rejected:
        ax.scatter([r["latency_ms"] for r in rejected], [0.0] * len(rejected), marker="x", c="0.6", s=14,
                   label=f"rejected before training ({len(rejected)})")
    single = [r for r in rows if "seed_accuracies" not in r]
    ax.scatter([r["latency_ms"] for r in single], [r["accuracy"] for r in single], c="tab:blue", s=18,
               label=f"trained, 1 proxy seed ({len(single)})")
    finals = [r for r in rows if "seed_accuracies" in r]
    if finals:
        lo = [score(r) - min(r["seed_accuracies"]) for r in finals]
        hi = [max(r["seed_accuracies"]) - score(r) for r in finals]
        ax.errorbar([r["latency_ms"] for r in finals], [score(r) for r in finals], yerr=[lo, hi], fmt="o",
                    c="tab:green", ms=5, capsize=3, label=f"finalists: mean and range of seeds ({len(finals)})")
    front = pareto_front(rows)
    xs = [r["latency_ms"] for r in front] + [max(r["latency_ms"] for r in rows)]
    ax.step(xs, [score(r) for r in front] + [score(front[-1])], where="post", c="tab:orange", label="Pareto front")
    for r in rows:
        if r.get("reference"):  # the hand-designed network, named where it sits
            ax.annotate(r["reference"], (r["latency_ms"], score(r)), xytext=(6, -10), textcoords="offset points",
                        fontsize=7)
    if best:
        ax.scatter([best["latency_ms"]], [score(best)], marker="*", s=160, c="tab:red", label="best", zorder=3)
    if budget_ms:
        ax.axvline(budget_ms, ls="--", c="k", lw=1, label=f"latency budget {budget_ms:g} ms")
    ax.set_xlabel("latency (ms, batch 1)")
    ax.set_ylabel("proxy validation accuracy")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def reference_summary(trained: list[dict], best: dict) -> dict | None:
    """The hand-designed reference beside the winner: how the search's pick compares with no search at all."""
    ref = next((r for r in trained if r.get("reference")), None)
    if ref is None:
        return None
    return {"name": ref["reference"], "proxy_accuracy": score(ref),
            "proxy_seed_accuracies": ref.get("seed_accuracies", [ref["accuracy"]]), "latency_ms": ref["latency_ms"],
            "macs": ref["macs"], "params": ref["params"], "chosen": ref["key"] == best["key"]}


def write_outputs(ctx, out: Path, smallest: dict, wall_s: float, source_classifier: dict | None = None) -> dict:
    records = sorted(ctx.ledger.records.values(), key=lambda r: r["order"])
    trained = [r for r in records if r.get("status") == "trained"]
    rejected = [r for r in records if r.get("status") == "rejected"]
    if not trained:
        raise EdgepptError(f"the search trained no candidate ({len(rejected)} rejected as over budget); "
                           "raise the budget or --trials")
    best, why = choose_best(trained)
    rows = [{k: r.get(k) for k in COLUMNS} for r in records]
    atomic_write_json(out / "trials.json", rows)
    buf = io.StringIO()
    w = csv.DictWriter(buf, COLUMNS)
    w.writeheader()
    for r in rows:
        w.writerow({**r, "arch": json.dumps(r["arch"]), "violations": "; ".join(r.get("violations") or [])})
    atomic_write_text(out / "trials.csv", buf.getvalue())
    budgets = ctx.cost.budgets.model_dump(exclude_none=True)
    costs = {k: best[k] for k in ("latency_ms", "latency_kind", "macs", "params", "peak_activation_kib")}
    proxy = {"proxy_accuracy": score(best), "proxy_seed_accuracies": best.get("seed_accuracies", [best["accuracy"]])}
    result = SearchResult.model_validate({**best["arch"], "search": {
        "device": ctx.profile.name, "budgets": budgets, **proxy, "costs": costs, "trial": best["trial"]}})
    atomic_write_json(out / BEST_FILE, result.model_dump(mode="json"))
    plot(trained, rejected, budgets.get("latency_ms"), best, out / "pareto.png",
         f"{ctx.profile.name}: {ctx.cfg.strategy} search, {len(ctx.ledger.trials())} trials"
         + (" and the hand-designed reference" if len(trained) > len(ctx.ledger.trials()) else ""))
    summary = {"device": ctx.profile.name, "strategy": ctx.cfg.strategy, "budgets": budgets,
               "trained": len(trained), "rejected": len(rejected), "best": {"arch": best["arch"], **proxy, **costs},
               "why": why, "reference": reference_summary(trained, best),
               "smallest_in_space": smallest, "source_classifier": source_classifier,
               "augment_notes": ctx.data.augment_notes,
               "train_s_total": sum(r.get("train_s", 0.0) for r in trained), "wall_s": wall_s,
               "files": {k: str(out / k) for k in (BEST_FILE, "trials.csv", "trials.json", "pareto.png")}}
    atomic_write_json(out / "summary.json", summary)
    if ctx.progress and source_classifier and "latency_ms" in source_classifier:
        sc = source_classifier
        verdict = f"fits the budgets; {sc['how']}" if sc["fits"] else \
            f"over budget ({', '.join(sc['violations'])})" if sc["fits"] is False else \
            f"within the budgets counted, {', '.join(sc.get('unknown', []))} not known for it; {sc['how']}"
        latency = f"{sc['latency_ms']:.3f} ms" if sc["latency_ms"] is not None else "latency"
        console.print(f"source classifier C: {latency} ({sc['latency_kind']}), "
                      f"{sc['macs'] / 1e6:.2f} M MACs, {sc['params']:,} params: {verdict}")
    return summary
