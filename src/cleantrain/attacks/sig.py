"""SIG (Barni et al. 2019): clean-label; target-class samples get a horizontal sinusoid."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import UserError
from ..registry import attacks
from ._common import WholeClassCap, check_size
from .base import Attack


@dataclass(frozen=True)
class SigSettings:
    delta: float = 30.0  # amplitude Δ in 0–255 pixel units (CT's setting; BackdoorBench uses 40)
    freq: float = 6.0  # periods across the image width (f = 6); tied to the width, so any size works
    test_delta: float | None = None  # amplitude of the test-time signal; None = delta (published: same Δ)

    def check(self) -> None:
        for name, v in (("delta", self.delta), ("test_delta", self.test_delta)):
            if v is not None and not 0 < v <= 255:
                raise UserError(f"sig: {name!r} must lie in (0, 255], got {v}")
        if not 0 < self.freq:
            raise UserError(f"sig: 'freq' must be > 0, got {self.freq}")


@attacks.register("sig", settings=SigSettings)
class Sig(WholeClassCap, Attack):
    """SIG: clean-label sinusoid x' = clip(x + v), v(i, j) = Δ·sin(2πjf/m), on target-class samples only.

    Only target-class samples are stamped, so labels never change. A rate asking
    for more samples than the target class holds poisons the whole class."""

    def __init__(self, s: SigSettings, shape, num_classes):
        super().__init__(s, shape, num_classes)
        check_size("sig", self.h, self.w)
        j = torch.arange(self.w, dtype=torch.float32)
        self.wave = torch.sin(2 * math.pi * j * s.freq / self.w)[None, None, None, :]  # varies along columns

    def _add(self, x, delta):
        return (x + delta / 255.0 * self.wave.to(x.device)).clamp(0, 1)

    def trigger(self, x):
        return self._add(x, self.s.delta if self.s.test_delta is None else self.s.test_delta)

    def stamp(self, x, rng):
        return self._add(x, self.s.delta)

    def candidates(self, y, target):
        return y == target

    # label_map stays all-to-one: on the candidates (all of the target class) it is the
    # identity, so training labels never change, and at test time it names the target.
