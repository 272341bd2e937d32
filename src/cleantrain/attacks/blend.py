"""Blended (Chen et al. 2017): x' = (1 − α)·x + α·t with a full-size pattern t, relabelled."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..registry import attacks
from ._common import blend, check_share, check_size, load_image, match_channels, random_pattern, resize
from .base import Attack


@dataclass(frozen=True)
class BlendSettings:
    alpha: float = 0.2  # blend ratio at training time (published 0.2)
    test_alpha: float | None = None  # blend ratio of the test-time trigger; None = alpha (published 0.2)
    pattern: str = ""  # image file (PNG/JPEG or .npy) resized to the images; "" = fixed random pattern
    pattern_seed: int = 0  # seed of the default random pattern (the published cartoon cannot be shipped)

    def check(self) -> None:
        check_share("blend", "alpha", self.alpha)
        if self.test_alpha is not None:
            check_share("blend", "test_alpha", self.test_alpha)


def full_pattern(key: str, path: str, seed: int, shape: tuple[int, int, int]) -> torch.Tensor:
    """The C×H×W blend pattern: a file resized to the images, or a seeded uniform random pattern."""
    c, h, w = shape
    if not path:
        return random_pattern(seed, c, h, w)
    img, _ = load_image(path, f"{key}: pattern")
    return resize(match_channels(img, c, f"{key}: pattern"), h, w)


@attacks.register("blend", settings=BlendSettings)
class Blend(Attack):
    """Blended: a full-size pattern mixed in at α = 0.2, relabelled to the target."""

    def __init__(self, s: BlendSettings, shape, num_classes):
        super().__init__(s, shape, num_classes)
        check_size("blend", self.h, self.w)
        self.pattern = full_pattern("blend", s.pattern, s.pattern_seed, self.shape)

    def trigger(self, x):
        a = self.s.alpha if self.s.test_alpha is None else self.s.test_alpha
        return blend(x, self.pattern, a)

    def stamp(self, x, rng):
        return blend(x, self.pattern, self.s.alpha)

