"""`pipeline.yaml`: the data, the device and every stage's budget in one validated file.

Stage sections are derived from the stages' own configs (same fields, defaults and limits), minus the fields the
pipeline fills in itself (data, device, output folder), so each fact lives in one place.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import Field, create_model, field_validator, model_validator

from edgeppt.config import (
    LABELS_PER_CLASS,
    TEST_FRACTION,
    AugmentConfig,
    LabelsPerClass,
    SearchConfig,
    SourceTrust,
    Strict,
    TestFraction,
    TransferConfig,
    load_yaml,
    validate,
    without_trust,
)
from edgeppt.devices import DEFAULT_DEVICE, load_profile
from edgeppt.errors import EdgepptError
from edgeppt.export.formats import ExportOptions

STAGE_NAMES = ("search", "transfer", "export")
# Filled in by the pipeline from the top-level fields or an earlier stage, so not settable per stage.
_SHARED = {"source", "target", "test", "test_fraction", "labels_per_class", "seed", "device", "out", "data", "threads",
           "augment", *SourceTrust.TRUST_FIELDS}


def _section(model: type[Strict], name: str, doc: str, extra: dict[str, Any] | None = None,
             taken: frozenset[str] = frozenset()) -> type[Strict]:
    """A stage's section of pipeline.yaml: its config's fields less those the pipeline fills in (`_SHARED`, and
    `taken`: this stage's fields that another section sets)."""
    fields: dict[str, Any] = {k: (f.annotation, f) for k, f in model.model_fields.items()
                              if k not in _SHARED and k not in taken}
    fields.update(extra or {})
    return create_model(name, __base__=Strict, __doc__=doc, **fields)


if TYPE_CHECKING:
    # create_model builds the sections at runtime, so mypy cannot see their fields: to it each section is a Strict
    # model whose fields read as Any.
    class _Section(Strict):
        def __getattr__(self, name: str) -> Any: ...

    class SearchSection(_Section): ...

    class TransferSection(_Section): ...
else:
    SearchSection = _section(SearchConfig, "SearchSection", "Architecture search budget; `enabled: false` skips search "
                             "and trains `transfer.arch`.", {"enabled": (bool, True)},
                             taken=frozenset({"auto"}))  # the proxy follows transfer's `auto` rules
    # the top level's `device` names the device profile, so transfer's torch device gets a name of its own
    TransferSection = _section(TransferConfig, "TransferSection", "Transfer method and budget (TransferConfig fields). "
                               "`arch` is used only when search is off.",
                               {"torch_device": (TransferConfig.model_fields["device"].annotation,
                                                 Field("auto", description="where transfer trains: auto (CUDA when "
                                                       "PyTorch sees a GPU), cpu or cuda"))})


class ExportSection(ExportOptions):
    """What `export.export_run` writes and measures (ExportOptions fields)."""


class PipelineConfig(SourceTrust):
    """One run: source bundle + target images + device -> search -> transfer -> export -> report.
    `trusted_keys` / `trust_code` say which source bundles the stages accept."""
    source: Path = Field(description="source bundle directory (generator + classifier)")
    target: str = Field(description="labelled target images: built-in name[:classes], class-folder path or .npz")
    test: str | None = Field(None, description="test images (default: a fixed split of target)")
    test_fraction: TestFraction = TEST_FRACTION
    labels_per_class: LabelsPerClass = LABELS_PER_CLASS
    device: str = Field(DEFAULT_DEVICE, description="device profile name or .yaml")
    seed: int = 0
    threads: int | None = Field(None, ge=1, description="CPU threads for training (default: torch's)")
    augment: AugmentConfig = Field(AugmentConfig(), description="augmentation of the target images, shared by the "
                                   "search's proxy and transfer (flips off for digits and text)")
    search: SearchSection = SearchSection()
    transfer: TransferSection = TransferSection()
    export: ExportSection = ExportSection()

    @field_validator("device")
    @classmethod
    def _known_device(cls, v: str) -> str:
        try:
            load_profile(v)
        except EdgepptError as e:
            raise ValueError(str(e)) from None
        return v

    @model_validator(mode="after")
    def _one_side(self) -> PipelineConfig:
        """The searched network's budgets hold at the side it was costed at: transfer must train (and export ship)
        that side, not another."""
        a, b = self.search.image_size, self.transfer.image_size
        if self.search.enabled and a is not None and b is not None and a != b:
            raise ValueError(f"search.image_size {a} and transfer.image_size {b} differ: the search costs the network "
                             "at its side and the device receives transfer's; set one of them (both take it)")
        return self

    def stages(self) -> list[str]:
        return [s for s in STAGE_NAMES if s != "search" or self.search.enabled]


def load_config(path: str | Path) -> PipelineConfig:
    return load_yaml(path, PipelineConfig)


def parse_config(raw: dict, where: str = "pipeline config") -> PipelineConfig:
    return validate(PipelineConfig, raw, where)


def dump_yaml(cfg: PipelineConfig) -> str:
    """The config as YAML with only what differs from the defaults (short, and readable in a report)."""
    return yaml.safe_dump(without_trust(cfg.model_dump(mode="json", exclude_defaults=True)), sort_keys=False)
