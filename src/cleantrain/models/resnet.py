"""ResNet-18 (He et al. 2016), the CIFAR variant: 3×3 stem, no max pool,
stages of 64/128/256/512 channels, global average pooling, one linear head.

Inputs up to 64 px keep the stride-1 stem (28-px and 32-px images end in 4×4
maps before pooling); larger inputs are reduced in the stem (see `_layers.stem`).

Conv units (what a neuron-level defense such as NONE monitors and resets),
following methods.md: the convs of layer2–layer4 and their downsample paths.
- A block's first conv: `bn` is the block's `bn1`, its consumer the block's
  `conv2`. Zeroing the filter, γ/β and `conv2`'s input slice removes the
  channel exactly.
- A block's second conv and a downsample conv: their BN output is *added* to
  the other branch, so that sum carries the residual stream. `bn` is the
  branch's own BN (`bn2`, resp. the downsample BN); zeroing filter and γ/β
  makes the branch contribute exactly 0 for that channel. `consumers` is
  empty: the next block's convs (or the head) read the *sum*, and zeroing
  their input slice would cut the identity path too. Known limit (methods.md):
  the identity path is untouched, so what earlier blocks wrote into a reset
  channel still flows past it.
Recording: `unit.conv`'s output is the raw conv output (before BN and ReLU);
methods.md records downsample paths *after* their BN, i.e. `unit.bn`'s output.
"""

from __future__ import annotations

from torch import nn
from torch.nn import functional as F

from ..registry import models
from ._layers import residual_stages, stage_units, stem
from .base import ConvUnit, Net


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample: nn.Sequential | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        short = x if self.downsample is None else self.downsample(x)
        return F.relu(out + short, inplace=True)

    def units(self, prefix: str) -> list[ConvUnit]:
        units = [
            ConvUnit(f"{prefix}.conv1", self.conv1, self.bn1, [self.conv2]),
            ConvUnit(f"{prefix}.conv2", self.conv2, self.bn2, []),
        ]
        if self.downsample is not None:
            units.append(ConvUnit(f"{prefix}.downsample", self.downsample[0], self.downsample[1], []))
        return units


class ResNet(Net):
    def __init__(self, in_channels: int, num_classes: int, image_size: int, mean, std,
                 blocks: tuple[int, ...] = (2, 2, 2, 2), widths: tuple[int, ...] = (64, 128, 256, 512)):
        super().__init__(in_channels, num_classes, mean, std)
        self.stem = stem(in_channels, widths[0], image_size, bn=True)
        stages, cin = residual_stages(BasicBlock, widths[0], blocks, widths)
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.head = nn.Linear(cin, num_classes)

    def embed(self, x):
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return F.adaptive_avg_pool2d(x, 1).flatten(1)

    def conv_units(self) -> list[ConvUnit]:
        return stage_units(self)


@models.register("resnet18")
def resnet18(in_channels: int, num_classes: int, image_size: int, mean, std) -> Net:
    """ResNet-18, CIFAR variant (≈11.2M parameters); slow on CPU."""
    return ResNet(in_channels, num_classes, image_size, mean, std)
