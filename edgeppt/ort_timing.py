"""The one way edgeppt times an onnxruntime session, wherever it runs: the search's latency probes, device
calibration (sent to the device as source), the export's results table, the floor's microbenchmarks, and the
device runner (copied into every bundle as `ort_timing.py`). Standard library and numpy only, for that reason.
"""

from __future__ import annotations

import time

import numpy as np


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
