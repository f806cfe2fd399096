"""Search stage: NNI finds the most accurate architecture that fits a device's latency and memory budgets.

space.py (NNI ModelSpace, NNI-free freezing), costs.py (MACs, params, peak activation), latency.py (ONNX Runtime
timing), predictor.py + calibrate.py (predicted latency for remote devices), proxy.py (the short evaluator),
run.py (the NNI experiment, filter, ledger), report.py (artifacts).
"""
from typing import TYPE_CHECKING

from edgeppt.lazy import lazy_names  # names load on first use: `edgeppt --help` imports no torch

if TYPE_CHECKING:  # what type checkers see
    from .run import run_search as run_search

__getattr__, __all__ = lazy_names(__name__, {
    "run_search": ".run",
})
