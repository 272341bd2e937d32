"""A small VGG-style CNN, the fast default for images up to 32 px."""

from __future__ import annotations

from torch import nn

from ..registry import models
from .base import ConvUnit, Net


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SmallCNN(Net):
    """conv32 → pool → conv64 → pool → conv128 → conv128 → global max pool → linear.

    Global *max* pooling keeps a small localised trigger's response strong
    in the features (an average would dilute it over the map).
    """

    def __init__(self, in_channels: int, num_classes: int, mean, std, width: int = 32):
        super().__init__(in_channels, num_classes, mean, std)
        w = width
        self.b1 = _block(in_channels, w)
        self.b2 = _block(w, 2 * w)
        self.b3 = _block(2 * w, 4 * w)
        self.b4 = _block(4 * w, 4 * w)
        self.pool = nn.MaxPool2d(2)
        self.gpool = nn.AdaptiveMaxPool2d(1)
        self.head = nn.Linear(4 * w, num_classes)

    def embed(self, x):
        x = self.pool(self.b1(x))
        x = self.pool(self.b2(x))
        x = self.b4(self.b3(x))
        return self.gpool(x).flatten(1)

    def conv_units(self) -> list[ConvUnit]:
        blocks = [self.b1, self.b2, self.b3, self.b4]
        units = []
        for i, b in enumerate(blocks):
            nxt = blocks[i + 1][0] if i + 1 < len(blocks) else self.head
            units.append(ConvUnit(f"b{i + 1}", b[0], b[1], [nxt]))
        return units


@models.register("small-cnn")
def small_cnn(in_channels: int, num_classes: int, image_size: int, mean, std) -> Net:
    """Small 4-conv CNN (≈0.3M parameters), fast on CPU; the default for ≤ 32 px."""
    return SmallCNN(in_channels, num_classes, mean, std)
