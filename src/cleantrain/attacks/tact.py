"""TaCT (Tang et al. 2021): source-specific; only source-class samples are stamped and relabelled.

Cover samples of other classes carry the same trigger but keep their labels, so
the model learns "trigger on a source-class image" rather than "trigger". The
trigger is Trojan's square patch, as in the CT paper's toolbox.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import UserError
from ..registry import attacks
from ._common import WholeClassCap
from .trojan import Trojan, TrojanSettings


@dataclass(frozen=True)
class TactSettings(TrojanSettings):
    source: int = 1  # the one class whose samples are poisoned (CIFAR-10 setting: 1)
    cover_classes: tuple[int, ...] = (5, 7)  # stamped, labels kept (CIFAR-10 setting: 5 and 7)
    cover_ratio: float = 1.0  # cover samples per poison sample (CT's toolbox: cover rate = poison rate)

    def check(self) -> None:
        super().check()
        if self.source < 0 or any(c < 0 for c in self.cover_classes):
            raise UserError("tact: 'source' and 'cover_classes' must be class indices ≥ 0")
        if self.source in self.cover_classes:
            raise UserError(f"tact: source class {self.source} cannot also be a cover class")
        if self.cover_ratio < 0:
            raise UserError("tact: 'cover_ratio' must be ≥ 0")
        if self.cover_ratio > 0 and not self.cover_classes:
            raise UserError("tact: 'cover_ratio' > 0 needs at least one cover class")


@attacks.register("tact", settings=TactSettings)
class Tact(WholeClassCap, Trojan):
    """TaCT: source class (default 1) stamped and relabelled; covers from classes 5 and 7 keep their labels.

    A rate asking for more samples than the source class holds poisons the whole class."""

    def __init__(self, s: TactSettings, shape, num_classes):
        super().__init__(s, shape, num_classes)
        bad = [c for c in (s.source, *s.cover_classes) if c >= num_classes]
        if bad:
            raise UserError(f"tact: class {bad[0]} out of range [0, {num_classes - 1}]")
        self.cover_set = torch.tensor(s.cover_classes, dtype=torch.int64)

    def check_target(self, target):
        super().check_target(target)
        if target == self.s.source or target in self.s.cover_classes:
            raise UserError(f"tact: target {target} must differ from the source class {self.s.source} "
                            f"and the cover classes {list(self.s.cover_classes)}")

    def candidates(self, y, target):
        return y == self.s.source

    def cover_count(self, n_poison):
        return int(round(self.s.cover_ratio * n_poison))

    def cover_candidates(self, y, target):
        return torch.isin(y, self.cover_set.to(y.device))

    def test_mask(self, y, target):
        return y == self.s.source
