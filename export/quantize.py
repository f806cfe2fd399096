"""INT8 post-training quantization with onnxruntime.quantization, calibrated from target images or, data-free,
from pseudo samples of the source generator, guarded by the accuracy drop on the test split.

The graph is QDQ with per-channel symmetric int8 weights and, for TensorRT, symmetric int8 activations: every zero
point is 0, which TensorRT's explicit quantization requires. onnxruntime's x86 CPU kernels only fuse such graphs
partly (Conv -> Relu -> Q keeps convolutions in float), so an x86-only bundle uses asymmetric uint8 activations,
onnxruntime's fast path there; docs/export.md has the measurements.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from edgeppt.bundle import SourceBundle
from edgeppt.data import reshape_images
from edgeppt.errors import EdgepptError
from edgeppt.int8 import QuantConfig, preprocess, quantize_int8
from edgeppt.ort_timing import open_session
from edgeppt.runs import atomic_write_bytes

from . import runner

PSEUDO_TEMPERATURE = 2.0  # softer than P-SSL's T=1: a wider spread of source modes per anchor, wider activation range
PSEUDO_ANCHOR_SHARE = 0.75  # the rest: random mixes of source classes, in case the anchors cover too little


# ---------------------------------------------------------------- calibration data
def check_calibration(x: Any, shape: tuple[int, int, int]) -> np.ndarray:
    """A calibration set must be float images (N, C, H, W) at the model's input shape with values in [0, 1]."""
    a = x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if a.ndim != 4 or tuple(a.shape[1:]) != tuple(shape):
        want = ", ".join(map(str, shape))
        raise EdgepptError(f"calibration images have shape {tuple(a.shape)}, expected (N, {want}) "
                           "to match the model input")
    if len(a) == 0:
        raise EdgepptError("the calibration set is empty")
    if not np.issubdtype(a.dtype, np.floating) or not np.isfinite(a).all() or a.min() < 0 or a.max() > 1:
        raise EdgepptError("calibration images must be finite floats in [0, 1] (the model's input range)")
    return np.ascontiguousarray(a, dtype=np.float32)


def subsample(x: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    if len(x) <= n:
        return x
    return x[torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n]]


@torch.no_grad()
def pseudo_calibration(bundle: SourceBundle, anchors: torch.Tensor | None, n: int,
                       shape: tuple[int, int, int], seed: int = 0) -> tuple[np.ndarray, dict[str, Any]]:
    """Data-free calibration: images G draws for the target task, never a real image.

    Most samples are conditioned on p = softmax(C(x)/T) of the few target images there are (the run's labelled
    set), so they land where the target images sit in the source model's view; the rest on Dirichlet mixes of
    source classes, so activations outside the anchors' modes are covered too (and anchors are optional)."""
    g = torch.Generator().manual_seed(seed)
    n_given = len(anchors) if anchors is not None else 0
    n_anchor = int(round(n * PSEUDO_ANCHOR_SHARE)) if n_given else 0
    ps = []
    if anchors is not None and n_anchor:
        src = reshape_images(anchors, bundle.image_shape[1], bundle.image_shape[0])
        p = bundle.probabilities(src, PSEUDO_TEMPERATURE)
        pick = torch.arange(n_anchor) % len(p) if n_anchor >= len(p) else \
            torch.randperm(len(p), generator=g)[:n_anchor]  # a spread over the labels (class-ordered), not the first
        ps.append(p[pick])
    if n - n_anchor:
        alpha = torch.full((bundle.num_classes,), 0.5)
        ps.append(_dirichlet(alpha, n - n_anchor, g))
    p = torch.cat(ps)
    x = torch.cat([bundle.generate(p[i:i + 256], generator=g) for i in range(0, n, 256)])
    x = reshape_images(x.float().clamp(0, 1), shape[1], shape[0])
    return check_calibration(x, shape), {"anchors": n_given if n_anchor else 0, "anchored_samples": n_anchor,
                                         "mixed_samples": n - n_anchor, "temperature": PSEUDO_TEMPERATURE}


