"""Which INT8 recipe, if any, makes a model faster than float32 in onnxruntime on this host: every node quantized
(with and without the stem's input channels padded to 4), depthwise convolutions kept in float, only the 1x1
convolutions and the classifier quantized, and QOperator against QDQ with per-channel or per-tensor weights.
Batch 1 (and `--batch N`), one thread, interleaved rounds (the best of 3).

    python benchmarks/int8_recipes.py runs/demo/export/bundle/model.onnx [--threads 1] [--batch 32] [--json out.json]
    python benchmarks/int8_recipes.py MODEL --batch 32 --layers     # where the time goes, layer by layer

`--layers` profiles the float32 graph and the x86-cpu int8 recipe with onnxruntime's own profiler (the kernels
onnxruntime runs after its graph optimisations: NCHWc convolutions in float32, QLinearConv in int8) and prints
each convolution's kernel time in both, and what the layout and quantize steps around them cost.

A model exported with a static batch of 1 (the export's default) is given a dynamic batch first: its input and
output batch dimensions become symbolic and a Reshape's leading 1 becomes -1 (inferred: the batch).

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


def dynamic_batch(src: Path, dst: Path) -> Path:
    """A copy of a static batch-1 graph whose batch dimension is symbolic (for throughput at batch N)."""
    model = onnx.load(str(src))
    for v in [*model.graph.input, *model.graph.output]:
        v.type.tensor_type.shape.dim[0].dim_param = "batch"
    del model.graph.value_info[:]  # re-inferred by onnxruntime
    inits = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Reshape" and node.input[1] in inits:
            shape = onnx.numpy_helper.to_array(inits[node.input[1]]).copy()
            if shape.size and shape[0] == 1 and -1 not in shape:
                shape[0] = -1  # inferred: the batch (the graph's Reshape may have allowzero, so not 0)
                inits[node.input[1]].CopyFrom(onnx.numpy_helper.from_array(shape, node.input[1]))
    onnx.save(model, str(dst))
    return dst


def _kind(group: int, kernel: list[int], cin: int) -> str:
    return "depthwise" if group > 1 else "1x1" if kernel == [1, 1] else f"full {kernel[0]}x{kernel[1]}, {cin} in"


def _profile(path: Path, shape: list[int], batch: int, threads: int, runs: int = 20) -> tuple[list, dict]:
    """(convolutions in graph order as (kind, weight dims, kernel us per call), other ops' us per call by type)
    after onnxruntime's optimisations, from its profiler."""
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads, so.log_severity_level = threads, 1, 3
    so.optimized_model_filepath = str(path.with_suffix(".opt.onnx"))
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])  # writes the graph that will run
    graph = onnx.load(so.optimized_model_filepath).graph
    inits = {t.name: list(t.dims) for t in graph.initializer}
    so.optimized_model_filepath, so.enable_profiling = "", True
    so.profile_file_prefix = str(path.with_suffix(""))
    session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: np.random.default_rng(0).random((batch, *shape), dtype=np.float32)}
    for _ in range(runs):
        session.run(None, feed)
    us: dict[str, float] = {}
    op_of: dict[str, str] = {}
    for e in json.loads(Path(session.end_profiling()).read_text()):
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            name = e["name"].removesuffix("_kernel_time")
            us[name] = us.get(name, 0.0) + e["dur"] / runs
            op_of[name] = e["args"]["op_name"]
    convs: list[tuple[str, list[int], float]] = []
    other: dict[str, float] = {}
    for node in graph.node:
        if node.op_type in ("Conv", "QLinearConv"):
            w = inits[node.input[3] if node.op_type == "QLinearConv" else node.input[1]]
            kernel = next(list(a.ints) for a in node.attribute if a.name == "kernel_shape")
            convs.append((_kind(_group(node), kernel, w[1]), w, us.get(node.name, 0.0)))
    conv_names = {n.name for n in graph.node if n.op_type in ("Conv", "QLinearConv")}
    for name, t in us.items():
        if name not in conv_names:
            other[op_of[name]] = other.get(op_of[name], 0.0) + t
    return convs, other


def layers(pre: Path, int8: Path, shape: list[int], batch: int, threads: int) -> dict:
    """Each convolution's kernel time in float32 and in int8 (matched in graph order, checked by weight shape),
    summed by kind, and the other ops of each graph."""
    f_convs, f_other = _profile(pre, shape, batch, threads)
    q_convs, q_other = _profile(int8, shape, batch, threads)
    # matched by output channels and kernel: the x86 recipe pads a stem's input channels (edgeppt.int8)
    if [(c[1][0], c[1][2:]) for c in f_convs] != [(c[1][0], c[1][2:]) for c in q_convs]:
        raise SystemExit("the float32 and int8 graphs' convolutions do not line up; no per-layer table")
    rows = [{"kind": k if k == qk else f"{k}; int8: {qk.split(', ')[-1]}", "weight": w, "fp32_us": f,
             "int8_us": q} for (k, w, f), (qk, _, q) in zip(f_convs, q_convs)]
    return {"batch": batch, "layers": rows, "fp32_other_us": f_other, "int8_other_us": q_other}


