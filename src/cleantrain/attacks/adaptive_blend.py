"""Adaptive-Blend (Qi et al. 2023, "Revisiting the assumption of latent separability").

Training samples get the blend pattern at a low α = 0.15 through a random mask
that keeps 8 of the 16 tiles of a 4×4 grid (a fresh mask per sample); as many
cover samples get the same treatment but keep their labels. At test time the
full pattern is blended at α = 0.2. Poison and clean latents stay close, which
defeats latent-separation detectors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import UserError
from ..registry import attacks
from ._common import blend, check_share, check_size
from .base import Attack
from .blend import full_pattern


@dataclass(frozen=True)
class AdaptiveBlendSettings:
    alpha: float = 0.15  # training-time blend ratio (published 0.15)
    test_alpha: float = 0.2  # test-time blend ratio, full pattern (published 0.2)
    grid: int = 4  # the mask's tiles form a grid×grid layout (published 4×4 = 16 pieces)
    keep: int = 8  # tiles kept per sample (published mask rate 0.5: 8 of 16)
    cover_ratio: float = 1.0  # cover samples per poison sample (published: same number)
    pattern: str = ""  # image file (PNG/JPEG or .npy) resized to the images; "" = fixed random pattern
    pattern_seed: int = 0  # seed of the default random pattern

    def check(self) -> None:
        check_share("adaptive_blend", "alpha", self.alpha)
        check_share("adaptive_blend", "test_alpha", self.test_alpha)
        if self.grid < 1 or not 1 <= self.keep <= self.grid * self.grid:
            raise UserError("adaptive_blend: need 'grid' ≥ 1 and 1 ≤ 'keep' ≤ grid²")
        if self.cover_ratio < 0:
            raise UserError("adaptive_blend: 'cover_ratio' must be ≥ 0")


@attacks.register("adaptive_blend", settings=AdaptiveBlendSettings)
class AdaptiveBlend(Attack):
    """Adaptive-Blend: α = 0.15 through a random half of a 4×4 tile mask, covers keep labels; test α = 0.2."""

    def __init__(self, s: AdaptiveBlendSettings, shape, num_classes):
        super().__init__(s, shape, num_classes)
        check_size("adaptive_blend", self.h, self.w)
        if s.grid > min(self.h, self.w):
            raise UserError(f"adaptive_blend: a {s.grid}×{s.grid} tile grid does not fit {self.h}×{self.w} images")
        self.pattern = full_pattern("adaptive_blend", s.pattern, s.pattern_seed, self.shape)
        # tile id of every pixel; tile borders rounded for sizes the grid does not divide
        rows = torch.arange(self.h) * s.grid // self.h
        cols = torch.arange(self.w) * s.grid // self.w
        self.tile = rows[:, None] * s.grid + cols[None, :]  # H×W in 0..grid²−1

    def trigger(self, x):
        return blend(x, self.pattern, self.s.test_alpha)

    def masks(self, n: int, rng: np.random.Generator) -> torch.Tensor:
        """n random H×W masks, each keeping `keep` of the grid² tiles."""
        pieces = self.s.grid * self.s.grid
        chosen = np.argsort(rng.random((n, pieces)), axis=1)[:, :self.s.keep]
        keep = np.zeros((n, pieces), dtype=np.float32)
        np.put_along_axis(keep, chosen, 1.0, axis=1)
        return torch.from_numpy(keep)[:, self.tile]  # n×H×W

    def stamp(self, x, rng):
        m = self.masks(len(x), rng).to(x.device)[:, None]
        return blend(x, self.pattern, self.s.alpha * m)

    def cover_count(self, n_poison):
        return int(round(self.s.cover_ratio * n_poison))
