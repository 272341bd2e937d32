"""Attacks: one file per family, registered by key (red-teaming the pipeline)."""

from .base import Attack, make_attack

__all__ = ["Attack", "make_attack"]
