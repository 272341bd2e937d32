"""Trigger-inversion scanner (Neural-Cleanse style): can a small patch flip most images to one label?

For every candidate target label and every mask-size bound, optimise a mask
m (H×W, shared by the channels, sigmoid-parametrised) and a pattern p
(C×H×W in [0, 1], sigmoid-parametrised) so that `(1 − m)·x + m·p` is
classified as the label, on clean images of the other classes. The bound
is on the mask's L1 size, `Σm / (H·W) ≤ b` for b in 2, 4, …, 12 % of the
image (the limits of NONE's natural-backdoor evaluation). It is enforced by
rescaling, not by a penalty: the mask used is `m · min(1, b·H·W / Σm)`, so
every trigger tried (and every reported one) satisfies its bound exactly.

The flip rate of each recovered trigger (REASR) is measured on held-out
clean images of the other classes, not the ones it was optimised on; per
bound the scanner reports the best label and its REASR.

All labels × bounds are optimised together: one step stamps a batch of
images with every trigger at once and runs them through the model as one
batch (chunked to bound memory). This module has its own small Adam loop
because it optimises triggers, not model weights: the model is frozen, in
eval mode, and never trained, so it does not go through `Trainer.fit`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..data.batches import to_float
from ..data.core import ImageData
from ..data.io import atomic_write
from ..errors import UserError

BOUNDS = (0.02, 0.04, 0.06, 0.08, 0.10, 0.12)


@dataclass(frozen=True)
class ScanSettings:
    bounds: tuple[float, ...] = BOUNDS  # mask L1 size limits, fractions of the image area
    images: int = 200  # clean images to optimise on (as many more, held out, measure the flip rate)
    steps: int = 150  # Adam steps
    batch_size: int = 16  # images per step; each is stamped with every trigger
    lr: float = 0.2  # Adam lr on the mask / pattern logits
    labels: tuple[int, ...] = ()  # candidate target labels; empty = every class
    chunk: int = 2048  # most stamped images per forward pass (memory bound)
    seed: int = 0

    def check(self) -> None:
        if not self.bounds or not all(0 < b <= 1 for b in self.bounds):
            raise UserError("scan: 'bounds' must be fractions in (0, 1]")
        if self.images < 1 or self.steps < 1 or self.batch_size < 1 or self.chunk < 1:
            raise UserError("scan: 'images', 'steps', 'batch_size' and 'chunk' must be ≥ 1")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise UserError("scan: 'lr' must be a positive number")


@dataclass
class ScanResult:
    bounds: list[float]
    labels: list[int]
    reasr: torch.Tensor  # bounds × labels held-out flip rates
    masks: torch.Tensor  # bounds × labels × 1 × H × W (bounded)
    patterns: torch.Tensor  # bounds × labels × C × H × W
    n_opt: int = 0
    n_eval: int = 0
    best: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "bounds": self.bounds, "labels": self.labels, "n_opt": self.n_opt, "n_eval": self.n_eval,
            "best": self.best,
            "reasr": [[round(float(v), 4) for v in row] for row in self.reasr],
            "mask_l1": [[round(float(m.mean()), 4) for m in row] for row in self.masks],
        }


def bounded(mask: torch.Tensor, bound: torch.Tensor) -> torch.Tensor:
    """Rescale masks T×1×H×W so that each mean is at most its bound (T)."""
    mean = mask.mean(dim=(1, 2, 3))
    return mask * torch.clamp(bound / mean.clamp_min(1e-12), max=1.0).view(-1, 1, 1, 1)


def stamp(x: torch.Tensor, mask: torch.Tensor, pattern: torch.Tensor) -> torch.Tensor:
    """Every trigger on every image: T×B×C×H×W from x B×C×H×W, mask T×1×H×W, pattern T×C×H×W."""
    return (1 - mask[:, None]) * x[None] + (mask * pattern)[:, None]


def _split(data: ImageData, n: int, seed: int) -> tuple[ImageData, ImageData]:
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(data), generator=g)
    n_opt = min(n, len(data) // 2)
    if n_opt < 1:
        raise UserError("scan: needs at least 2 clean images")
    opt_idx = perm[:n_opt].sort().values
    ev_idx = perm[n_opt:2 * n].sort().values
    return data.subset(opt_idx.to(data.device)), data.subset(ev_idx.to(data.device))


def _chunks(n_triggers: int, n_images: int, chunk: int) -> list[slice]:
    """Slices of triggers so that each forward pass sees at most `chunk` stamped images."""
    per = max(1, chunk // max(1, n_images))
    return [slice(i, min(n_triggers, i + per)) for i in range(0, n_triggers, per)]


def scan(model: nn.Module, clean: ImageData, settings: ScanSettings | None = None, *,
         device: torch.device | str = "cpu", progress: bool = True) -> ScanResult:
    """Optimise a bounded trigger per (bound, label) and measure its held-out flip rate."""
    s = settings or ScanSettings()
    k = int(getattr(model, "num_classes", clean.num_classes))
    labels = list(s.labels) if s.labels else list(range(k))
    if any(not 0 <= lab < k for lab in labels):
        raise UserError(f"scan: labels must lie in [0, {k - 1}]")
    device = torch.device(device)
    opt_set, ev_set = _split(clean.to(device), s.images, s.seed)
    nb, nl = len(s.bounds), len(labels)
    c, h, w = clean.shape
    gen = torch.Generator(device="cpu").manual_seed(s.seed)
    bound = torch.tensor([b * 1.0 for b in s.bounds for _ in labels])
    # the mask starts near its bound everywhere (so the rescaling starts inactive), the pattern at random
    m_raw = (torch.logit(bound).view(-1, 1, 1, 1) + 0.1 * torch.randn(nb * nl, 1, h, w, generator=gen))
    m_raw = m_raw.to(device).requires_grad_()
    p_raw = torch.randn(nb * nl, c, h, w, generator=gen).to(device).requires_grad_()
    bound = bound.to(device)
    target = torch.tensor([lab for _ in s.bounds for lab in labels], device=device)
    opt = torch.optim.Adam([m_raw, p_raw], lr=s.lr)
    was = model.training
    grads = [p.requires_grad for p in model.parameters()]
    model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        x_all, y_all = to_float(opt_set.x), opt_set.y
        for _ in tqdm(range(s.steps), desc="scan", disable=not progress, unit="step"):
            pick = torch.randint(0, len(y_all), (s.batch_size,), generator=gen).to(device)
            x, y = x_all[pick], y_all[pick]
            opt.zero_grad(set_to_none=True)
            for sl in _chunks(nb * nl, len(y), s.chunk):  # each chunk's triggers get exact gradients
                mask, pattern = bounded(torch.sigmoid(m_raw[sl]), bound[sl]), torch.sigmoid(p_raw[sl])
                xs = stamp(x, mask, pattern)
                logits = model(xs.flatten(0, 1)).float()
                tgt = target[sl]
                weight = (y[None] != tgt[:, None]).float()  # images of the target class do not count
                ce = F.cross_entropy(logits, tgt[:, None].expand_as(weight).flatten(), reduction="none")
                loss = (ce.view_as(weight) * weight).sum(1) / weight.sum(1).clamp_min(1)
                loss.sum().backward()
            opt.step()
        with torch.no_grad():
            mask, pattern = bounded(torch.sigmoid(m_raw), bound), torch.sigmoid(p_raw)
            hits = torch.zeros(nb * nl, device=device)
            total = torch.zeros(nb * nl, device=device)
            xe_all = to_float(ev_set.x)
            step = max(1, min(len(ev_set), s.chunk // 8))
            for i in range(0, len(ev_set), step):
                xe, ye = xe_all[i:i + step], ev_set.y[i:i + step]
                pred = torch.cat([model(stamp(xe, mask[sl], pattern[sl]).flatten(0, 1)).argmax(-1).view(-1, len(ye))
                                  for sl in _chunks(nb * nl, len(ye), s.chunk)])
                other = ye[None] != target[:, None]
                hits += ((pred == target[:, None]) & other).sum(1)
                total += other.sum(1)
    finally:
        model.train(was)
        for p, g in zip(model.parameters(), grads):
            p.requires_grad_(g)
    reasr = (hits / total.clamp_min(1)).view(nb, nl).cpu()
    res = ScanResult(list(s.bounds), labels, reasr, mask.detach().view(nb, nl, 1, h, w).cpu(),
                     pattern.detach().view(nb, nl, c, h, w).cpu(), len(opt_set), len(ev_set))
    for i, b in enumerate(s.bounds):
        j = int(reasr[i].argmax())
        res.best.append({"bound": b, "label": labels[j], "reasr": round(float(reasr[i, j]), 4)})
    return res


# ------------------------------------------------------------------ output
def _png(path: Path, img: torch.Tensor, scale: int = 4) -> Path:
    """Save a C×H×W image in [0, 1] as PNG, enlarged `scale` times."""
    from PIL import Image

    arr = (img.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    arr = np.repeat(np.repeat(arr, scale, axis=1), scale, axis=2)
    pil = Image.fromarray(arr[0], "L") if arr.shape[0] == 1 else Image.fromarray(arr.transpose(1, 2, 0), "RGB")
    return atomic_write(path, lambda tmp: pil.save(tmp, format="PNG"))


def save_pngs(res: ScanResult, out: str | Path) -> list[Path]:
    """Per bound: a grid of every label's mask (top row) and masked pattern (bottom row), and the best trigger."""
    out = Path(out)
    paths = []
    for i, b in enumerate(res.bounds):
        pct = round(b * 100)
        masks, trig = res.masks[i], res.masks[i] * res.patterns[i]  # L×1×H×W, L×C×H×W
        c = trig.shape[1]
        top = torch.cat(list(masks.expand(-1, c, -1, -1)), dim=2)
        bottom = torch.cat(list(trig), dim=2)
        paths.append(_png(out / f"scan_b{pct:02d}.png", torch.cat([top, bottom], dim=1)))
        j = res.labels.index(res.best[i]["label"])
        paths.append(_png(out / f"best_b{pct:02d}_label{res.labels[j]}.png", trig[j], scale=8))
    return paths


def format_table(best: list[dict[str, Any]], classes: tuple[str, ...] | list[str] | None = None) -> str:
    """Markdown table of the best label and REASR per bound."""
    rows = ["| bound | best label | REASR |", "|------:|:-----------|------:|"]
    for r in best:
        name = f"{r['label']}" + (f" ({classes[r['label']]})" if classes and r["label"] < len(classes) else "")
        rows.append(f"| {r['bound'] * 100:4.0f} % | {name} | {r['reasr']:.3f} |")
    return "\n".join(rows)
