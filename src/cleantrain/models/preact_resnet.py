"""PreAct-ResNet-18 (He et al. 2016, "Identity Mappings"), the CIFAR variant
used by BackdoorBench and the ABL paper: 3×3 stem, blocks BN→ReLU→conv twice,
64/128/256/512 channels, a final BN→ReLU, global average pooling, linear head.

Inputs up to 64 px keep the stride-1 stem; larger ones are reduced in the stem.

Conv units (layer2–layer4 and their shortcut convs, as for ResNet-18 in
methods.md). In a pre-activation block the BN that follows a conv lives in
the *next* position:
- A block's first conv: its output goes straight into the same block's `bn2`,
  which normalises that conv's channels only, so `bn` = `bn2` and the
  consumer is the block's `conv2` — an exact reset.
- A block's second conv and a shortcut conv: their outputs are summed into
  the residual stream, and the BN after them (the next block's `bn1`, or the
  final `bn`) normalises the *sum*. Resetting that BN's γ/β would silence the
  whole stream channel (the identity path too), so these units have
  `bn=None` and no consumers: zeroing the filter (these convs have no bias)
  makes the branch add exactly 0 for that channel. Known limit (methods.md):
  the identity path is untouched.
"""

from __future__ import annotations

from torch import nn
from torch.nn import functional as F

from ..registry import models
from ._layers import residual_stages, stage_units, stem
from .base import ConvUnit, Net


class PreActBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.shortcut: nn.Conv2d | None = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride=stride, bias=False)

    def forward(self, x):
        out = F.relu(self.bn1(x))
        short = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + short

    def units(self, prefix: str) -> list[ConvUnit]:
        units = [
            ConvUnit(f"{prefix}.conv1", self.conv1, self.bn2, [self.conv2]),
            ConvUnit(f"{prefix}.conv2", self.conv2, None, []),
        ]
        if self.shortcut is not None:
            units.append(ConvUnit(f"{prefix}.shortcut", self.shortcut, None, []))
        return units


class PreActResNet(Net):
    def __init__(self, in_channels: int, num_classes: int, image_size: int, mean, std,
                 blocks: tuple[int, ...] = (2, 2, 2, 2), widths: tuple[int, ...] = (64, 128, 256, 512)):
        super().__init__(in_channels, num_classes, mean, std)
        self.stem = stem(in_channels, widths[0], image_size, bn=False)
        stages, cin = residual_stages(PreActBlock, widths[0], blocks, widths)
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.bn = nn.BatchNorm2d(cin)
        self.head = nn.Linear(cin, num_classes)

    def embed(self, x):
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = F.relu(self.bn(x))
        return F.adaptive_avg_pool2d(x, 1).flatten(1)

    def conv_units(self) -> list[ConvUnit]:
        return stage_units(self)


@models.register("preact-resnet18")
def preact_resnet18(in_channels: int, num_classes: int, image_size: int, mean, std) -> Net:
    """PreAct-ResNet-18, CIFAR variant (≈11.2M parameters); BackdoorBench's default; slow on CPU."""
    return PreActResNet(in_channels, num_classes, image_size, mean, std)
