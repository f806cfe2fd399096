"""Transfer stage: train a target architecture from a source bundle with PP and/or P-SSL.

One training loop (loop.py) runs a list of phases; each phase is an objective (objectives.py, ssl.py),
and each method (methods.py) is the list of phases it runs.
"""

from .run import run_transfer

__all__ = ["run_transfer"]