def print_layers(res: dict) -> None:
    print(f"batch {res['batch']}, kernel us per call (onnxruntime's profiler)\n")
    print("| layer | kind | weight | float32 us | int8 us | int8 vs float32 |\n|---:|---|---|---:|---:|---:|")
    for i, r in enumerate(res["layers"]):
        print(f"| {i} | {r['kind']} | {'x'.join(map(str, r['weight']))} | {r['fp32_us']:.0f} | {r['int8_us']:.0f} "
              f"| {r['fp32_us'] / max(r['int8_us'], 1e-9):.2f}x |")
    print("\n| kind | layers | float32 us | int8 us | int8 vs float32 |\n|---|---:|---:|---:|---:|")
    kinds: dict[str, list[dict]] = {}
    for r in res["layers"]:
        kinds.setdefault(r["kind"], []).append(r)
    for k, rs in kinds.items():
        f, q = sum(r["fp32_us"] for r in rs), sum(r["int8_us"] for r in rs)
        print(f"| {k} | {len(rs)} | {f:.0f} | {q:.0f} | {f / q:.2f}x |")
    f_o, q_o = sum(res["fp32_other_us"].values()), sum(res["int8_other_us"].values())
    print(f"| other ops (float32: {', '.join(res['fp32_other_us'])}; int8: {', '.join(res['int8_other_us'])}) | - "
          f"| {f_o:.0f} | {q_o:.0f} | {f_o / q_o:.2f}x |")
    f = sum(r["fp32_us"] for r in res["layers"]) + f_o
    q = sum(r["int8_us"] for r in res["layers"]) + q_o
    print(f"| all | - | {f:.0f} | {q:.0f} | {f / q:.2f}x |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("onnx", type=Path)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=1, help="also time this batch size (throughput)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--layers", action="store_true", help="profile float32 and int8 layer by layer instead")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="int8-recipes-"))
    source = dynamic_batch(args.onnx, tmp / "dynamic.onnx") if args.batch > 1 else args.onnx
    pre = preprocess(source, tmp / "pre.onnx")
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
    if args.layers:
        res = layers(pre, quantize_int8(pre, tmp / "int8.onnx", calib, x86), shape, args.batch, args.threads)
        print_layers(res)
        if args.json:
            args.json.write_text(json.dumps({"model": str(args.onnx), "threads": args.threads, **res}, indent=1))
        return
    for name, cfg in (("int8 QDQ, every node (the x86-cpu recipe)", x86),
                      ("int8 QDQ, every node, the stem's input channels not padded", replace(x86, pad_channels=False)),
                      ("int8 QDQ, depthwise convolutions in float", replace(x86, float_nodes=tuple(depthwise))),
                      ("int8 QDQ, only 1x1 convolutions and Gemm", replace(x86, float_nodes=tuple(keep_float)))):
        paths[name] = quantize_int8(pre, tmp / f"{len(paths)}.onnx", calib, cfg)
    for fmt_name, fmt in (("QOperator", QuantFormat.QOperator), ("QDQ", QuantFormat.QDQ)):
        for per_channel in (True, False):
            name = f"int8 {fmt_name}, {'per-channel' if per_channel else 'per-tensor'} weights, onnxruntime defaults"
            paths[name] = tmp / f"{len(paths)}.onnx"
            quantize_static(str(pre), str(paths[name]), _Reader(graph.input[0].name, calib, 1, True), quant_format=fmt,
                            per_channel=per_channel, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax)
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads, so.log_severity_level = args.threads, 1, 3
    sessions = {k: ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"]) for k, p in paths.items()}
    batches = sorted({1, args.batch})
    times: dict[tuple[str, int], list[float]] = {(k, b): [] for k in sessions for b in batches}
    for _ in range(args.rounds):
        for k, s in sessions.items():
            for b in batches:
                times[(k, b)].append(time_session(s, shape, b, 200 if b == 1 else 30, 20 if b == 1 else 3,
                                                  5.0)["median_ms"])
    best = {key: min(v) for key, v in times.items()}
    print(f"{len(graph.node)} nodes, {len(convs)} convolutions ({len(depthwise)} depthwise, {len(pointwise)} 1x1); "
          f"{args.threads} thread(s)\n")
    print("| recipe | " + " | ".join(f"batch-{b} median ms | vs float32" for b in batches) + " |")
    print("|---|" + "---:|---:|" * len(batches))
    for k in sessions:
        cells = [f"{best[(k, b)]:.3f} | {best[('float32', b)] / best[(k, b)]:.2f}x" for b in batches]
        print(f"| {k} | " + " | ".join(cells) + " |")
    if args.json:
        args.json.write_text(json.dumps({"model": str(args.onnx), "threads": args.threads, "ms": {
            k: {str(b): best[(k, b)] for b in batches} for k in sessions}}, indent=1))


if __name__ == "__main__":
    main()
