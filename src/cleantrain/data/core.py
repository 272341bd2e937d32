"""The two data types every stage passes along.

`ImageData` is what a defense sees: uint8 images N×C×H×W, int64 labels, class
names. `PoisonedData` adds provenance (original label, kind per sample, the
attack's description) that only evaluation may read.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch

from ..errors import UserError

CLEAN, POISON, COVER = 0, 1, 2
KIND_NAMES = {CLEAN: "clean", POISON: "poison", COVER: "cover"}


@dataclass(frozen=True)
class ImageData:
    x: torch.Tensor  # uint8, N×C×H×W
    y: torch.Tensor  # int64, N
    classes: tuple[str, ...]
    hflip: bool = True  # whether horizontal flips are a valid augmentation
    name: str = ""

    def __post_init__(self) -> None:
        if self.x.dtype != torch.uint8 or self.x.dim() != 4:
            raise UserError(f"images must be uint8 N×C×H×W, got {self.x.dtype} {tuple(self.x.shape)}")
        if self.y.dtype != torch.int64 or self.y.dim() != 1:
            raise UserError(f"labels must be int64 of shape N, got {self.y.dtype} {tuple(self.y.shape)}")
        if len(self.x) != len(self.y):
            raise UserError(f"{len(self.x)} images but {len(self.y)} labels")
        if self.x.shape[1] not in (1, 3):
            raise UserError(f"images must have 1 or 3 channels, got {self.x.shape[1]}")
        if len(self.classes) < 2:
            raise UserError(f"need at least 2 classes, got {len(self.classes)}")
        if len(self.y) and (int(self.y.min()) < 0 or int(self.y.max()) >= len(self.classes)):
            raise UserError(
                f"labels must lie in [0, {len(self.classes) - 1}], "
                f"found {int(self.y.min())}..{int(self.y.max())}"
            )

    def __len__(self) -> int:
        return len(self.y)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.x.shape[1:])  # type: ignore[return-value]

    @property
    def device(self) -> torch.device:
        return self.x.device

    def subset(self, index: torch.Tensor) -> "ImageData":
        """Rows picked by a boolean mask or an index tensor (order kept)."""
        index = torch.as_tensor(index, device=self.x.device)
        return replace(self, x=self.x[index], y=self.y[index])

    def with_labels(self, y: torch.Tensor) -> "ImageData":
        return replace(self, y=y.to(self.y.device, torch.int64))

    def to(self, device: torch.device | str) -> "ImageData":
        device = torch.device(device)
        if self.x.device == device:
            return self
        return replace(self, x=self.x.to(device), y=self.y.to(device))

    def head(self, n: int | None, seed: int = 0) -> "ImageData":
        """A seeded random subsample of n rows (all rows when n is None or ≥ N)."""
        if n is None or n >= len(self):
            return self
        if n <= 0:
            raise UserError(f"subsample size must be positive, got {n}")
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(self), generator=g)[:n].sort().values
        return self.subset(idx.to(self.x.device))

    def channel_stats(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and std of the images in [0, 1]."""
        x = self.x.float().div_(255)
        mean = x.mean(dim=(0, 2, 3))
        std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
        return mean.tolist(), std.tolist()


@dataclass(frozen=True)
class PoisonedData:
    """A training set with its provenance. Defenses get `.data` only."""

    data: ImageData
    original: torch.Tensor  # int64 N, the label before the attack
    kind: torch.Tensor  # int8 N: CLEAN / POISON / COVER
    attack: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.data)
        if self.original.shape != (n,) or self.kind.shape != (n,):
            raise UserError("provenance arrays must have one entry per sample")
        if n and (int(self.kind.min()) < CLEAN or int(self.kind.max()) > COVER):
            raise UserError("kind must be 0 (clean), 1 (poison) or 2 (cover)")
        if n and (int(self.original.min()) < 0 or int(self.original.max()) >= self.data.num_classes):
            raise UserError("original labels out of range")

    def __len__(self) -> int:
        return len(self.data)

    @property
    def is_poison(self) -> torch.Tensor:
        return self.kind == POISON

    @property
    def is_cover(self) -> torch.Tensor:
        return self.kind == COVER

    @staticmethod
    def clean(data: ImageData) -> "PoisonedData":
        n = len(data)
        return PoisonedData(data, data.y.clone(), torch.zeros(n, dtype=torch.int8), {"attack": None})

    def subset(self, index: torch.Tensor) -> "PoisonedData":
        index = torch.as_tensor(index)
        return PoisonedData(self.data.subset(index), self.original[index], self.kind[index], self.attack)

    def counts(self) -> dict[str, int]:
        return {name: int((self.kind == k).sum()) for k, name in KIND_NAMES.items()}
