"""WRN-16-1 (Zagoruyko & Komodakis 2016), the network of the ABL paper's
CIFAR-10 results: 3×3 stem of 16 channels, three groups of two
pre-activation blocks with 16/32/64 channels (width factor 1), a final
BN→ReLU, global average pooling, linear head (≈0.18M parameters).

Blocks are the pre-activation blocks of `preact_resnet` (shortcut conv on the
activated input when the shape changes, as in the WRN reference code).

Conv units follow the ResNet-18 rule of methods.md — every stage but the
first: the block convs and shortcut convs of groups 2 and 3. The BN / consumer
choice per conv is the pre-activation one documented in `preact_resnet`
(first conv: `bn2` of its block + the block's second conv; second conv and
shortcut: no BN of their own, no consumers, identity path untouched).
"""

from __future__ import annotations

from torch import nn
from torch.nn import functional as F

from ..registry import models
from ._layers import stem
from .base import ConvUnit, Net
from .preact_resnet import PreActBlock


class WideResNet(Net):
    def __init__(self, in_channels: int, num_classes: int, image_size: int, mean, std,
                 depth: int = 16, widen: int = 1):
        super().__init__(in_channels, num_classes, mean, std)
        if (depth - 4) % 6:
            raise ValueError("WRN depth must be 6n + 4")
        n = (depth - 4) // 6
        widths = (16 * widen, 32 * widen, 64 * widen)
        self.stem = stem(in_channels, 16, image_size, bn=False)
        cin, groups = 16, []
        for i, w in enumerate(widths):
            group = []
            for j in range(n):
                group.append(PreActBlock(cin, w, (1 if i == 0 else 2) if j == 0 else 1))
                cin = w
            groups.append(nn.Sequential(*group))
        self.group1, self.group2, self.group3 = groups
        self.bn = nn.BatchNorm2d(cin)
        self.head = nn.Linear(cin, num_classes)

    def embed(self, x):
        x = self.group3(self.group2(self.group1(self.stem(x))))
        x = F.relu(self.bn(x))
        return F.adaptive_avg_pool2d(x, 1).flatten(1)

    def conv_units(self) -> list[ConvUnit]:
        units = []
        for name in ("group2", "group3"):
            for j, block in enumerate(getattr(self, name)):
                units += block.units(f"{name}.{j}")
        return units


@models.register("wrn-16-1")
def wrn_16_1(in_channels: int, num_classes: int, image_size: int, mean, std) -> Net:
    """Wide-ResNet-16-1 (≈0.18M parameters), the ABL paper's CIFAR-10 network."""
    return WideResNet(in_channels, num_classes, image_size, mean, std, depth=16, widen=1)
