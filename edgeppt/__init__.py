"""edgeppt: transfer a private source generator to a few-shot target task and ship it to an edge device.

The core package holds what every stage shares: datasets, configs, run directories,
the source-bundle format and the architecture registry. It imports no stage.
"""

__version__ = "0.1.0"
