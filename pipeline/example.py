"""The built-in example: the shipped animals source bundle (bear, bird, cat, cow, dog) transferred to
elephant, giraffe, horse, sheep and zebra on an x86 CPU, with budgets named by how long they take."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from edgeppt.config import LABELS_PER_CLASS
from edgeppt.errors import EdgepptError
from edgeppt.signing import MANIFEST_FILE

from .config import PipelineConfig, parse_config

# Stage budgets, by how long they take on 2 CPU cores (benchmarks/demo.py measures them; docs/pipeline.md).
# The CLI's --budget help and the wizard's budget choice read these lines.
BUDGET_HELP: dict[str, str] = {
    "tiny": "every stage in about a minute, search off (a smoke test)",
    "demo": "the whole pipeline in about 3 minutes (what `edgeppt demo` runs)",
    "standard": "twice the search trials with the full proxy, longer training: about 22 minutes",
}
BUDGETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "search": {"enabled": False},
        "transfer": {"arch": "resnet_xs", "pretrain_steps": 10, "finetune_steps": 10, "pretrain_batch": 16,
                     "batch_size": 8, "eval_every": 10, "checkpoint_every": 5, "pssl": {"pool_size": 32, "steps": 10,
                                                                                            "real_steps": 10}},
        "export": {"bench_runs": 5, "calibration_size": 32},
    },
    "demo": {
        "search": {"trials": 4, "latency_repeats": 20, "finalists": 2, "final_seeds": 1,
                   "proxy": {"pretrain_steps": 60, "finetune_steps": 40, "pretrain_batch": 64, "pretrain_pool": 512}},
        "transfer": {"pretrain_steps": 200, "pretrain_batch": 64, "finetune_steps": 400, "eval_every": 50,
                     "checkpoint_every": 50,
                     "pssl": {"pool_size": 1024, "real_steps": 300}},  # unlabelled: the default 2000 is ~8 min
        "export": {"bench_runs": 50},
    },
    "standard": {
        "search": {"trials": 8, "latency_repeats": 20},  # the search's default proxy and finalists
        "transfer": {"pretrain_steps": 600, "finetune_steps": 1600, "eval_every": 50, "checkpoint_every": 50},
        "export": {"bench_runs": 50},
    },
}


assert BUDGETS.keys() == BUDGET_HELP.keys()


def budget_help() -> str:
    return "; ".join(f"{name}: {text}" for name, text in BUDGET_HELP.items())


def example_bundle() -> Path:
    """$EDGEPPT_EXAMPLE_BUNDLE (an installed image sets it), bundles/animals-src of the source tree, or of the
    current folder (where the hint below builds it)."""
    candidates = [os.environ.get("EDGEPPT_EXAMPLE_BUNDLE"),
                  Path(__file__).resolve().parents[1] / "bundles" / "animals-src", Path("bundles") / "animals-src"]
    for c in candidates:
        if c and (Path(c) / MANIFEST_FILE).is_file():
            return Path(c)
    raise EdgepptError("the example source bundle is missing (bundles/animals-src); set EDGEPPT_EXAMPLE_BUNDLE or "
                       "build it: edgeppt source train --data animals:bear,bird,cat,cow,dog --out bundles/animals-src")


def example_config(budget: str = "demo", **overrides: Any) -> PipelineConfig:
    from edgeppt.data import EXAMPLE_TARGET  # here: the CLI imports this module, and edgeppt.data imports torch

    if budget not in BUDGETS:
        raise EdgepptError(f"unknown budget {budget!r}; choose one of {list(BUDGETS)}")
    raw = {"source": str(example_bundle()), "target": EXAMPLE_TARGET, "labels_per_class": LABELS_PER_CLASS,
           **{k: dict(v) for k, v in BUDGETS[budget].items()}}
    raw.update(overrides)
    return parse_config(raw, f"example ({budget})")
