"""PyTorch eager vs ONNX Runtime FP32 vs ONNX Runtime INT8 on this host, for trained runs.

For each run: median and p90 latency at batch 1, throughput at batch 32, test accuracy; INT8 calibrated from
target images and, data-free, from source-generator samples (needs the source bundle); plus the TensorRT-ready
symmetric INT8 recipe run by onnxruntime on this CPU. Everything is measured in one process, one after the other,
so the ratios compare like with like on a shared machine.

    python benchmarks/export.py runs/t1 runs/t1-large --source bundles/animals-src --threads 1
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from export import quantize as Q  # noqa: E402
from export import runner  # noqa: E402
from export.exporter import target_images  # noqa: E402
from export.onnx_export import export_onnx, load_run, run_data, torch_logits  # noqa: E402


def torch_latency(model: torch.nn.Module, shape: tuple[int, ...], batch: int, runs: int) -> dict[str, float]:
    x = torch.rand(batch, *shape)
    times = []
    with torch.inference_mode():
        for _ in range(5):
            model(x)
        for _ in range(runs):
            t = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t)
    ms = np.asarray(times) * 1000
    return {"median_ms": float(np.median(ms)), "p90_ms": float(np.percentile(ms, 90)),
            "throughput_ips": float(batch * 1000 / np.median(ms))}


def ort_row(path: Path, shape: tuple[int, ...], threads: int, runs: int) -> dict[str, float]:
    s = runner.make_session(path, threads, "cpu")
    b1 = runner.benchmark(s, list(shape), 1, runs, max_seconds=30)
    b32 = runner.benchmark(s, list(shape), 32, max(10, runs // 4), max_seconds=30)
    return {"median_ms": b1["median_ms"], "p90_ms": b1["p90_ms"], "throughput_ips": b32["throughput_ips"]}


def bench_run(run_dir: str, source: str | None, threads: int, runs: int, calib_n: int) -> list[dict]:
    run = load_run(run_dir)
    labelled, test = run_data(run)
    x, y = test.x.numpy(), test.y.numpy()
    shape = run.input_shape
    name = f"{Path(run_dir).name} ({run.checkpoint['arch']['family']} {run.checkpoint.get('params', 0):,} params)"
    rows = []
    torch.set_num_threads(threads)
    acc = float((torch_logits(run.model, test.x).argmax(1) == y).mean())
    t = torch_latency(run.model.eval(), shape, 1, runs)
    t32 = torch_latency(run.model.eval(), shape, 32, max(10, runs // 4))
    rows.append({"model": name, "variant": "PyTorch eager fp32", "accuracy": acc, "median_ms": t["median_ms"],
                 "p90_ms": t["p90_ms"], "throughput_ips": t32["throughput_ips"]})
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_onnx(run.model, Path(tmp) / "m.onnx", shape, dynamic_batch=True)
        fp32_acc = Q.accuracy(fp32, x, y)
        rows.append({"model": name, "variant": "ONNX Runtime fp32", "accuracy": fp32_acc, **ort_row(fp32, shape, threads, runs)})
        variants = [("ONNX Runtime int8, target calibration (x86 recipe: u8 activations)", "target", False)]
        if source:
            variants.append(("ONNX Runtime int8, pseudo-sample calibration (x86 recipe)", "pseudo", False))
        variants.append(("ONNX Runtime int8, target calibration (TensorRT recipe: symmetric s8)", "target", True))
        for label, mode, symmetric in variants:
            if mode == "target":
                calib = Q.check_calibration(Q.subsample(target_images(run, None), calib_n, 0), shape)
            else:
                from edgeppt.bundle import load_bundle
                calib, _ = Q.pseudo_calibration(load_bundle(source), labelled.x, calib_n, shape)
            out = Path(tmp) / f"q{len(rows)}.onnx"
            g = Q.quantize_guarded(fp32, out, calib, x, y, Q.QuantConfig(symmetric_activations=symmetric), 1.0, "host")
            rows.append({"model": name, "variant": label, "accuracy": g.int8_accuracy, "recipe": g.chosen["recipe"],
                         "attempts": len(g.attempts), **ort_row(out, shape, threads, runs)})
    for r in rows:
        r["drop_points"] = 100 * (fp32_acc - r["accuracy"])
    return rows


def markdown(rows: list[dict]) -> str:
    out = ["| model | variant | b1 median ms | b1 p90 ms | b32 img/s | b32 vs ORT fp32 | test acc | drop vs fp32 (pts) |",
           "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        base = next(b for b in rows if b["model"] == r["model"] and b["variant"] == "ONNX Runtime fp32")
        out.append(f"| {r['model']} | {r['variant']} | {r['median_ms']:.3f} | {r['p90_ms']:.3f} | {r['throughput_ips']:.0f} "
                   f"| {r['throughput_ips'] / base['throughput_ips']:.2f}x | {100 * r['accuracy']:.2f}% | {r['drop_points']:+.2f} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="trained run directories (the example model, a larger one)")
    ap.add_argument("--source", default=None, help="source bundle for pseudo-sample calibration")
    ap.add_argument("--threads", type=int, default=1, help="threads for PyTorch and onnxruntime alike")
    ap.add_argument("--iters", type=int, default=100, help="timed batch-1 runs (batch 32: a quarter)")
    ap.add_argument("--calibration-size", type=int, default=256)
    ap.add_argument("--json", default=None, help="also write the rows here")
    args = ap.parse_args()
    rows = [r for d in args.runs for r in bench_run(d, args.source, args.threads, args.iters, args.calibration_size)]
    print(markdown(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
