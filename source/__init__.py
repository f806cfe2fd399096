"""The source stage: train a class-conditional GAN and a classifier on private source data, ship them as a bundle."""

from .gan import Discriminator, Generator
from .inspect import sample_grid
from .train import SourceClassifier, train_source

__all__ = ["Discriminator", "Generator", "SourceClassifier", "sample_grid", "train_source"]
