"""The attack contract: `poison(data, rate, target, seed)` and `apply(images)`.

An attack is built for one image shape and class count (`make_attack`); its
trigger patterns come from its settings (and `pattern_seed` where random), so
`apply` needs nothing else. Subclasses override the few hooks that differ:
- `stamp(x, rng)`: the training-time trigger on float images in [0, 1]
  (defaults to the test-time `trigger`);
- `trigger(x)`: the test-time trigger, float in, float out;
- `candidates(y, target)`: which samples may be poisoned;
- `label_map(y, target)`: the poisoned label (all-to-one by default);
- `covers(...)`: cover samples that carry a trigger but keep their label;
- `test_mask(y, target)`: which test samples count for ASR.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any

import numpy as np
import torch

from ..config import as_dict, build
from ..data.core import CLEAN, COVER, POISON, ImageData, PoisonedData
from ..errors import UserError
from ..registry import attacks


def to_unit(x: torch.Tensor) -> torch.Tensor:
    return x.float() / 255.0


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    return (x.clamp(0, 1) * 255.0).round().to(torch.uint8)


def scaled(px_at_32: int, size: int) -> int:
    """A pixel size published for 32-px images, scaled to this image size (≥ 1)."""
    return max(1, round(px_at_32 * size / 32))


class Attack:
    key = ""

    def __init__(self, settings: Any, shape: tuple[int, int, int], num_classes: int):
        self.s = settings
        self.shape = tuple(shape)
        self.c, self.h, self.w = self.shape
        self.num_classes = num_classes

    # ------------------------------------------------------------- hooks
    def trigger(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def stamp(self, x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        return self.trigger(x)

    def candidates(self, y: torch.Tensor, target: int) -> torch.Tensor:
        return y != target

    def label_map(self, y: torch.Tensor, target: int) -> torch.Tensor:
        return torch.full_like(y, target)

    def cover_count(self, n_poison: int) -> int:
        return 0

    def cover_candidates(self, y: torch.Tensor, target: int) -> torch.Tensor:
        return torch.ones_like(y, dtype=torch.bool)

    def stamp_cover(self, x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        return self.stamp(x, rng)

    def test_mask(self, y: torch.Tensor, target: int) -> torch.Tensor:
        return y != target

    def check_target(self, target: int) -> None:
        if not 0 <= target < self.num_classes:
            raise UserError(f"target class {target} out of range [0, {self.num_classes - 1}]")

    # ---------------------------------------------------------- contract
    def apply(self, images: torch.Tensor) -> torch.Tensor:
        """Test-time trigger on uint8 images N×C×H×W."""
        return to_uint8(self.trigger(to_unit(images)))

    def poison(self, data: ImageData, rate: float, target: int, seed: int) -> PoisonedData:
        if not (isinstance(rate, (int, float)) and 0 < rate < 1 and math.isfinite(rate)):
            raise UserError(f"poisoning rate must lie in (0, 1), got {rate}")
        self.check_target(target)
        if data.shape != self.shape:
            raise UserError(f"attack built for images {self.shape}, data has {data.shape}")
        rng = np.random.default_rng(seed)
        n = len(data)
        n_poison = int(round(rate * n))
        pool = torch.nonzero(self.candidates(data.y.cpu(), target)).flatten().numpy()
        if n_poison == 0:
            raise UserError(f"rate {rate} poisons zero of {n} samples; raise the rate or use more data")
        if n_poison > len(pool):
            raise UserError(f"rate {rate} needs {n_poison} samples but only {len(pool)} can be poisoned")
        idx = np.sort(rng.choice(pool, n_poison, replace=False))
        x = data.x.clone()
        y = data.y.clone()
        kind = torch.zeros(n, dtype=torch.int8)
        t_idx = torch.from_numpy(idx)
        x[t_idx] = to_uint8(self.stamp(to_unit(x[t_idx]), rng))
        y[t_idx] = self.label_map(y[t_idx], target)
        kind[t_idx] = POISON
        n_cover = self.cover_count(n_poison)
        if n_cover:
            cmask = self.cover_candidates(data.y.cpu(), target)
            cmask[t_idx] = False
            cpool = torch.nonzero(cmask).flatten().numpy()
            if n_cover > len(cpool):
                raise UserError(f"{self.key}: needs {n_cover} cover samples, only {len(cpool)} available")
            cidx = torch.from_numpy(np.sort(rng.choice(cpool, n_cover, replace=False)))
            x[cidx] = to_uint8(self.stamp_cover(to_unit(x[cidx]), rng))
            kind[cidx] = COVER
        desc = {"attack": self.key, "rate": rate, "target": target, "seed": seed,
                "settings": as_dict(self.s), "dataset": data.name}
        out = ImageData(x, y, data.classes, hflip=data.hflip, name=data.name)
        return PoisonedData(out, data.y.clone(), kind, desc)

    def test_set(self, test: ImageData, target: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(triggered uint8 images, attacker's labels, true labels) for ASR / RA."""
        mask = self.test_mask(test.y.cpu(), target).to(test.y.device)
        y = test.y[mask]
        return self.apply(test.x[mask].cpu()).to(test.x.device), self.label_map(y, target), y


def make_attack(key: str, options: dict[str, Any] | None, shape: tuple[int, int, int], num_classes: int) -> Attack:
    """Build attack `key` for images of `shape`, validating its options."""
    entry = attacks.entry(key)
    settings = build(entry.settings, options, where=f"attack {key!r}") if entry.settings else None
    att = entry.obj(settings, tuple(shape), num_classes)
    att.key = key
    return att


def attack_from_description(desc: dict[str, Any], shape, num_classes: int) -> tuple[Attack, int] | None:
    """Rebuild the attack recorded in a PoisonedData (None for clean data)."""
    if not desc or not desc.get("attack"):
        return None
    settings = desc.get("settings") or {}
    if not isinstance(settings, dict):
        raise UserError("attack description: 'settings' must be a mapping")
    target = desc.get("target", 0)
    if not isinstance(target, int):
        raise UserError("attack description: 'target' must be an integer")
    return make_attack(str(desc["attack"]), settings, shape, num_classes), target


__all__ = ["Attack", "make_attack", "attack_from_description", "to_unit", "to_uint8", "scaled", "asdict"]
