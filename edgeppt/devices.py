"""Device profiles: what a deployment target runs and what it can afford.

A profile is a YAML file. The built-in ones live in `edgeppt/devices/`; users add their own as a file path
(`--device my-board.yaml`) or by dropping `<name>.yaml` into a folder listed in $EDGEPPT_DEVICES
(os.pathsep-separated). Search reads the budgets and how latency is obtained; export reads the runtime settings.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field

from .config import DEFAULT_DEVICE, Strict, read_yaml, validate
from .errors import EdgepptError

BUILTIN_DIR = Path(__file__).with_name("devices")
# What a profile's export section may name; export/formats.py holds the table of what each one is and needs.
ExportFormat = Literal["onnx", "int8", "fp16", "tensorrt"]
__all__ = ["DEFAULT_DEVICE", "Budgets", "DeviceProfile", "ExportFormat", "ExportSettings", "list_profiles",
           "load_profile"]


class Budgets(Strict):
    """Limits a candidate architecture must meet; None = no limit."""
    latency_ms: float | None = Field(None, gt=0, description="batch-1 latency on the device")
    params: int | None = Field(None, gt=0, description="parameters")
    macs: int | None = Field(None, gt=0, description="multiply-accumulates per image")
    peak_activation_kib: float | None = Field(None, gt=0, description="largest live activation memory, batch 1, "
                                              "float32")


class ExportSettings(Strict):
    formats: list[ExportFormat] = ["onnx", "int8"]
    symmetric_activations: bool = Field(False, description="int8 activations with zero point 0 (TensorRT, ARM) "
                                        "or uint8 (x86)")
    evaluator: Literal["host", "reference"] = Field("host", description="judge INT8 accuracy with this host's kernels "
                                                    "or with exact Q/DQ arithmetic (what the device's int8 engine "
                                                    "computes)")
    default_format: ExportFormat = "int8"


class DeviceProfile(Strict):
    name: str
    description: str = ""
    runtime: Literal["onnxruntime-cpu", "tensorrt"] = "onnxruntime-cpu"
    latency: Literal["measured", "predicted"] = Field("measured", description="measured live on this host, or "
                                                      "predicted from a model fitted by `edgeppt devices calibrate`")
    predictor: str | None = Field(None, description="latency-predictor file, relative to the profile's folder")
    threads: int = Field(0, ge=0, le=1024, description="inference threads on the device (0: one per core)")
    input_size: int | None = Field(None, ge=8, le=512, description="image side the model receives (None: the "
                                   "dataset's)")
    input_channels: int | None = Field(None, ge=1)
    budgets: Budgets = Budgets()
    export: ExportSettings = ExportSettings()
    path: Path | None = Field(None, exclude=True, description="where the profile was read from")


def _search_dirs() -> list[Path]:
    extra = [Path(p) for p in os.environ.get("EDGEPPT_DEVICES", "").split(os.pathsep) if p]
    return [*extra, BUILTIN_DIR]


def list_profiles() -> list[DeviceProfile]:
    seen: dict[str, DeviceProfile] = {}
    for d in _search_dirs():
        for f in sorted(d.glob("*.yaml")) if d.is_dir() else []:
            seen.setdefault(f.stem, load_profile(f))
    return list(seen.values())


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # a name the file system refuses (too long): no such profile
        return False


def load_profile(device: str | Path) -> DeviceProfile:
    """A built-in or user profile by name, or a YAML file by path. A typo names the field and the allowed ones."""
    path = Path(device)
    if not (path.suffix in (".yaml", ".yml") and _is_file(path)):
        found = [d / f"{device}.yaml" for d in _search_dirs() if _is_file(d / f"{device}.yaml")]
        if not found:
            names = sorted({f.stem for d in _search_dirs() if d.is_dir() for f in d.glob("*.yaml")})
            raise EdgepptError(f"unknown device {str(device)!r}; choose one of {names} or give a profile .yaml")
        path = found[0]
    raw = read_yaml(path, "device profile")
    if not isinstance(raw, dict):
        raise EdgepptError(f"{path}: a device profile is a mapping of fields")
    raw.setdefault("name", path.stem)
    profile = validate(DeviceProfile, raw, str(path))
    profile.path = path
    return profile
