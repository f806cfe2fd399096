from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import EdgepptError
from .base import ClassifierNet

_FAMILIES: dict[str, Callable[..., ClassifierNet]] = {}
_MODELS: dict[str, dict[str, Any]] = {}  # name -> {"family": ..., "config": {...}}


def register_family(name: str):
    """A family builder takes its full config as keyword arguments: exactly what a frozen JSON holds."""
    def deco(fn: Callable[..., ClassifierNet]) -> Callable[..., ClassifierNet]:
        _FAMILIES[name] = fn
        return fn
    return deco


def register_model(name: str, family: str, **config: Any) -> None:
    """A named size of a family, e.g. register_model("resnet_s", "resnet", widths=[16, 32, 64])."""
    _MODELS[name] = {"family": family, "config": config}


def list_models() -> list[str]:
    return sorted(_MODELS)


def list_families() -> list[str]:
    return sorted(_FAMILIES)


def load_arch_spec(path: str | Path) -> dict[str, Any]:
    try:
        spec = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise EdgepptError(f"cannot read architecture file {path}: {e}") from e
    if not isinstance(spec, dict) or "family" not in spec or not isinstance(spec.get("config"), dict):
        raise EdgepptError(f"{path}: an architecture file needs "
                           f"{{'family': one of {list_families()}, 'config': {{...}}}}")
    return spec


def arch_spec(arch: str | dict[str, Any]) -> dict[str, Any]:
    """Resolve a name, a JSON path or a spec dict to {"family", "config"}: what a run saves to rebuild its model."""
    if isinstance(arch, dict):
        spec = arch
    elif arch.endswith(".json"):
        spec = load_arch_spec(arch)
    elif arch in _MODELS:
        spec = _MODELS[arch]
    else:
        raise EdgepptError(f"unknown architecture {arch!r}; choose one of {list_models()} "
                           "or a frozen-architecture .json")
    if spec.get("family") not in _FAMILIES:
        raise EdgepptError(f"unknown architecture family {spec.get('family')!r}; known: {list_families()}")
    config = spec.get("config", {})
    if not isinstance(config, dict):
        raise EdgepptError(f"architecture {spec['family']}: config is {config!r}, not a mapping of settings")
    return {"family": spec["family"], "config": dict(config)}


def create_model(arch: str | dict[str, Any], num_classes: int, in_chans: int = 1) -> ClassifierNet:
    """Build a registered model by name, a frozen architecture dict, or a path to its JSON."""
    spec = arch_spec(arch)
    try:
        return _FAMILIES[spec["family"]](num_classes=num_classes, in_chans=in_chans, **spec["config"])
    except (TypeError, ValueError, KeyError, RuntimeError) as e:  # (torch's own checks raise RuntimeError)
        raise EdgepptError(f"bad {spec['family']} architecture config {spec['config']}: {e}") from e
