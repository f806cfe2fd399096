"""What a transfer run publishes in report.json: one typed record that export, the pipeline's report, the CLI and
the wizard read (`read_report`), instead of reaching into the run's private files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from edgeppt.data import DataRecord
from edgeppt.runs import read_record

from .coverage import Choice

REPORT_FILE = "report.json"
MODEL_FILE = "model.pt"  # the trained weights and the architecture they fit (export reads it)
PLAN_FILE = "plan.json"  # the method being trained and its phases, written before training (progress bars read it)


class PhaseRecord(BaseModel):
    name: str
    steps: int


class DataSummary(BaseModel):
    labelled: int
    test: int
    skipped_files: list[str] = []
    # test images that copy an image the model trained on (the same pixels: edgeppt.data.exact_copies), and
    # the test accuracy without them
    test_copies_of_training: int = 0
    test_accuracy_without_copies: float | None = None
    # pictures the target holds under two classes or more, and the classes of the first few
    labelled_twice: int = 0
    labelled_twice_classes: list[str] = []
    # training-pool images beyond the labels drawn, when no unlabelled images are given (0 when they are)
    unused: int = 0


class ModelInfo(BaseModel):
    arch: dict[str, Any]
    classes: list[str]
    in_chans: int
    image_size: int
    params: int


class TransferReport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    method: str  # what was trained (auto's choice when --method auto)
    phases: list[PhaseRecord]
    test_accuracy: float
    per_class_accuracy: dict[str, float]
    confusion_matrix: list[list[int]]
    classes: list[str]
    data: DataSummary
    data_record: DataRecord
    model: ModelInfo
    settings: dict[str, Any]  # the run's TransferConfig, as JSON
    timings_s: dict[str, float]
    images_per_s: dict[str, float]
    world_size: int
    restarts: int = 0  # torchrun's restarts of the worker group after a failure (each resumed from a checkpoint)
    added_on_resume: dict[str, Any] | None = None  # settings the run as started did not have (an earlier edgeppt)
    device: str
    auto: Choice | None = None
    pretrain: dict[str, Any] | None = None
    pretrain_for_auto: dict[str, Any] | None = None  # auto pre-trained to measure, then chose a method without PP
    pseudo_samples: dict[str, Any] | None = None
    reused_phases: dict[str, dict[str, Any]] | None = None  # phases loaded from the cache: {name: cache, seconds}
    unlabeled: dict[str, Any] | None = None
    reverse_check: dict[str, Any] | None = None  # auto with unlabelled images: reverse accuracies, the model kept
    gain: dict[str, Any] | None = None  # auto: how much the target images' gain varies, and the jitter it set
    pose: dict[str, Any] | None = None  # auto: whether the target's objects lie turned, and the PP rotation it set
    mirror: dict[str, Any] | None = None  # auto: whether the images look unlike their mirror images, flips kept or not
    low_agreement: dict[str, Any] | None = None  # auto went back to the warm start: propagation and it disagree
    uneven_shares: dict[str, Any] | None = None  # auto went back to the warm start: one class dominates them
    source: dict[str, Any] | None = None  # the bundle used: path, provenance (who signed it), runtime
    peak_rss_mib: float | None = None  # the process's peak resident memory
    supermask: dict[str, Any] | None = None  # a supermask model: sparsity, update bytes, base


def read_report(run_dir: str | Path) -> TransferReport | None:
    """The run's record; None when it has not finished. A file that is not one is a one-line error."""
    return read_record(Path(run_dir) / REPORT_FILE, TransferReport, "a transfer report", "re-run transfer")


def twice_note(report: dict[str, Any]) -> str | None:
    """The line that says how many pictures the target files under two classes, where any are."""
    data = report.get("data", {})
    n = data.get("labelled_twice", 0)
    if not n:
        return None
    return (f"{n} picture(s) of the target are filed under two classes or more (e.g. "
            f"{'; '.join(data.get('labelled_twice_classes', [])[:3])}): a copy may be a label of one class and a "
            "test image of the other")


def copies_note(report: dict[str, Any]) -> str | None:
    """The line that says how many test images copy an image the model trained on, where any do."""
    data = report.get("data", {})
    n = data.get("test_copies_of_training", 0)
    if not n:
        return None
    alone = data.get("test_accuracy_without_copies")
    return (f"{n} of the {data['test']} test images {'copies' if n == 1 else 'copy'} an image the model trained on "
            f"(the target holds {'it' if n == 1 else 'them'} twice); test accuracy without "
            f"{'it' if n == 1 else 'them'}: " + (f"{alone:.1%}" if alone is not None else "none are left"))
