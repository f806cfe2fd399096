"""Architecture registry: `create_model(name_or_json, num_classes, in_chans)` builds any target network.

Families live in small files (resnet.py, mobilenet.py) and register named sizes with `@register_model`.
A frozen architecture (JSON written by the search stage) names a family and its full config.
"""

from . import mobilenet, onnx_graph, resnet  # noqa: F401  (registers the families)
from .base import ClassifierNet
from .registry import (
                       arch_spec,
                       create_model,
                       list_families,
                       list_models,
                       load_arch_spec,
                       register_family,
                       register_model,
)

__all__ = ["ClassifierNet", "arch_spec", "create_model", "list_families", "list_models", "load_arch_spec",
           "register_family", "register_model"]
