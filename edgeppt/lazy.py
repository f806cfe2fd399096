"""Package names that load on first use (PEP 562): the CLI imports each stage's `cli` module for its commands'
signatures, and `edgeppt --help` must not wait for torch, onnxruntime or NNI to import."""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import Any


def lazy_names(package: str, exports: dict[str, str]) -> tuple[Callable[[str], Any], list[str]]:
    """A package's `__getattr__` and `__all__` for `exports` ({name: relative module})."""
    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(import_module(exports[name], package), name)
    return __getattr__, sorted(exports)
