"""VGG-11 with BatchNorm (Simonyan & Zisserman 2015), the CIFAR variant:
eight 3×3 conv-BN-ReLU layers (64, M, 128, M, 256, 256, M, 512, 512, M,
512, 512, M), global average pooling and one linear head (≈9.2M parameters).

The five 2×2 max pools halve the map only while both sides are ≥ 2 px, so
32-px inputs end at 1×1 after five pools and 28-px inputs after four
(28→14→7→3→1, the fifth is skipped); any input ≥ 8 px works. Inputs over
64 px are reduced in the stem first.

Conv units: every conv, the first included (methods.md: "for plain CNNs
(NiN, VGG) every hidden conv layer"); `bn` is the BN right after it, the
consumer the next conv, or the head for the last one (its channels reach the
head directly through global pooling).
"""

from __future__ import annotations

from torch import nn

from ..registry import models
from ._layers import HalvePool, stem_halvings
from .base import ConvUnit, Net

VGG11 = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class VGG(Net):
    def __init__(self, in_channels: int, num_classes: int, image_size: int, mean, std, cfg=VGG11):
        super().__init__(in_channels, num_classes, mean, std)
        # large inputs: average-pool the raw image down to ≤ 64 px first
        layers: list[nn.Module] = [nn.AvgPool2d(2, ceil_mode=True) for _ in range(stem_halvings(image_size))]
        self.convs: list[nn.Conv2d] = []
        self.bns: list[nn.BatchNorm2d] = []
        cin = in_channels
        for v in cfg:
            if v == "M":
                layers.append(HalvePool())
                continue
            conv, bn = nn.Conv2d(cin, v, 3, padding=1, bias=False), nn.BatchNorm2d(v)
            layers += [conv, bn, nn.ReLU(inplace=True)]
            self.convs.append(conv)
            self.bns.append(bn)
            cin = v
        self.body = nn.Sequential(*layers)
        self.gpool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(cin, num_classes)

    def embed(self, x):
        return self.gpool(self.body(x)).flatten(1)

    def conv_units(self) -> list[ConvUnit]:
        nxt = self.convs[1:] + [self.head]
        return [ConvUnit(f"conv{i + 1}", c, b, [n]) for i, (c, b, n) in enumerate(zip(self.convs, self.bns, nxt))]


@models.register("vgg11-bn")
def vgg11_bn(in_channels: int, num_classes: int, image_size: int, mean, std) -> Net:
    """VGG-11 with BatchNorm, CIFAR variant (≈9.2M parameters)."""
    return VGG(in_channels, num_classes, image_size, mean, std)
