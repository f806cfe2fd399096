"""Which INT8 recipe, if any, makes a model faster than float32 in onnxruntime on this host: every node quantized,
depthwise convolutions kept in float, only the 1x1 convolutions and the classifier quantized, and QOperator
against QDQ with per-channel or per-tensor weights. Batch 1, one thread, interleaved rounds (the best of 3).

    python benchmarks/int8_recipes.py runs/demo/export/bundle/model.onnx [--threads 1] [--json out.json]

Calibration uses random images: scales change accuracy, not the speed of the kernels.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

from edgeppt.int8 import QuantConfig, _Reader, preprocess, quantize_int8
from edgeppt.ort_timing import time_session


def _group(node: onnx.NodeProto) -> int:
    return next((a.i for a in node.attribute if a.name == "group"), 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("onnx", type=Path)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="int8-recipes-"))
    pre = preprocess(args.onnx, tmp / "pre.onnx")
    graph = onnx.load(str(pre)).graph
    shape = [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim][1:]
    convs = [n for n in graph.node if n.op_type == "Conv"]
    depthwise = [n.name for n in convs if _group(n) > 1]
    pointwise = [n.name for n in convs if _group(n) == 1 and all(
        d == 1 for a in n.attribute if a.name == "kernel_shape" for d in a.ints)]
    keep_float = [n.name for n in graph.node if n.name not in pointwise and n.op_type != "Gemm"]
    calib = np.random.default_rng(0).random((64, *shape), dtype=np.float32)
    paths: dict[str, Path] = {"float32": pre}
    x86 = QuantConfig(symmetric_activations=False)  # the x86-cpu profile's recipe: asymmetric u8 activations
    for name, cfg in (("int8 QDQ, every node (the x86-cpu recipe)", x86),
                      ("int8 QDQ, depthwise convolutions in float", replace(x86, float_nodes=tuple(depthwise))),
                      ("int8 QDQ, only 1x1 convolutions and Gemm", replace(x86, float_nodes=tuple(keep_float)))):
        paths[name] = quantize_int8(pre, tmp / f"{len(paths)}.onnx", calib, cfg)
    for fmt_name, fmt in (("QOperator", QuantFormat.QOperator), ("QDQ", QuantFormat.QDQ)):
        for per_channel in (True, False):
            name = f"int8 {fmt_name}, {'per-channel' if per_channel else 'per-tensor'} weights, onnxruntime defaults"
            paths[name] = tmp / f"{len(paths)}.onnx"
            quantize_static(str(pre), str(paths[name]), _Reader(graph.input[0].name, calib, 1), quant_format=fmt,
                            per_channel=per_channel, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax)
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads, so.log_severity_level = args.threads, 1, 3
    sessions = {k: ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"]) for k, p in paths.items()}
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(args.rounds):
        for k, s in sessions.items():
            times[k].append(time_session(s, shape, 1, 200, 20, 5.0)["median_ms"])
    best = {k: min(v) for k, v in times.items()}
    print(f"{len(graph.node)} nodes, {len(convs)} convolutions ({len(depthwise)} depthwise, {len(pointwise)} 1x1); "
          f"{args.threads} thread(s)\n")
    print("| recipe | batch-1 median ms | vs float32 |\n|---|---:|---:|")
    for k, ms in best.items():
        print(f"| {k} | {ms:.3f} | {best['float32'] / ms:.2f}x |")
    if args.json:
        args.json.write_text(json.dumps({"model": str(args.onnx), "threads": args.threads, "ms": best}, indent=1))


if __name__ == "__main__":
    main()
