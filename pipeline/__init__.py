"""pipeline/: the stages in order into one run directory, cached by their inputs, with a report.

config.py (pipeline.yaml) -> stages.py (the table of stages) -> runner.py (cache, resume) -> report.py;
jobs.py runs the pipeline as a background process for front ends; example.py is the built-in example.
"""
# Names load on first use (PEP 562): the CLI imports this package's `cli` module for its commands' signatures, and
# `edgeppt --help` must not wait for torch, onnxruntime or NNI to import.
from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what type checkers see
    from .config import PipelineConfig as PipelineConfig
    from .config import load_config as load_config
    from .config import parse_config as parse_config
    from .runner import read_state as read_state
    from .runner import run_pipeline as run_pipeline

_EXPORTS = {
    "PipelineConfig": ".config",
    "load_config": ".config",
    "parse_config": ".config",
    "read_state": ".runner",
    "run_pipeline": ".runner",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name], __name__), name)
