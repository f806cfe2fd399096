"""The source stage: train a class-conditional GAN and a classifier on private source data, ship them as a bundle."""
from typing import TYPE_CHECKING

from edgeppt.lazy import lazy_names  # names load on first use: `edgeppt --help` imports no torch

if TYPE_CHECKING:  # what type checkers see
    from .gan import Discriminator as Discriminator
    from .gan import Generator as Generator
    from .inspect import sample_grid as sample_grid
    from .train import SourceClassifier as SourceClassifier
    from .train import train_source as train_source

__getattr__, __all__ = lazy_names(__name__, {
    "Discriminator": ".gan",
    "Generator": ".gan",
    "sample_grid": ".inspect",
    "SourceClassifier": ".train",
    "train_source": ".train",
})
