"""Transfer stage: train a target architecture from a source bundle with PP and/or P-SSL.

One training loop (loop.py) runs a list of phases; each phase is an objective (objectives.py, ssl.py),
and each method (methods.py) is the list of phases it runs.
"""
from typing import TYPE_CHECKING

from edgeppt.lazy import lazy_names  # names load on first use: `edgeppt --help` imports no torch

if TYPE_CHECKING:  # what type checkers see
    from .run import run_transfer as run_transfer

__getattr__, __all__ = lazy_names(__name__, {
    "run_transfer": ".run",
})
