"""`python -m edgeppt.cli ...` (and `torchrun -m edgeppt.cli transfer ...`)."""

from edgeppt.cli import main

main()
