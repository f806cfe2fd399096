"""The table of export formats and the options of an export, each with its default, in one place.

One row per format (like Ultralytics' `export_formats()`): the file it writes into the bundle, its precision, the
formats it is built from, where it runs. `export_run` builds the rows in table order; `edgeppt export`, the
`export:` section of pipeline.yaml and the wizard read the names, options and defaults from here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, NamedTuple, get_args

from pydantic import Field

from edgeppt.config import Strict
from edgeppt.devices import ExportFormat

Calibration = Literal["target", "pseudo"]  # where INT8 calibration images come from


class Format(NamedTuple):
    name: ExportFormat
    file: str | None             # the artifact in the bundle; None: tensorrt writes one engine per source model
    precision: str
    built_from: tuple[str, ...]  # needs one of these artifacts first
    runs_on: str
    description: str


FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("onnx", "model.onnx", "fp32", (), "CPU, GPU",
           "float32 ONNX, checked against PyTorch; the base of every other format"),
    Format("int8", "model.int8.onnx", "int8", ("onnx",), "CPU, GPU",
           "QDQ post-training quantization, calibrated and accuracy-guarded"),
    Format("fp16", "model.fp16.onnx", "fp16", ("onnx",), "GPU",
           "float16 weights and compute, float32 input and output"),
    Format("tensorrt", None, "int8/fp16", ("int8", "fp16"), "GPU (TensorRT)",
           "trtexec commands and a build script always; an engine where TensorRT and a GPU are present"),
)}
assert set(FORMATS) == set(get_args(ExportFormat)), "the table must have one row per ExportFormat name"


# How many timed runs give a latency's median: on this machine (bench, the export's table) and on a device over SSH
# (deploy: fewer, for a device is slower). Batch of the throughput column. The device runner keeps its
# own copies: it runs on the device without this package.
BENCH_RUNS, DEVICE_RUNS, THROUGHPUT_BATCH = 50, 30, 32


class ExportOptions(Strict):
    """What an export writes and measures: `edgeppt export`'s options and pipeline.yaml's `export:` section."""
    formats: list[ExportFormat] | None = Field(None, description="artifacts to write (default: the device's)")
    int8_calibration: Calibration = Field("target", description="where calibration images come from: target "
                                          "(target images) or pseudo (source-generator samples)")
    calibration_size: int = Field(256, ge=1, description="calibration images")
    max_int8_drop: float = Field(1.0, ge=0, description="percent of guard images (outside the test split) on which "
                                 "INT8's top-1 class may differ from FP32's before remedies are tried")
    dynamic_batch: bool = Field(False, description="dynamic batch dimension (default: static batch 1)")
    bench_runs: int = Field(BENCH_RUNS, ge=0, description="timed runs per artifact for the latency table (0: none)")
    sign: Path | None = Field(None, description="private key (edgeppt source keygen) to sign the bundle with; the "
                                                "runner verifies it on the device")
