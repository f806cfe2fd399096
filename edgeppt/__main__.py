"""`python -m edgeppt ...` (and `torchrun -m edgeppt transfer ...`)."""

from .cli import app

app()
