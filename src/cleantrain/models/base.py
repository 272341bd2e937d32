"""The contract every model keeps, so defenses can hook any architecture.

A `Net` takes images in [0, 1] and normalises them itself (the dataset's
mean/std are buffers saved with the weights). It exposes:
- `features(x)`: the penultimate feature vector (what detectors cluster);
- `head`: the final linear layer;
- `conv_units()`: the hidden conv layers a neuron-level defense may monitor
  and reset, each with its BatchNorm and the layers that read its channels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import UserError
from ..registry import models


@dataclass
class ConvUnit:
    """One monitored conv: its output channels can be reset as a whole."""

    name: str
    conv: nn.Conv2d
    bn: nn.BatchNorm2d | None = None
    # modules whose *input* channels are this conv's output channels (next conv,
    # or the head when the channels feed it directly after global pooling)
    consumers: list[nn.Module] = field(default_factory=list)


class Net(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, mean: list[float], std: list[float]):
        super().__init__()
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def embed(self, x: torch.Tensor) -> torch.Tensor:  # normalised input -> features
        raise NotImplementedError

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(self.normalize(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def conv_units(self) -> list[ConvUnit]:
        raise NotImplementedError


def make_model(key: str, in_channels: int, num_classes: int, image_size: int,
               mean: list[float] | None = None, std: list[float] | None = None) -> Net:
    """Build a registered architecture for images of this shape."""
    build = models.get(key)
    if image_size < 8:
        raise UserError(f"model {key!r}: images of {image_size} px are too small (min 8)")
    mean = mean if mean is not None else [0.5] * in_channels
    std = std if std is not None else [0.5] * in_channels
    if len(mean) != in_channels or len(std) != in_channels:
        raise UserError(f"model {key!r}: mean/std need {in_channels} channel values")
    return build(in_channels=in_channels, num_classes=num_classes, image_size=image_size, mean=mean, std=std)
