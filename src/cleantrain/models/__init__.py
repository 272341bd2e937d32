"""Models: one file per architecture family, registered by key."""

from .base import ConvUnit, Net, make_model

__all__ = ["ConvUnit", "Net", "make_model"]
