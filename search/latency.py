"""Host latency: export the candidate to ONNX and time ONNX Runtime at batch 1 (warm-up, then the median), in
the format that will ship: where the device's export writes int8, the candidate is quantized with the export's
own recipe (edgeppt.int8) and timed beside fp32, and the faster of the two is what the export will deploy.

This stage exports with torch.onnx's TorchScript-based exporter: it takes well under a second for a small
CNN, where the dynamo exporter (used by the export stage for deployment) takes several. Both give the same
operator graph for these networks, which is all a timing needs.
"""

from __future__ import annotations

import io
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgeppt.int8 import QuantConfig, preprocess, quantize_int8
from edgeppt.onnxspec import OPSET
from edgeppt.ort_timing import open_session
from edgeppt.ort_timing import time_session as time_batch


def to_onnx(model: nn.Module, in_shape: tuple[int, int, int]) -> bytes:
    """The model (eval mode, batch 1) as ONNX bytes."""
    buf = io.BytesIO()
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # torch annotates f as a path only; the dynamo=False exporter also writes to a binary file object.
            torch.onnx.export(model, (torch.zeros(1, *in_shape),), buf,  # type: ignore[arg-type]
                              dynamo=False, opset_version=OPSET, input_names=["input"], output_names=["logits"])
    finally:
        model.train(was_training)
    return buf.getvalue()


def time_session(session, in_shape: tuple[int, int, int], warmup: int = 10, repeats: int = 50) -> float:
    """Median wall time of one batch-1 inference, in milliseconds (the core's one timing helper)."""
    return time_batch(session, in_shape, 1, repeats, warmup, max_seconds=float("inf"))["median_ms"]


def measure_latency(model: nn.Module, in_shape: tuple[int, int, int], threads: int = 0, warmup: int = 10,
                    repeats: int = 50) -> float:
    """Batch-1 latency of `model` under ONNX Runtime's CPU provider on this host, in milliseconds."""
    return time_session(open_session(to_onnx(model, in_shape), threads), in_shape, warmup, repeats)


CALIBRATION_IMAGES = 16  # the int8 graph's speed does not depend on its scales, so random images suffice here


def int8_bytes(fp32: bytes, in_shape: tuple[int, int, int], cfg: QuantConfig) -> bytes:
    """The candidate quantized as the export would quantize it (scales from random images: timing only)."""
    with tempfile.TemporaryDirectory(prefix=".edgeppt-search-int8-") as tmp:
        (Path(tmp) / "m.onnx").write_bytes(fp32)
        pre = preprocess(Path(tmp) / "m.onnx", Path(tmp) / "pre.onnx")
        calib = np.random.default_rng(0).random((CALIBRATION_IMAGES, *in_shape), dtype=np.float32)
        return quantize_int8(pre, Path(tmp) / "q.onnx", calib, cfg).read_bytes()


def deployed_latency(model: nn.Module, in_shape: tuple[int, int, int], threads: int, int8: QuantConfig | None,
                     warmup: int = 10, repeats: int = 50, rounds: int = 3) -> tuple[float, dict[str, float]]:
    """(latency of what will ship, {format: ms}). The formats are timed in interleaved rounds so that a burst of
    load on a shared machine hits each alike; the export ships the faster of fp32 and int8 (export/default.py)."""
    fp32 = to_onnx(model, in_shape)
    sessions = {"onnx": open_session(fp32, threads)}
    if int8 is not None:
        sessions["int8"] = open_session(int8_bytes(fp32, in_shape, int8), threads)
    times: dict[str, list[float]] = {f: [] for f in sessions}
    for _ in range(rounds):
        for fmt, s in sessions.items():
            times[fmt].append(time_session(s, in_shape, warmup, max(1, repeats // rounds)))
    ms = {f: min(t) for f, t in times.items()}  # the least disturbed round of each
    return min(ms.values()), ms
