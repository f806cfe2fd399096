"""`edgeppt bench`: latency and accuracy of every artifact of a bundle on this machine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from . import runner
from .bundle import verify_bundle
from .formats import BENCH_RUNS, THROUGHPUT_BATCH


def bench_bundle(path: str | Path, threads: int | None = None, runs: int = BENCH_RUNS, batch: int = THROUGHPUT_BATCH,
                 test_accuracy: bool = True, provider: str = "cpu") -> dict[str, Any]:
    """Verify the bundle, benchmark each ONNX model with the bundle's own runner code, and add test-split accuracy
    when the run's data can be rebuilt here (else the accuracy recorded at export and on the shipped samples)."""
    path = Path(path)
    manifest = verify_bundle(path)
    threads = int(manifest.get("threads", 0)) if threads is None else threads
    report = runner.run_bench(path, manifest, None, threads, provider, batch, runs)
    exported = {r["format"]: r for r in manifest.get("results", [])}
    test = _test_split(manifest) if test_accuracy else None
    if test_accuracy and test is None:
        report["accuracy_note"] = ("the run's test split could not be rebuilt here (its images are not on this "
                                   "machine, or changed since the export): accuracy is on the bundle's sample images")
    for row in report["results"]:
        row["export_accuracy"] = exported.get(row["format"], {}).get("accuracy")
        if test is not None and "error" not in row:
            s = runner.make_session(path / row["file"], threads, provider)
            row["test_accuracy"] = float((runner.predict_logits(s, test[0]).argmax(1) == test[1]).mean())
    report["bundle"] = str(path)
    report["default_format"] = manifest.get("default_format")
    report["default_reason"] = manifest.get("default_reason")
    return report


def _test_split(manifest: dict[str, Any]) -> tuple[np.ndarray, np.ndarray] | None:
    """The run's fixed test split from the data record in the manifest; None when its data is not on this machine."""
    from edgeppt.data import DataRecord, reshape_images
    from edgeppt.errors import EdgepptError

    try:
        _, test = DataRecord.model_validate(manifest["data_record"]).splits()
    except (EdgepptError, KeyError, TypeError, ValueError, OSError):  # OSError: its folder unreadable here
        return None
    spec = manifest["preprocess"]
    x = reshape_images(test.x, int(spec["image_size"]), int(spec["channels"]))
    return x.numpy(), test.y.numpy()
