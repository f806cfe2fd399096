"""Search stage: NNI finds the most accurate architecture that fits a device's latency and memory budgets.

space.py (NNI ModelSpace, NNI-free freezing), costs.py (MACs, params, peak activation), latency.py (ONNX Runtime
timing), predictor.py + calibrate.py (predicted latency for remote devices), proxy.py (the short evaluator),
run.py (the NNI experiment, filter, ledger), report.py (artifacts).
"""

from .run import run_search

__all__ = ["run_search"]
