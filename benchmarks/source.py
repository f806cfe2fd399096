"""How fast a source bundle feeds training: G and C throughput in each runtime, and images/s of PP and P-SSL.

Rows, measured in one process one after the other (ratios compare like with like on a shared machine):
- G and C images/s in onnxruntime (the bundle format) and, with --legacy, in the torch.export programs of a
  version-1 bundle (loaded with trust: only pass your own files);
- pseudo pre-training images/s (G draws each batch, resnet_xs trains on it), P-SSL pool generation images/s,
  and P-SSL training images/s, from real `edgeppt transfer` runs on the built-in example.

    python benchmarks/source.py [--source bundles/animals-src] [--legacy old-v1-bundle] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

from edgeppt.bundle import load_bundle
from edgeppt.config import TransferConfig
from edgeppt.data import EXAMPLE_TARGET
from edgeppt.transfer.run import run_transfer


def rate(fn: Callable[[], object], images: int, seconds: float = 3.0) -> float:
    """Images per second of fn (which handles `images` images), after one warm-up call."""
    fn()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn()
        n += 1
    return n * images / (time.perf_counter() - t0)


def runtime_rows(bundles: list[str], device: str, batch: int, rounds: int = 3) -> list[dict]:
    """G and C images/s per bundle; the bundles take turns for `rounds` rounds and each keeps its best, so a
    burst of load on the machine hits every row alike."""
    calls: dict[tuple[str, str], Callable[[], object]] = {}
    for path in bundles:
        b = load_bundle(path, device, trust_code=True)  # --legacy: the user's own version-1 bundle
        g = torch.Generator().manual_seed(0)
        p = torch.softmax(torch.randn(batch, b.num_classes, generator=g), 1)
        x = b.generate(p, generator=g)
        calls[("G", b.manifest.runtime)] = partial(b.generate, p, generator=g)
        calls[("C", b.manifest.runtime)] = partial(b.classify, x)
    best = {k: 0.0 for k in calls}
    for _ in range(rounds):
        for k, fn in calls.items():
            best[k] = max(best[k], rate(fn, batch, seconds=1.5))
    return [{"part": part, "runtime": rt, "batch": batch, "images_per_s": v} for (part, rt), v in best.items()]


def training_rows(source: str, device: str, steps: int) -> list[dict]:
    cfg = TransferConfig(source=Path(source), target=EXAMPLE_TARGET, method="pp+pssl", arch="resnet_xs",
                         pretrain_steps=steps, finetune_steps=steps, eval_every=10**6, checkpoint_every=10**6,
                         device=device)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        report = run_transfer(cfg, Path(tmp) / "run", progress=False)
        total = time.perf_counter() - t0
    pool_rate = report["pseudo_samples"]["count"] / max(report["timings_s"]["pseudo_samples"], 1e-9)
    rows = [{"part": "PP (G draws, resnet_xs trains)", "images_per_s": report["images_per_s"]["pretrain"]},
            {"part": "P-SSL pool generation (C conditions, G draws, C scores)", "images_per_s": pool_rate}]
    rows += [{"part": f"target phase {k} (labelled + pseudo batches)", "images_per_s": v}
             for k, v in report["images_per_s"].items() if k != "pretrain"]
    print(f"(the pp+pssl run of {steps} + {steps} steps took {total:.0f} s in all)")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--source", default="bundles/animals-src")
    ap.add_argument("--legacy", default=None, help="a version-1 (.pt2) bundle to compare (loaded with trust)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = runtime_rows([args.source] + ([args.legacy] if args.legacy else []), args.device, args.batch)
    rows += training_rows(args.source, args.device, args.steps)
    print(f"| part | runtime | images/s ({args.device}, {args.threads} threads) |\n|---|---|---:|")
    for r in rows:
        print(f"| {r['part']} | {r.get('runtime', '')} | {r['images_per_s']:.0f} |")
    if args.json:
        args.json.write_text(json.dumps({"device": args.device, "threads": args.threads, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
