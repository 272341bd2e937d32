"""Vanilla: normal training, no defense (the baseline every defense is measured against)."""

from __future__ import annotations

from .base import DefenseResult, register_defense
from .shared import normal_fit


@register_defense("vanilla")
def vanilla(train, ctx, s) -> DefenseResult:
    """No defense: train normally on everything (the same model the detectors of this data inspect)."""
    model, history = normal_fit(train, ctx, desc="train")
    return DefenseResult(model, history=history)
