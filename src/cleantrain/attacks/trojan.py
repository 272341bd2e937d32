"""Trojan (Liu et al. 2018, TrojanNN): a larger square patch, relabelled to the target.

TrojanNN optimises its patch against a trained model; toolkits (BackdoorBench,
Qi et al.'s backdoor-toolbox) ship a fixed square image instead. We make that
square by code: concentric black/white rings, 8×8 at 32 px.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..errors import UserError
from ..registry import attacks
from ._common import check_size, paste, random_pattern, rings
from .base import Attack, scaled


@dataclass(frozen=True)
class TrojanSettings:
    size: int = 8  # patch side at 32 px; scaled to the image (7 px at 28 px: same share of the side, 1/4)
    margin: int = 0  # distance from the bottom-right corner at 32 px (scaled the same way)
    pattern: Literal["rings", "random"] = "rings"  # concentric square rings, or seeded random 0/1 pixels
    pattern_seed: int = 0  # seed of the "random" pattern

    def check(self) -> None:
        if self.size < 1 or self.margin < 0:
            raise UserError("trojan: 'size' must be ≥ 1 and 'margin' ≥ 0")


@attacks.register("trojan", settings=TrojanSettings)
class Trojan(Attack):
    """Trojan: an 8×8 (at 32 px) square patch in the bottom-right corner, relabelled to the target."""

    def __init__(self, s: TrojanSettings, shape, num_classes):
        super().__init__(s, shape, num_classes)
        name = type(self).__name__.lower()  # "trojan", or "tact" for the subclass
        check_size(name, self.h, self.w)
        side = min(self.h, self.w)
        self.size, self.margin = scaled(s.size, side), (scaled(s.margin, side) if s.margin else 0)
        if self.size + self.margin > side:
            raise UserError(f"{name}: a {self.size}-px patch at margin {self.margin} does not fit {self.h}×{self.w} images")
        if s.pattern == "rings":
            self.patch = rings(self.size).expand(self.c, -1, -1)
        else:
            self.patch = random_pattern(s.pattern_seed, self.c, self.size, self.size, binary=True)

    def trigger(self, x):
        top, left = self.h - self.margin - self.size, self.w - self.margin - self.size
        return paste(x, self.patch, top, left)
