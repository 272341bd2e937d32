"""Small pieces the architecture files share (not a registered model)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def stem_halvings(image_size: int, target: int = 64) -> int:
    """How many 2× reductions bring an input down to at most `target` px.

    The CIFAR-style stems (3×3 conv, stride 1) are kept for inputs up to 64 px;
    larger inputs (e.g. a folder of 224-px photos) are reduced in the stem so
    that the cost stays that of a ≤ 64-px input.
    """
    k = 0
    while image_size > target:
        image_size = (image_size + 1) // 2
        k += 1
    return k


def stem(in_channels: int, width: int, image_size: int, bn: bool) -> nn.Sequential:
    """3×3 conv (stride 2 when the input is large), optional BN + ReLU, then
    the remaining reductions as 3×3 max pools."""
    k = stem_halvings(image_size)
    layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 3, stride=2 if k else 1, padding=1, bias=False)]
    if bn:
        layers += [nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
    layers += [nn.MaxPool2d(3, stride=2, padding=1) for _ in range(max(0, k - 1))]
    return nn.Sequential(*layers)


class HalvePool(nn.Module):
    """2×2 max pool that leaves a map alone once a side is below 2 px, so a
    fixed stack of pools works for 28-px and 32-px (or any ≥ 8-px) inputs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] < 2 or x.shape[-2] < 2:
            return x
        return F.max_pool2d(x, 2)


def residual_stages(block, cin: int, blocks: tuple[int, ...], widths: tuple[int, ...]) -> tuple[list[nn.Sequential], int]:
    """ResNet-style stages: stage i has blocks[i] blocks of widths[i] channels, the first of
    every stage after the first with stride 2. Returns the stages and the final width."""
    stages = []
    for i, (n, w) in enumerate(zip(blocks, widths)):
        stage = []
        for j in range(n):
            stage.append(block(cin, w, 2 if i > 0 and j == 0 else 1))
            cin = w
        stages.append(nn.Sequential(*stage))
    return stages, cin


def stage_units(net: nn.Module, names: tuple[str, ...] = ("layer2", "layer3", "layer4")) -> list:
    """The conv units of every block in the named stages (each block lists its own)."""
    return [u for name in names for j, block in enumerate(getattr(net, name)) for u in block.units(f"{name}.{j}")]
