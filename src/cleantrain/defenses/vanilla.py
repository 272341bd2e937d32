"""Vanilla: normal training, no defense (the baseline every defense is measured against)."""

from __future__ import annotations

from .base import DefenseResult, register_defense


@register_defense("vanilla")
def vanilla(train, ctx, s) -> DefenseResult:
    """No defense: train normally on everything."""
    model = ctx.new_model()
    fit = ctx.trainer.fit(model, train)
    return DefenseResult(model, history=fit.history)
