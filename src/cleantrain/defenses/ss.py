"""Spectral Signatures (Tran et al., NeurIPS 2018): poison leaves a trace on the top singular direction.

In every class: centre the penultimate features of a normally trained model,
take the top right singular vector, score each sample by its squared
projection on it, and flag the class's top k = min(⌊factor·ρ·N⌋, ⌊n_c/2⌋),
ρ the expected poisoning rate (the setting, else the run's prior, else 0.01).
Scores are per-class squared projections; they rank within a class and are
compared across classes as they are.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data.core import ImageData
from ..errors import UserError
from .base import DefenseContext, Detection, register_detector
from .shared import normal_model, per_class


@dataclass(frozen=True)
class SSSettings:
    expected_rate: float | None = None  # ρ; None = the run's prior, else 0.01
    factor: float = 1.5  # flag factor·ρ·N per class
    base_epochs: int | None = None  # epochs of the shared normally trained model; None = the recipe's

    def check(self) -> None:
        if self.expected_rate is not None and not 0 < self.expected_rate < 1:
            raise UserError("ss: 'expected_rate' must lie in (0, 1)")
        if self.factor <= 0:
            raise UserError("ss: 'factor' must be positive")


def spectral_scores(features: torch.Tensor) -> torch.Tensor:
    """Squared projection of the centred rows on their top right singular vector."""
    centred = features - features.mean(0, keepdim=True)
    _, _, vh = torch.linalg.svd(centred.double(), full_matrices=False)
    return (centred.double() @ vh[0]).pow(2).float()


@register_detector("ss", settings=SSSettings)
def ss(train: ImageData, ctx: DefenseContext, s: SSSettings) -> Detection:
    """Spectral Signatures: per class, flag the largest squared projections on the top singular vector."""
    s = s or SSSettings()
    rate = s.expected_rate or ctx.expected_rate or 0.01
    model = normal_model(train, ctx, s.base_epochs)
    feats = ctx.trainer.features(model, train).cpu()
    scores = torch.zeros(len(train))
    flagged = torch.zeros(len(train), dtype=torch.bool)
    for _, idx in per_class(train.y, train.num_classes):
        sc = spectral_scores(feats[idx])
        scores[idx] = sc
        k = min(int(s.factor * rate * len(train)), len(idx) // 2)
        flagged[idx[torch.argsort(sc, descending=True)[:k]]] = True
    return Detection(scores, flagged, {"expected_rate": rate})
