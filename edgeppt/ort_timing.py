"""The one way edgeppt opens and times an onnxruntime session, wherever it runs: the search's latency probes, device
calibration (sent to the device as source), the export's results table and checks, the floor's microbenchmarks,
and the device runner (copied into every bundle as `ort_timing.py`). Standard library and numpy only (onnxruntime
imported where a session is opened), for that reason.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np


def open_session(model: str | Path | bytes, threads: int = 0, providers: list[Any] | None = None,
                 optimize: bool = True) -> Any:
    """An onnxruntime session as every timing and check here runs one: `threads` intra-op threads (0: one per
    physical core), one inter-op thread (a batch-1 graph has no parallel branches worth a second pool), every graph
    optimisation (`optimize` False: none, onnxruntime's reference kernels as written), the CPU provider unless
    others are given."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    so.log_severity_level = 3
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), so,
                                providers=providers or ["CPUExecutionProvider"])


def time_session(session, shape: list[int] | tuple[int, ...], batch: int = 1, runs: int = 50, warmup: int = 5,
                 max_seconds: float = 10.0, seed: int = 0) -> dict[str, float]:
    """Median and p90 wall time of one call at `batch` (random images of `shape`, in the session's input type),
    and images/s. Stops early after `max_seconds`, never before 3 timed runs."""
    inp = session.get_inputs()[0]
    dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
    feed = {inp.name: np.random.default_rng(seed).random((batch, *shape), dtype=np.float32).astype(dtype)}
    for _ in range(warmup):
        session.run(None, feed)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < runs and (time.perf_counter() - start < max_seconds or len(times) < 3):
        t = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - t)
    ms = np.asarray(times) * 1000
    return {"batch": batch, "runs": len(times), "median_ms": float(np.median(ms)),
            "p90_ms": float(np.percentile(ms, 90)), "throughput_ips": float(batch * 1000 / np.median(ms))}
