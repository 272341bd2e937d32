"""Adaptive-Patch (Qi et al. 2023, "Revisiting the assumption of latent separability").

k = 4 different patch triggers, each stamped at a low opacity (0.5, 0.2, 0.5,
0.3) on a quarter of the poison samples and a quarter of the cover samples;
cover samples (2× the poison samples) keep their labels. At test time two
patches are stamped at opacity 1: a stronger (larger) variant of the first
corner patch plus one of the training patches.

The published patches are image files (a logo in a corner, a second corner
logo, a BadNets-like 4×4 patch, Trojan's square); ours are made by code from
`pattern_seed`: random 0/1 corner patches, a checkerboard and concentric rings.
Sizes are published for 32 px and scaled to the image side (`scaled`), which keeps
each patch's share of the image when the data is 28 px.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import UserError
from ..registry import attacks
from ._common import check_share, check_size, checkerboard, paste, random_pattern, rings, split_groups
from .base import Attack, scaled


@dataclass(frozen=True)
class AdaptivePatchSettings:
    opacities: tuple[float, ...] = (0.5, 0.2, 0.5, 0.3)  # training opacity of each of the 4 patches (published)
    test_opacity: float = 1.0  # opacity of the two test-time patches (published 1)
    test_patch: int = 2  # which training patch joins the strong corner patch at test time (BadNets-like)
    cover_ratio: float = 2.0  # cover samples per poison sample (published: cover rate 2× poison rate)
    pattern_seed: int = 0  # seed of the random corner patches

    def check(self) -> None:
        if len(self.opacities) != 4:
            raise UserError(f"adaptive_patch: 'opacities' needs 4 values (one per patch), got {len(self.opacities)}")
        for a in self.opacities:
            check_share("adaptive_patch", "opacities", a)
        check_share("adaptive_patch", "test_opacity", self.test_opacity)
        if not 0 <= self.test_patch < 4:
            raise UserError(f"adaptive_patch: 'test_patch' must be 0..3, got {self.test_patch}")
        if self.cover_ratio < 0:
            raise UserError("adaptive_patch: 'cover_ratio' must be ≥ 0")


@attacks.register("adaptive_patch", settings=AdaptivePatchSettings)
class AdaptivePatch(Attack):
    """Adaptive-Patch: 4 low-opacity patches, each on a quarter of poison and cover (2×) samples; test: opacity 1."""

    def __init__(self, s: AdaptivePatchSettings, shape, num_classes):
        super().__init__(s, shape, num_classes)
        check_size("adaptive_patch", self.h, self.w)
        side = min(self.h, self.w)
        c, h, w = self.shape
        corner, strong, small, square = scaled(6, side), scaled(9, side), scaled(4, side), scaled(8, side)
        big = random_pattern(s.pattern_seed, c, strong, strong, binary=True)
        other = random_pattern(s.pattern_seed + 1, c, corner, corner, binary=True)
        # (patch C×p×p, top, left): top-left corner, top-right corner, bottom-left checkerboard, bottom-right rings
        self.patches = [
            (big[:, :corner, :corner], 0, 0),
            (other, 0, w - corner),
            (checkerboard(small).expand(c, -1, -1), h - small, 0),
            (rings(square).expand(c, -1, -1), h - square, w - square),
        ]
        # the stronger test-time variant of the first corner patch: the same pattern, larger
        self.strong = (big, 0, 0)

    def trigger(self, x):
        for patch, top, left in (self.strong, self.patches[self.s.test_patch]):
            x = paste(x, patch, top, left, self.s.test_opacity)
        return x

    def stamp(self, x, rng):
        group = torch.from_numpy(split_groups(len(x), len(self.patches), rng))
        out = x.clone()
        for i, ((patch, top, left), a) in enumerate(zip(self.patches, self.s.opacities)):
            sel = group == i
            if sel.any():
                out[sel] = paste(x[sel], patch, top, left, a)
        return out

    def cover_count(self, n_poison):
        return int(round(self.s.cover_ratio * n_poison))
