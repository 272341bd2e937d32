"""WaNet (Nguyen & Tran 2021): warp the image by a smooth random flow field, relabel.

The flow field is a k×k grid of random offsets, normalised to mean |offset| 1,
upsampled bicubically to the image and scaled by s / size, so a pixel moves by
about s/2 pixels at most of the image: the warp is hard to see. "Noise mode"
cover samples are warped by the same field plus one fixed extra random grid
and keep their labels, so that the model must learn the exact warp.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import UserError
from ..registry import attacks
from ._common import check_size
from .base import Attack


@dataclass(frozen=True)
class WanetSettings:
    k: int = 4  # side of the random control grid (published 4)
    s: float = 0.5  # warping strength (published 0.5); in units of the image size, so no rescaling
    grid_rescale: float = 1.0  # published 1
    cover_ratio: float = 2.0  # noise-mode cover samples per poison sample (published cross ratio 2)
    pattern_seed: int = 0  # seed of the flow field and of the cover samples' extra grid

    def check(self) -> None:
        if self.k < 2:
            raise UserError(f"wanet: 'k' must be ≥ 2, got {self.k}")
        if not 0 < self.s <= 10 or not 0 < self.grid_rescale <= 10:
            raise UserError("wanet: 's' and 'grid_rescale' must lie in (0, 10]")
        if self.cover_ratio < 0:
            raise UserError("wanet: 'cover_ratio' must be ≥ 0")


@attacks.register("wanet", settings=WanetSettings)
class Wanet(Attack):
    """WaNet: a subtle smooth warp (k = 4, s = 0.5), relabelled; noise-mode covers (2×) keep their labels."""

    def __init__(self, s: WanetSettings, shape, num_classes):
        super().__init__(s, shape, num_classes)
        check_size("wanet", self.h, self.w)
        if s.k > min(self.h, self.w):
            raise UserError(f"wanet: control grid k={s.k} is larger than the {self.h}×{self.w} image")
        g = torch.Generator().manual_seed(s.pattern_seed)
        ins = torch.rand(1, 2, s.k, s.k, generator=g, dtype=torch.float64) * 2 - 1
        ins = ins / ins.abs().mean()
        flow = F.interpolate(ins, size=(self.h, self.w), mode="bicubic", align_corners=True)
        flow = flow.permute(0, 2, 3, 1)  # 1×H×W×2, (dx, dy)
        ys = torch.linspace(-1, 1, self.h, dtype=torch.float64)
        xs = torch.linspace(-1, 1, self.w, dtype=torch.float64)
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        identity = torch.stack((gx, gy), -1)[None]
        scale = torch.tensor([self.w, self.h], dtype=torch.float64)  # offsets relative to each side
        grid = (identity + s.s * flow / scale) * s.grid_rescale
        self.grid = grid.clamp(-1, 1).float()
        extra = torch.rand(1, self.h, self.w, 2, generator=g, dtype=torch.float64) * 2 - 1
        self.cover_grid = (grid + extra / scale).clamp(-1, 1).float()

    @staticmethod
    def _warp(x, grid):
        return F.grid_sample(x, grid.to(x.device).expand(len(x), -1, -1, -1), mode="bilinear",
                             padding_mode="zeros", align_corners=True).clamp(0, 1)

    def trigger(self, x):
        return self._warp(x, self.grid)

    def cover_count(self, n_poison):
        return int(round(self.s.cover_ratio * n_poison))

    def cover_candidates(self, y, target):
        return torch.ones_like(y, dtype=torch.bool)

    def stamp_cover(self, x, rng):
        return self._warp(x, self.cover_grid)
