"""The source stage: train a class-conditional GAN and a classifier on private source data, ship them as a bundle."""
# Names load on first use (PEP 562): the CLI imports this package's `cli` module for its commands' signatures, and
# `edgeppt --help` must not wait for torch, onnxruntime or NNI to import.
from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what type checkers see
    from .gan import Discriminator as Discriminator
    from .gan import Generator as Generator
    from .inspect import sample_grid as sample_grid
    from .train import SourceClassifier as SourceClassifier
    from .train import train_source as train_source

_EXPORTS = {
    "Discriminator": ".gan",
    "Generator": ".gan",
    "sample_grid": ".inspect",
    "SourceClassifier": ".train",
    "train_source": ".train",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name], __name__), name)
