"""BadNets (Gu et al. 2017): a small patch stamped in a corner, label flipped."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import UserError
from ..registry import attacks
from .base import Attack


def checkerboard(size: int) -> torch.Tensor:
    """A size×size black/white checkerboard in [0, 1], white at the corners."""
    i = torch.arange(size)
    return ((i[:, None] + i[None, :]) % 2 == 0).float()


@dataclass(frozen=True)
class BadNetsSettings:
    size: int = 3  # patch side in pixels (3×3, as published for 32 px and kept at 28 px)
    margin: int = 0  # distance of the patch from the bottom-right corner, in pixels
    all_to_all: bool = False  # map y → (y + 1) mod K instead of y → target

    def check(self) -> None:
        if self.size < 1 or self.margin < 0:
            raise UserError("badnets: 'size' must be ≥ 1 and 'margin' ≥ 0")


@attacks.register("badnets", settings=BadNetsSettings)
class BadNets(Attack):
    """BadNets: 3×3 checkerboard in the bottom-right corner (all-to-one or all-to-all)."""

    def __init__(self, s: BadNetsSettings, shape, num_classes):
        super().__init__(s, shape, num_classes)
        if s.size + s.margin > min(self.h, self.w):
            raise UserError(f"badnets: a {s.size}-px patch at margin {s.margin} does not fit {self.h}×{self.w} images")
        self.patch = checkerboard(s.size)

    def trigger(self, x: torch.Tensor) -> torch.Tensor:
        s, m = self.s.size, self.s.margin
        x = x.clone()
        y0, x0 = self.h - m - s, self.w - m - s
        x[:, :, y0:y0 + s, x0:x0 + s] = self.patch.to(x.device)
        return x

    def candidates(self, y, target):
        return torch.ones_like(y, dtype=torch.bool) if self.s.all_to_all else y != target

    def label_map(self, y, target):
        return (y + 1) % self.num_classes if self.s.all_to_all else torch.full_like(y, target)

    def test_mask(self, y, target):
        return torch.ones_like(y, dtype=torch.bool) if self.s.all_to_all else y != target
