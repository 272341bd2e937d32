"""The one Trainer that runs every epoch of every method."""

from .settings import TrainSettings
from .trainer import Fit, Trainer

__all__ = ["TrainSettings", "Trainer", "Fit"]
