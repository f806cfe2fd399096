"""How well the latency predictor of `edgeppt devices calibrate` predicts a device it was fitted on: the share of
held-out probe latencies predicted within +-10% (nn-Meter's figure), on this host as the device.

The probes are calibrate's own (`probe_archs`: the space's corners, the registered MobileNets, seeded random
samples), timed with calibrate's own device program (`time_remote`), run here with this Python instead of over
ssh. Every probe is timed in two passes: the second pass, set against the first, is the **noise floor** (how often
the same probe measures within +-10% of itself), which no predictor can beat. The predictor is scored by repeated
random splits (a quarter held out each time, as calibrate does), on the mean of the two passes.

    python benchmarks/predictor.py [--probes 48] [--splits 20] [--device x86-cpu] [--json out.json]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import numpy as np

from edgeppt.config import SpaceConfig
from edgeppt.devices import load_profile
from edgeppt.models import create_model
from edgeppt.runs import atomic_write_json
from edgeppt.search.calibrate import PROVIDERS, probe_archs, time_remote
from edgeppt.search.latency import to_onnx
from edgeppt.search.predictor import errors, fit, layer_features


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="x86-cpu", help="the profile whose threads and runtime the probes run with")
    ap.add_argument("--probes", type=int, default=48)
    ap.add_argument("--splits", type=int, default=20, help="random held-out splits to average over")
    ap.add_argument("--repeats", type=int, default=30, help="timed calls per probe and pass (calibrate's default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    profile = load_profile(args.device)
    in_shape = (profile.input_channels or 1, profile.input_size or 28, profile.input_size or 28)
    t0 = time.perf_counter()
    archs = probe_archs(SpaceConfig(), args.probes, args.seed)
    models = [create_model(a, 10, in_shape[0]) for a in archs]
    feats = [layer_features(m, in_shape) for m in models]
    onnx_models = [to_onnx(m, in_shape) for m in models]
    # fp32 probes, as the table in docs/search.md was measured (calibrate times the format a device ships)
    passes = [time_remote([sys.executable, "-"], onnx_models, list(in_shape), profile.threads,
                          PROVIDERS[profile.runtime], 10, args.repeats)["latency_ms"] for _ in range(2)]
    a, b = np.array(passes[0]), np.array(passes[1])
    lat = list((a + b) / 2)
    noise = np.abs(b - a) / a
    rng = random.Random(args.seed)
    n_test = max(2, round(args.probes / 4))
    held = []
    for _ in range(args.splits):
        order = list(range(args.probes))
        rng.shuffle(order)
        test, train = order[:n_test], order[n_test:]
        held.append(errors(fit([feats[i] for i in train], [lat[i] for i in train]),
                           [feats[i] for i in test], [lat[i] for i in test]))
    share = np.array([h["within_10pct"] for h in held])
    mape = np.array([h["mape_pct"] for h in held])
    worst = np.array([h["max_ape_pct"] for h in held])
    res = {
        "device": args.device, "threads": profile.threads, "probes": args.probes, "splits": args.splits,
        "held_out_per_split": n_test, "latency_ms_range": [float(min(lat)), float(max(lat))],
        "noise_floor_within_10pct": float(np.mean(noise <= 0.10)), "noise_mean_pct": float(100 * noise.mean()),
        "within_10pct_mean": float(share.mean()), "within_10pct_std": float(share.std()),
        "mape_pct_mean": float(mape.mean()), "max_ape_pct_mean": float(worst.mean()),
        "fit_on_all": errors(fit(feats, lat), feats, lat), "wall_s": time.perf_counter() - t0,
        "probes_timed": [{"arch": x, "pass_ms": [float(p), float(q)]} for x, p, q in zip(archs, a, b)],
    }
    print(f"{args.probes} probes on this host as {args.device} ({profile.threads} threads), "
          f"{min(lat):.3f}-{max(lat):.3f} ms, {res['wall_s']:.0f} s\n")
    print("| figure | value |\n|---|---:|")
    print(f"| noise floor: second pass within +-10% of the first | {100 * res['noise_floor_within_10pct']:.0f}% "
          f"(mean difference {res['noise_mean_pct']:.1f}%) |")
    print(f"| held-out probes predicted within +-10% ({args.splits} splits of {n_test}) | "
          f"{100 * share.mean():.0f}% ± {100 * share.std():.0f} |")
    print(f"| held-out mean / worst absolute error | {mape.mean():.1f}% / {worst.mean():.1f}% |")
    print(f"| fitted on all probes: within +-10% | {100 * res['fit_on_all']['within_10pct']:.0f}% |")
    if args.json:
        atomic_write_json(args.json, res)
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
