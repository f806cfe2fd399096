"""`edgeppt run` killed with SIGKILL at seeded random moments across search, transfer and export: each re-run of the
same command resumes, and the final model weights and test accuracy equal those of an uninterrupted run exactly."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

KILLS = 10
SEED = 20240607


def tiny_pipeline(bundle: Path) -> dict[str, Any]:
    """Search (2 trials, 1 finalist), transfer (pp+pssl, a few checkpointed steps) and an ONNX-only export, each
    lasting seconds, so that random moments land in every stage."""
    return {
        "source": str(bundle), "target": "digits:0,1,2,3,4", "labels_per_class": 4, "threads": 1,
        # latency_cache off: the chaos run must take as long as the reference did, or the kills planned inside the
        # reference's search would land after a search that recalls every latency
        "search": {"trials": 2, "finalists": 1, "final_seeds": 1, "val_per_class": 5, "latency_ms": 1000,
                   "latency_warmup": 1, "latency_repeats": 3, "latency_cache": False,
                   "proxy": {"pretrain_steps": 8, "finetune_steps": 8, "pretrain_pool": 16, "pretrain_batch": 8,
                             "batch_size": 8},
                   "space": {"stems": [8], "head_widths": [0],
                             "stages": [{"stride": 1, "widths": [8, 12], "depths": [1]},
                                        {"stride": 2, "widths": [16], "depths": [1]}]}},
        "transfer": {"method": "pp+pssl", "pretrain_steps": 120, "finetune_steps": 120, "pretrain_batch": 16,
                     "batch_size": 8, "eval_every": 40, "checkpoint_every": 5, "pssl": {"pool_size": 32, "steps": 40}},
        "export": {"formats": ["onnx"], "bench_runs": 0},
    }


def start(config: Path, out: Path) -> subprocess.Popen:
    """`python -m edgeppt.cli run` in its own process group (so a kill reaches anything it started)."""
    log = open(out.parent / f"{out.name}.log", "a")
    return subprocess.Popen([sys.executable, "-m", "edgeppt.cli", "run", str(config), "--out", str(out), "--quiet"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


STAGES = ("search", "transfer", "export")


def started_since(out: Path, t0: float) -> dict[str, dict[str, Any]]:
    """The stages (their state.json entries) that started after t0, i.e. in the attempt launched then."""
    try:
        state = json.loads((out / "state.json").read_text())
    except (OSError, json.JSONDecodeError):  # not written yet
        return {}
    return {n: s for n, s in state.get("stages", {}).items() if s.get("started", 0) > t0}


@dataclass(frozen=True)
class Timeline:
    """When each stage of the uninterrupted run started and ended, in seconds after the process started."""
    wall: float
    stages: dict[str, tuple[float, float]]


def reference_run(config: Path, out: Path) -> Timeline:
    t0 = time.time()
    proc = start(config, out)
    assert proc.wait(timeout=600) == 0, (out.parent / f"{out.name}.log").read_text()[-3000:]
    wall = time.time() - t0
    state = json.loads((out / "state.json").read_text())
    stages = {n: (s["started"] - t0, s["finished"] - t0) for n, s in state["stages"].items()}
    return Timeline(wall, stages)


def kill_in(config: Path, out: Path, stage: str, offset: float) -> str | None:
    """Start the run and SIGKILL it `offset` seconds after it (re)starts `stage` (at once if this attempt is past it
    already); returns the stage it was running then, or None when it finished first."""
    t0 = time.time()
    proc = start(config, out)
    deadline = None
    while proc.poll() is None:
        now = started_since(out, t0)
        if deadline is None and any(STAGES.index(n) >= STAGES.index(stage) for n in now):
            deadline = now[stage]["started"] + offset if stage in now else time.time()
        if deadline is not None and time.time() >= deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            now = started_since(out, t0)  # a killed stage stays "running" in state.json
            return next((n for n, s in now.items() if s.get("status") == "running"), "between stages")
        time.sleep(0.02)
    assert proc.returncode == 0, (out.parent / f"{out.name}.log").read_text()[-3000:]
    return None


def weights(run: Path) -> dict[str, torch.Tensor]:
    saved = torch.load(run / "transfer" / "model.pt", map_location="cpu", weights_only=True)
    state = saved["state_dict"] if "state_dict" in saved else saved["model"]
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def kill_plan(ref: Timeline, rng: random.Random) -> list[tuple[str, float]]:
    """KILLS moments of the reference's stages, in order: one in each stage and the rest anywhere from the start of
    search to the end of export. Each becomes (stage, delay): a resumed attempt kills the stage that long after it
    restarts it, the delay being what the moment adds to the previous kill's in the same stage (the checkpoint
    carried the rest), so the kills move through the pipeline as the reference did."""
    first, last = ref.stages["search"][0], ref.stages["export"][1]
    moments = sorted([rng.uniform(*ref.stages[n]) for n in STAGES]
                     + [rng.uniform(first, last) for _ in range(KILLS - len(STAGES))])
    plan, reached = [], {n: 0.0 for n in STAGES}
    for m in moments:
        stage = next(n for n in reversed(STAGES) if m >= ref.stages[n][0])
        offset = m - ref.stages[stage][0]
        plan.append((stage, offset - reached[stage]))
        reached[stage] = offset
    return plan


@pytest.mark.slow
def test_sigkill_at_random_moments_resumes_to_the_uninterrupted_result(tiny_bundle, tmp_path):
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump(tiny_pipeline(tiny_bundle)))
    ref = reference_run(config, tmp_path / "reference")
    assert set(ref.stages) == set(STAGES)

    chaos = tmp_path / "chaos"
    where = kill_plan(ref, random.Random(SEED))
    hit = [kill_in(config, chaos, stage, delay) for stage, delay in where]
    print(f"reference: {ref}; kills {[(n, round(d, 2)) for n, d in where]} hit {hit}")
    proc = start(config, chaos)
    assert proc.wait(timeout=600) == 0, (tmp_path / "chaos.log").read_text()[-3000:]
    assert set(STAGES) <= set(hit), hit  # every stage was killed at least once

    log = (tmp_path / "chaos.log").read_text()
    assert "transfer: resuming" in log, log  # a kill landed after a checkpoint, and training went on from it
    state = json.loads((chaos / "state.json").read_text())
    assert state["status"] == "done" and all(s["status"] == "done" for s in state["stages"].values())
    a, b = weights(tmp_path / "reference"), weights(chaos)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    reports = [json.loads((r / "transfer" / "report.json").read_text()) for r in (tmp_path / "reference", chaos)]
    assert reports[0]["test_accuracy"] == reports[1]["test_accuracy"]
    assert reports[0]["per_class_accuracy"] == reports[1]["per_class_accuracy"]
    best = [json.loads((r / "search" / "best.json").read_text()) for r in (tmp_path / "reference", chaos)]
    assert {k: best[0][k] for k in ("family", "config")} == {k: best[1][k] for k in ("family", "config")}
