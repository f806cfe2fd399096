"""pipeline/: the stages in order into one run directory, cached by their inputs, with a report.

config.py (pipeline.yaml) -> stages.py (the table of stages) -> runner.py (cache, resume) -> report.py;
jobs.py runs the pipeline as a background process for front ends; example.py is the built-in example.
"""
from typing import TYPE_CHECKING

from edgeppt.lazy import lazy_names  # names load on first use: `edgeppt --help` imports no torch

if TYPE_CHECKING:  # what type checkers see
    from .config import PipelineConfig as PipelineConfig
    from .config import load_config as load_config
    from .config import parse_config as parse_config
    from .runner import read_state as read_state
    from .runner import run_pipeline as run_pipeline

__getattr__, __all__ = lazy_names(__name__, {
    "PipelineConfig": ".config",
    "load_config": ".config",
    "parse_config": ".config",
    "read_state": ".runner",
    "run_pipeline": ".runner",
})
