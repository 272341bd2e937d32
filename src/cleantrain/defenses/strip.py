"""STRIP (Gao et al., ACSAC 2019), used to score the training samples.

Each sample is superimposed with `overlays` random reserved-clean images
(added on the normalised tensors, as in the CT paper's toolbox) and run
through a normally trained model; a trigger keeps the prediction fixed, so a
low mean prediction entropy is suspicious. The threshold is the `fpr`
quantile of the same entropy on the reserved clean images not used as
overlays, so about `fpr` of clean data is flagged. Every sample is overlaid
with the same `overlays` images (one whole-set pass per overlay).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..data.core import ImageData
from ..errors import UserError
from ..models.base import Net
from .base import DefenseContext, Detection, register_detector
from .shared import normal_model


@dataclass(frozen=True)
class STRIPSettings:
    overlays: int = 100  # N clean images superimposed on each sample
    fpr: float = 0.1  # threshold = this quantile of the clean set's entropy
    base_epochs: int | None = None  # epochs of the shared normally trained model; None = the recipe's

    def check(self) -> None:
        if self.overlays < 1 or not 0 < self.fpr < 1:
            raise UserError("strip: 'overlays' must be ≥ 1 and 'fpr' in (0, 1)")


class Superimposed(nn.Module):
    """The model applied to normalise(x) + normalise(background)."""

    def __init__(self, net: Net, background: torch.Tensor):
        super().__init__()
        self.net = net
        self.register_buffer("bg", net.normalize(background[None].to(net.mean.device).float() / 255.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.head(self.net.embed(self.net.normalize(x) + self.bg))


def mean_entropy(ctx: DefenseContext, net: Net, data: ImageData, backgrounds: torch.Tensor) -> torch.Tensor:
    total = torch.zeros(len(data))
    for bg in backgrounds:
        p = torch.softmax(ctx.trainer.logits(Superimposed(net, bg), data).float(), 1).cpu()
        total += -(p * torch.log(p.clamp_min(1e-12))).sum(1)
    return total / len(backgrounds)


@register_detector("strip", settings=STRIPSettings, needs_clean=True)
def strip(train: ImageData, ctx: DefenseContext, s: STRIPSettings) -> Detection:
    """STRIP: low prediction entropy under superimposed clean images means a trigger dominates."""
    s = s or STRIPSettings()
    clean = ctx.need_clean("strip")
    model = normal_model(train, ctx, s.base_epochs)
    g = torch.Generator().manual_seed(ctx.seed + 17)
    perm = torch.randperm(len(clean), generator=g)
    n_bg = min(s.overlays, max(1, len(clean) // 2))
    bg = clean.x[perm[:n_bg].to(clean.device)]
    reference = clean.subset(perm[n_bg:].sort().values.to(clean.device))
    h_train = mean_entropy(ctx, model, train, bg)
    h_clean = mean_entropy(ctx, model, reference, bg)
    threshold = float(torch.quantile(h_clean, s.fpr))
    return Detection(-h_train, h_train < threshold, {"entropy_threshold": round(threshold, 5), "overlays": n_bg})
