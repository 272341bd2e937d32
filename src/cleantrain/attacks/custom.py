"""Bring your own trigger: an image file, an optional mask file, an opacity and a position.

Files: PNG/JPEG (read with Pillow) or .npy (read with allow_pickle=False); the
trigger is H×W, H×W×C or C×H×W, uint8 or floats in [0, 1]. An alpha channel
(grey+alpha, RGBA) is the mask when no mask file is given. The trigger is
pasted at (row, col), by default flush in the bottom-right corner, and the
samples are relabelled to the target (all-to-one).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import UserError
from ..registry import attacks
from ._common import check_share, check_size, load_image, match_channels, paste
from .base import Attack


@dataclass(frozen=True)
class CustomSettings:
    trigger: str = ""  # trigger image file (required)
    mask: str = ""  # mask file, values in [0, 1], same height and width; "" = the alpha channel, else all ones
    opacity: float = 1.0  # training-time opacity
    test_opacity: float | None = None  # test-time opacity; None = opacity
    row: int | None = None  # top row of the trigger; None = flush with the bottom
    col: int | None = None  # left column of the trigger; None = flush with the right side

    def check(self) -> None:
        if not self.trigger:
            raise UserError("custom: needs --attack-opt trigger=FILE (PNG, JPEG or .npy)")
        check_share("custom", "opacity", self.opacity)
        if self.test_opacity is not None:
            check_share("custom", "test_opacity", self.test_opacity)
        if (self.row is not None and self.row < 0) or (self.col is not None and self.col < 0):
            raise UserError("custom: 'row' and 'col' must be ≥ 0")


@attacks.register("custom", settings=CustomSettings)
class Custom(Attack):
    """Custom: your trigger image + mask + opacity + position, relabelled to the target."""

    def __init__(self, s: CustomSettings, shape, num_classes):
        super().__init__(s, shape, num_classes)
        check_size("custom", self.h, self.w)
        img, alpha = load_image(s.trigger, "custom: trigger", max_hw=(self.h, self.w))
        self.patch = match_channels(img, self.c, "custom: trigger")
        ph, pw = self.patch.shape[-2:]
        if s.mask:
            m, _ = load_image(s.mask, "custom: mask", max_hw=(self.h, self.w))
            if m.shape[-2:] != (ph, pw):
                raise UserError(f"custom: mask is {m.shape[1]}×{m.shape[2]} px, trigger is {ph}×{pw} px")
            if m.shape[0] != 1:
                raise UserError("custom: the mask must have one channel")
            self.mask = m[0]
        else:
            self.mask = alpha if alpha is not None else torch.ones(ph, pw)
        self.top = self.h - ph if s.row is None else s.row
        self.left = self.w - pw if s.col is None else s.col
        if self.top + ph > self.h or self.left + pw > self.w:
            raise UserError(f"custom: a {ph}×{pw} trigger at row {self.top}, col {self.left} "
                            f"does not fit {self.h}×{self.w} images")

    def _paste(self, x, opacity):
        return paste(x, self.patch, self.top, self.left, opacity, self.mask)

    def trigger(self, x):
        return self._paste(x, self.s.opacity if self.s.test_opacity is None else self.s.test_opacity)

    def stamp(self, x, rng):
        return self._paste(x, self.s.opacity)
