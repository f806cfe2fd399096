"""Transfer stage: train a target architecture from a source bundle with PP and/or P-SSL.

One training loop (loop.py) runs a list of phases; each phase is an objective (objectives.py, ssl.py),
and each method (methods.py) is the list of phases it runs.
"""
# Names load on first use (PEP 562): the CLI imports this package's `cli` module for its commands' signatures, and
# `edgeppt --help` must not wait for torch, onnxruntime or NNI to import.
from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what type checkers see
    from .run import run_transfer as run_transfer

_EXPORTS = {
    "run_transfer": ".run",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name], __name__), name)
