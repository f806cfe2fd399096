"""Demo benchmark: `edgeppt demo` (the built-in example, search -> transfer -> export) timed per stage.

    python benchmarks/demo.py           # the demo budget; target <= 15 min on 2 cores
    python benchmarks/demo.py --budget tiny                           # the one-minute smoke budget

Runs the pipeline into a fresh run directory, then once more unchanged (every stage cached), and prints a Markdown
table of wall time per stage with what each stage did. Raw numbers go to benchmarks/results/demo.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from edgeppt.pipeline.example import example_config
from edgeppt.pipeline.runner import run_pipeline

ROOT = Path(__file__).resolve().parents[1]

TARGET_S = 15 * 60


def describe(name: str, summary: dict, cfg) -> str:
    if name == "search":
        best = summary.get("best", {})
        return (f"{summary.get('trained')} trained, {summary.get('rejected')} rejected; best proxy acc "
                f"{100 * best.get('proxy_accuracy', 0):.1f}% at {best.get('latency_ms', 0):.3f} ms")
    if name == "transfer":
        t = cfg.transfer
        return (f"{t.method}, {t.pretrain_steps} PP + {t.finetune_steps} target steps; test acc "
                f"{100 * summary.get('test_accuracy', 0):.1f}%, {summary.get('params', 0):,} params")
    if name == "export":
        return f"formats {', '.join(summary.get('formats', []))}"
    return ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", default="demo")
    ap.add_argument("--out", type=Path, default=None, help="run directory (default: a fresh temporary one)")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "demo.json")
    args = ap.parse_args()

    cfg = example_config(args.budget)
    run = args.out or Path(tempfile.mkdtemp(prefix="edgeppt-demo-"))
    cpu: dict[str, float] = {}  # CPU seconds (user + system, this process and its children) per stage

    def log(s: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {s}", file=sys.stderr, flush=True)
        name, _, what = s.partition(": ")
        t = os.times()
        used = t.user + t.system + t.children_user + t.children_system
        if what.startswith(("running", "resuming")):
            cpu[name] = -used
        elif what.startswith("done") and name in cpu:
            cpu[name] += used

    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    state = json.loads(json.dumps(run_pipeline(cfg, run, progress=False, log=log)))  # a copy: the re-run updates it
    total = time.perf_counter() - t0
    t1 = time.perf_counter()
    again = run_pipeline(cfg, run, progress=False, log=log)
    cached = time.perf_counter() - t1
    rerun = [n for n, s in again["stages"].items() if s["finished"] != state["stages"][n]["finished"]]
    assert not rerun, f"an unchanged re-run ran {rerun} again"

    rows = []
    for name, s in state["stages"].items():
        rows.append({"stage": name, "seconds": s["seconds"], "cpu_s": cpu.get(name),
                     "what": describe(name, s.get("summary") or {}, cfg)})
    stages_s = sum(r["seconds"] for r in rows)
    load = (load_before + os.getloadavg()[0]) / 2
    print(f"\n`edgeppt demo` (budget {args.budget}) on {os.cpu_count()} CPU cores "
          f"({platform.machine()}); 1-minute load average about {load:.1f} (start/end mean)\n")
    print("| stage | wall time | CPU time | share of wall | what it did |")
    print("|---|---:|---:|---:|---|")
    for r in rows:
        c = f"{r['cpu_s']:.0f} s" if r["cpu_s"] is not None else "-"
        print(f"| {r['stage']} | {r['seconds'] / 60:.1f} min ({r['seconds']:.0f} s) | {c} | "
              f"{100 * r['seconds'] / total:.0f}% | {r['what']} |")
    other = total - stages_s
    print(f"| report and bookkeeping | {other:.0f} s | | {100 * other / total:.0f}% | "
          "sample grids, curves, confusion matrix |")
    print(f"| **end to end** | **{total / 60:.1f} min ({total:.0f} s)** | | 100% | target <= {TARGET_S // 60} min: "
          f"**{'met' if total <= TARGET_S else 'NOT met'}** |")
    print(f"| re-run, nothing changed | {cached:.1f} s | | | every stage skipped by its input hash |")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"budget": args.budget, "total_s": total, "cached_rerun_s": cached, "stages": rows,
                                     "load_average": load,
                                     "cpu_count": os.cpu_count(), "run": str(run)}, indent=2) + "\n")


if __name__ == "__main__":
    main()
