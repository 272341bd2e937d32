"""Data: ImageData / PoisonedData, dataset loaders, the on-device batch iterator."""

from .core import CLEAN, COVER, POISON, ImageData, PoisonedData

__all__ = ["ImageData", "PoisonedData", "CLEAN", "POISON", "COVER"]
