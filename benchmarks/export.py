"""PyTorch eager vs ONNX Runtime FP32 vs ONNX Runtime INT8 on this host, for trained runs.

For each run: median and p90 latency at batch 1, throughput at batch 32, test accuracy; INT8 calibrated from
target images and, data-free, from source-generator samples (needs the source bundle); plus the TensorRT-ready
symmetric INT8 recipe run by onnxruntime on this CPU. Everything is measured in one process, one after the other,
so the ratios compare like with like on a shared machine.

    python benchmarks/export.py runs/export-small runs/export-large \
        --source bundles/animals-src --threads 1
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from edgeppt.devices import load_profile
from edgeppt.export import quantize as Q
from edgeppt.export import runner
from edgeppt.export.exporter import GUARD_IMAGES, split_guard, target_images
from edgeppt.export.floor import host_peak
from edgeppt.export.onnx_export import export_onnx, load_run, run_data, torch_logits
from edgeppt.macs import onnx_macs


def _times_ms(fn: Callable[[], object], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


def measure(calls: dict[str, tuple[Callable[[], object], Callable[[], object]]], runs: int,
            rounds: int = 5) -> dict[str, dict[str, float]]:
    """Batch-1 latency and batch-32 throughput of every variant, interleaved in `rounds` passes so that load
    from other processes on a shared machine falls on all variants alike (ratios stay honest)."""
    b1: dict[str, list[float]] = {k: [] for k in calls}
    b32: dict[str, list[float]] = {k: [] for k in calls}
    for one, batch in calls.values():  # warm-up
        _times_ms(one, 5)
        _times_ms(batch, 2)
    for _ in range(rounds):
        for k, (one, batch) in calls.items():
            b1[k] += _times_ms(one, max(1, runs // rounds))
            b32[k] += _times_ms(batch, max(2, runs // (4 * rounds)))
    return {k: {"median_ms": float(np.median(b1[k])), "p90_ms": float(np.percentile(b1[k], 90)),
                "throughput_ips": float(32 * 1000 / np.median(b32[k]))} for k in calls}


def torch_calls(model: torch.nn.Module, shape: tuple[int, ...]):
    x1, x32 = torch.rand(1, *shape), torch.rand(32, *shape)

    def run(x):
        with torch.inference_mode():
            return model(x)
    return (lambda: run(x1)), (lambda: run(x32))


def ort_calls(path: Path, shape: tuple[int, ...], threads: int):
    s = runner.make_session(path, threads, "cpu")
    rng = np.random.default_rng(0)
    x1, x32 = rng.random((1, *shape), dtype=np.float32), rng.random((32, *shape), dtype=np.float32)
    return (lambda: s.run(None, {"input": x1})), (lambda: s.run(None, {"input": x32}))


def bench_run(run_dir: str, source: str | None, threads: int, runs: int, calib_n: int) -> list[dict]:
    run = load_run(run_dir)
    labelled, test = run_data(run)
    x, y = test.x.numpy(), test.y.numpy()
    shape = run.input_shape
    name = f"{Path(run_dir).name} ({run.checkpoint['arch']['family']} {run.checkpoint.get('params', 0):,} params)"
    rows: list[dict] = []
    torch.set_num_threads(threads)
    model = run.model.eval()
    calls = {"PyTorch eager fp32": torch_calls(model, shape)}
    acc = float((torch_logits(model, test.x).argmax(1) == y).mean())
    rows.append({"model": name, "variant": "PyTorch eager fp32", "accuracy": acc})
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_onnx(model, Path(tmp) / "m.onnx", shape, dynamic_batch=True)
        fp32_acc = Q.accuracy(fp32, x, y)
        calls["ONNX Runtime fp32"] = ort_calls(fp32, shape, threads)
        rows.append({"model": name, "variant": "ONNX Runtime fp32", "accuracy": fp32_acc})
        x86 = load_profile("x86-cpu").export.symmetric_activations  # what `edgeppt export --device x86-cpu` does
        variants = [("ONNX Runtime int8, target calibration (x86-cpu recipe)", "target", x86)]
        if source:
            variants.append(("ONNX Runtime int8, pseudo-sample calibration (x86-cpu recipe)", "pseudo", x86))
        variants.append(("ONNX Runtime int8, target calibration (TensorRT recipe: symmetric s8)", "target", True))
        for label, mode, symmetric in variants:
            if mode == "target":  # as the export does: calibration and guard images, both outside the test split
                pool = Q.check_calibration(Q.subsample(target_images(run, None, x)[0], calib_n + GUARD_IMAGES, 0),
                                           shape)
            else:
                from edgeppt.bundle import load_bundle
                assert source is not None  # the pseudo-sample variant is listed only with a source
                pool, _ = Q.pseudo_calibration(load_bundle(source), labelled.x, calib_n + GUARD_IMAGES, shape)
            calib, guard_x, _ = split_guard(pool, calib_n)
            out = Path(tmp) / f"q{len(rows)}.onnx"
            g = Q.quantize_guarded(fp32, out, calib, guard_x, Q.QuantConfig(symmetric_activations=symmetric), 1.0,
                                   "host")
            calls[label] = ort_calls(out, shape, threads)
            rows.append({"model": name, "variant": label, "accuracy": Q.accuracy(out, x, y),
                         "recipe": g.chosen["recipe"], "attempts": len(g.attempts)})
        macs = onnx_macs(fp32)
        timings = measure(calls, runs)
    peak = host_peak(threads)["peak_gmacs"]  # this host's float32 arithmetic, measured in the same run
    for r in rows:
        r.update(timings[r["variant"]])
        r["macs"], r["peak_gmacs"] = macs, peak
        r["b1_floor_pct"] = 100 * macs / (peak * 1e9) * 1000 / r["median_ms"]
        r["b32_floor_pct"] = 100 * macs * r["throughput_ips"] / (peak * 1e9)
    for r in rows:
        r["drop_points"] = 100 * (fp32_acc - r["accuracy"])
    return rows


def markdown(rows: list[dict]) -> str:
    out = ["| model | variant | b1 median ms | b1 p90 ms | b32 img/s | b32 vs ORT fp32 | b1 / b32 floor % | test acc "
           "| drop vs fp32 (pts) | INT8 recipe kept |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        base = next(b for b in rows if b["model"] == r["model"] and b["variant"] == "ONNX Runtime fp32")
        out.append(f"| {r['model']} | {r['variant']} | {r['median_ms']:.3f} | {r['p90_ms']:.3f} "
                   f"| {r['throughput_ips']:.0f} | {r['throughput_ips'] / base['throughput_ips']:.2f}x "
                   f"| {r['b1_floor_pct']:.0f}% / {r['b32_floor_pct']:.0f}% "
                   f"| {100 * r['accuracy']:.2f}% | {r['drop_points']:+.2f} "
                   f"| {r.get('recipe', '-')} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="trained run directories (the example model, a larger one)")
    ap.add_argument("--source", default=None, help="source bundle for pseudo-sample calibration")
    ap.add_argument("--threads", type=int, default=1, help="threads for PyTorch and onnxruntime alike")
    ap.add_argument("--iters", type=int, default=200, help="timed batch-1 runs per variant (batch 32: a quarter), "
                    "interleaved over 5 rounds")
    ap.add_argument("--calibration-size", type=int, default=256)
    ap.add_argument("--json", default=None, help="also write the rows here")
    args = ap.parse_args()
    rows = [r for d in args.runs for r in bench_run(d, args.source, args.threads, args.iters, args.calibration_size)]
    print(markdown(rows))
    for name in dict.fromkeys(r["model"] for r in rows):
        r = next(x for x in rows if x["model"] == name)
        print(f"{name}: {r['macs'] / 1e6:.2f} M MACs; host float32 peak {r['peak_gmacs']:.1f} GMAC/s "
              f"({args.threads} thread(s)); floor % = MACs at that peak / measured time")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
