"""pipeline/: the stages in order into one run directory, cached by their inputs, with a report.

config.py (pipeline.yaml) -> stages.py (the table of stages) -> runner.py (cache, resume) -> report.py;
jobs.py runs the pipeline as a background process for front ends; example.py is the built-in example.
"""

from .config import PipelineConfig, load_config, parse_config
from .runner import read_state, run_pipeline

__all__ = ["PipelineConfig", "load_config", "parse_config", "read_state", "run_pipeline"]
