"""The floor: how close an artifact's latency comes to what this host's arithmetic allows.

`host_peak` times a float32 GEMM and a 3x3 convolution in onnxruntime (the runtime that runs the artifacts, with
the same threads) and keeps the faster rate in multiply-accumulates per second; `edgeppt.macs.onnx_macs` counts a
graph's MACs from its convolutions and matrix products (shapes from onnx's shape inference). An artifact's floor is
MACs / peak; `floor_pct` = floor / measured latency, 100% being the host's best float32 arithmetic. INT8 rows are
measured against the same float32 peak, so they can exceed 100%.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgeppt.onnxspec import IR_VERSION, OPSET

from . import runner


def _rate(model: onnx.ModelProto, shape: list[int], batch: int, macs: int, threads: int, repeats: int) -> float:
    """MACs per second of one run, timed by the runner's own benchmark (as every artifact is)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "probe.onnx"
        onnx.save(model, str(path))
        timing = runner.benchmark(runner.make_session(path, threads, "cpu"), shape, batch, repeats, warmup=3)
    return macs / (timing["median_ms"] / 1000)


def _graph(node: onnx.NodeProto, x: list[int], y: list[int], w: np.ndarray) -> onnx.ModelProto:
    return helper.make_model(helper.make_graph(
        [node], node.op_type, [helper.make_tensor_value_info("x", TensorProto.FLOAT, x)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y)], [numpy_helper.from_array(w, "w")]),
        opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)


def host_peak(threads: int = 1, repeats: int = 20) -> dict[str, float]:
    """MACs per second of a 512^3 GEMM and of a 3x3, 64->64 convolution on 32x32 x 8 images."""
    rng = np.random.default_rng(0)
    n, c, side, batch = 512, 64, 32, 8
    gemm = _graph(helper.make_node("MatMul", ["x", "w"], ["y"]), [n, n], [n, n], rng.random((n, n), dtype=np.float32))
    conv = _graph(helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1]), [batch, c, side, side],
                  [batch, c, side, side], rng.random((c, c, 3, 3), dtype=np.float32))
    gemm_rate = _rate(gemm, [n], n, n ** 3, threads, repeats)
    conv_rate = _rate(conv, [c, side, side], batch, batch * c * side * side * c * 9, threads, repeats)
    return {"gemm_gmacs": gemm_rate / 1e9, "conv_gmacs": conv_rate / 1e9,
            "peak_gmacs": max(gemm_rate, conv_rate) / 1e9, "threads": threads}


def floor_columns(row: dict[str, Any], macs: int, peak_gmacs: float) -> dict[str, Any]:
    """The floor (ms) and floor % for each batch size timed in a results row."""
    out: dict[str, Any] = {}
    for key, timing in row.items():
        if key.startswith("batch") and isinstance(timing, dict) and timing.get("median_ms"):
            floor_ms = macs * timing["batch"] / (peak_gmacs * 1e9) * 1000
            out[f"{key}_floor_ms"] = floor_ms
            out[f"{key}_floor_pct"] = 100 * floor_ms / timing["median_ms"]
    return out

