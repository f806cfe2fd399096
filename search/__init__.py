"""Search stage: NNI finds the most accurate architecture that fits a device's latency and memory budgets.

space.py (NNI ModelSpace, NNI-free freezing), costs.py (MACs, params, peak activation), latency.py (ONNX Runtime
timing), predictor.py + calibrate.py (predicted latency for remote devices), proxy.py (the short evaluator),
run.py (the NNI experiment, filter, ledger), report.py (artifacts).
"""
# Names load on first use (PEP 562): the CLI imports this package's `cli` module for its commands' signatures, and
# `edgeppt --help` must not wait for torch, onnxruntime or NNI to import.
from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what type checkers see
    from .run import run_search as run_search

_EXPORTS = {
    "run_search": ".run",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name], __name__), name)
