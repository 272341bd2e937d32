"""Batches drawn from device-resident data, augmented on the device in one go.

The images live on the training device as uint8 once; each batch is indexed,
cropped, flipped and scaled to [0, 1] with a handful of tensor operations.
Normalisation by the dataset's mean/std is the model's first layer, so model
files are self-contained.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

from .core import ImageData


@dataclass(frozen=True)
class Augment:
    crop_pad: int = 2  # random crop after zero padding by this many pixels; 0 = off
    hflip: bool = True  # random horizontal flip (only where the dataset allows it)
    cutout: int = 0  # side of one random square hole; 0 = off


def augment_batch(x: torch.Tensor, aug: Augment, allow_flip: bool, g: torch.Generator | None) -> torch.Tensor:
    """Random crop / flip / cutout of a float batch N×C×H×W, all batched."""
    n, _, h, w = x.shape
    dev = x.device

    def rand_int(high: int) -> torch.Tensor:
        return torch.randint(0, high, (n,), generator=g, device=g.device if g is not None else "cpu").to(dev)

    if aug.crop_pad > 0:
        p = aug.crop_pad
        padded = torch.nn.functional.pad(x, (p, p, p, p))
        dy, dx = rand_int(2 * p + 1), rand_int(2 * p + 1)
        rows = (dy[:, None] + torch.arange(h, device=dev))[:, :, None]  # n,h,1
        cols = (dx[:, None] + torch.arange(w, device=dev))[:, None, :]  # n,1,w
        ni = torch.arange(n, device=dev)[:, None, None]
        x = padded.permute(0, 2, 3, 1)[ni, rows, cols].permute(0, 3, 1, 2)
    if aug.hflip and allow_flip:
        flip = rand_int(2).bool()
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    if aug.cutout > 0:
        s = aug.cutout
        cy, cx = rand_int(h), rand_int(w)
        yy = torch.arange(h, device=dev)[None, :, None]
        xx = torch.arange(w, device=dev)[None, None, :]
        hole = ((yy - cy[:, None, None]).abs() <= s // 2) & ((xx - cx[:, None, None]).abs() <= s // 2)
        x = x * (~hole)[:, None].to(x.dtype)
    return x.contiguous()


def to_float(x: torch.Tensor) -> torch.Tensor:
    return x.float().div_(255.0)


def batches(
    data: ImageData,
    batch_size: int,
    *,
    shuffle: bool,
    augment: Augment | None = None,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yield (images in [0,1], labels, row indices), on the data's device."""
    n = len(data)
    dev = data.device
    if shuffle:
        order = torch.randperm(n, generator=generator, device=generator.device if generator is not None else "cpu")
        order = order.to(dev)
    else:
        order = torch.arange(n, device=dev)
    stop = n - n % batch_size if drop_last and n >= batch_size else n
    for start in range(0, stop, batch_size):
        idx = order[start:start + batch_size]
        x = to_float(data.x[idx])
        if augment is not None:
            x = augment_batch(x, augment, data.hflip, generator)
        yield x, data.y[idx], idx