def _dirichlet(alpha: torch.Tensor, n: int, g: torch.Generator) -> torch.Tensor:
    """Dirichlet(alpha) draws via normalised Gamma(alpha, 1) samples, reproducible with a torch.Generator."""
    gam = torch._standard_gamma(alpha.expand(n, -1).contiguous(), generator=g)
    return gam / gam.sum(1, keepdim=True).clamp_min(1e-12)


# ---------------------------------------------------------------- quantization
def sensitive_nodes(model_path: str | Path) -> tuple[str, ...]:
    """The first convolution (it sees raw pixels) and the classifier head (its error goes straight to the logits):
    the layers kept in float when full INT8 loses too much accuracy."""
    nodes = [n for n in onnx.load(str(model_path)).graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
    return tuple(dict.fromkeys(n.name for n in (nodes[:1] + nodes[-1:])))


def accuracy(model_path: str | Path, x: np.ndarray, y: np.ndarray, evaluator: str = "host", threads: int = 1) -> float:
    """Test accuracy of an ONNX model. 'host': onnxruntime's optimised kernels on this machine (what a CPU target
    runs). 'reference': graph optimisations off, so Q/DQ run as exact float arithmetic: the result of a
    saturation-free int8 engine such as TensorRT, independent of this host's instruction set."""
    return float((_logits(model_path, x, evaluator, threads).argmax(1) == y).mean())


def _session(model_path: str | Path, evaluator: str, threads: int):
    return open_session(model_path, threads, optimize=evaluator != "reference")


@dataclass
class GuardResult:
    """How INT8 was judged: top-1 agreement with FP32 on guard images (never the test split; no labels)."""
    agreement: float  # share of guard images where INT8's top-1 class is FP32's
    kl: float  # mean KL(FP32 || INT8) of the softmax outputs on the guard images
    guard_images: int
    max_drop_points: float  # INT8 may disagree with FP32 on at most this many percent of the guard images
    met: bool
    evaluator: str
    chosen: dict[str, Any]
    attempts: list[dict[str, Any]] = field(default_factory=list)
    note: str = ""


def _remedies(pre: Path, saturation: bool = True) -> list[tuple[str, Callable[[QuantConfig], QuantConfig]]]:
    """The documented remedies, in order, each applied to the best recipe so far."""
    return [("7-bit weights (x86 int8 kernel saturation)", lambda c: replace(c, reduce_range=True))] * saturation + [
            ("percentile calibration (clips outlier activations)", lambda c: replace(c, method="percentile")),
            ("entropy calibration (KL-optimal ranges)", lambda c: replace(c, method="entropy")),
            ("sensitive layers kept in float", lambda c: replace(c, float_nodes=sensitive_nodes(pre)))]


def _logits(model_path: str | Path, x: np.ndarray, evaluator: str, threads: int) -> np.ndarray:
    return runner.predict_logits(_session(model_path, evaluator, threads), x)


def agreement(ref_logits: np.ndarray, logits: np.ndarray) -> tuple[float, float]:
    """(top-1 agreement, mean KL(ref || other)) between two models' logits on the same images."""
    p, q = runner.softmax(ref_logits), runner.softmax(logits)
    kl = float((p * (np.log(p + 1e-12) - np.log(q + 1e-12))).sum(1).mean())
    return float((ref_logits.argmax(1) == logits.argmax(1)).mean()), kl


def disagree_points(agreement: float, n: int) -> float:
    """The share of n guard images on which two models disagree, in percent, from whole counts: 1 of 100 is 1.0
    exactly (100 * (1 - 0.99) is 1.0000000000000009, which a threshold of 1.0 would refuse)."""
    return 100 * round((1 - agreement) * n) / n


def quantize_guarded(fp32: str | Path, out: str | Path, calib: np.ndarray, guard_x: np.ndarray,
                     base: QuantConfig = QuantConfig(), max_drop_points: float = 1.0, evaluator: str = "host",
                     threads: int = 1, saturation_remedy: bool = True) -> GuardResult:
    """Quantize with `base`; while INT8's top-1 disagrees with FP32's on more than max_drop_points percent of the
    guard images, apply the remedies in order. The first recipe within the threshold wins; when none is, the
    most faithful is kept and the result says so. Every attempt is recorded. The guard needs no labels, so it
    runs on images outside the test split (the test split only reports)."""
    ref = _logits(fp32, guard_x, "host", threads)
    attempts: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix=".edgeppt-int8-") as tmp:
        pre = preprocess(fp32, Path(tmp) / "pre.onnx")
        steps = [("base recipe", lambda c: c)] + _remedies(pre, saturation_remedy)
        best: dict[str, Any] | None = None
        tried: set[QuantConfig] = set()
        for why, step in steps:
            cfg = step(best["config"] if best else base)
            if cfg in tried:
                continue
            tried.add(cfg)
            cand = Path(tmp) / f"attempt{len(attempts)}.onnx"
            quantize_int8(pre, cand, calib, cfg)
            agree, kl = agreement(ref, _logits(cand, guard_x, evaluator, threads))
            att = {"step": why, "recipe": cfg.describe(), "config": cfg, "file": cand, "agreement": agree,
                   "kl": kl, "disagree_points": disagree_points(agree, len(guard_x))}
            attempts.append(att)
            if best is None or (agree, -kl) > (best["agreement"], -best["kl"]):
                best = att
            if att["disagree_points"] <= max_drop_points:
                best = att
                break
        assert best is not None  # the base recipe is always tried
        atomic_write_bytes(out, best["file"].read_bytes())
    cfg = best["config"]
    for a in attempts:
        a.pop("file")
        a["config"] = asdict(a["config"])
    chosen = dict(best)
    met = chosen["disagree_points"] <= max_drop_points
    if len(attempts) == 1 and met:
        note = f"{cfg.describe()}: agrees with FP32 on {100 * chosen['agreement']:.1f}% of {len(guard_x)} guard images"
    else:
        note = (f"{len(attempts)} recipes tried; kept {cfg.describe()} ({100 * chosen['agreement']:.1f}% agreement)"
                + ("" if met else f"; still disagrees with FP32 on {chosen['disagree_points']:.2f}% of the guard "
                                  f"images (threshold {max_drop_points})"))
    return GuardResult(chosen["agreement"], chosen["kl"], len(guard_x), max_drop_points, met, evaluator, chosen,
                       attempts, note)


def qdq_properties(path: str | Path) -> dict[str, Any]:
    """What TensorRT needs of a QDQ graph: every zero point 0, every quantized tensor int8 (its DequantizeLinear
    takes INT8/FP8 only, so no int32 bias DQ), per-channel weight scales."""
    from onnx import numpy_helper

    m = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    zps, per_channel_weights, types = [], 0, set()
    for n in m.graph.node:
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        if len(n.input) > 2 and n.input[2] in inits:
            zp = inits[n.input[2]]
            zps.append(int(np.abs(zp.astype(np.int64)).max()))
            types.add(zp.dtype.name)  # the quantized type of this Q/DQ pair
        if n.op_type == "DequantizeLinear" and n.input[0] in inits:
            types.add(inits[n.input[0]].dtype.name)
            per_channel_weights += inits[n.input[1]].size > 1
    max_zp = max(zps, default=0)
    return {"qdq_nodes": sum(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in m.graph.node),
            "max_abs_zero_point": max_zp, "quantized_types": sorted(types), "per_channel_weights": per_channel_weights,
            "tensorrt_ready": bool(zps) and max_zp == 0 and types == {"int8"}}
