"""NONE — "Training with More Confidence" (Wang et al., NeurIPS 2022).

Backdoor neurons split inputs by a hyperplane: their activation on samples
the model is very sure are class k is far above their activation on samples
that are clearly not k. NONE trains normally, then for `rounds` rounds:

1. records, in one eval pass over the training set, the softmax outputs and
   the per-channel spatial maximum of every monitored conv's raw output
   (the convs each model declares in `conv_units()`);
2. scores channels by the strong-vs-weak gap
   `max_{P[n,k]>λh} A[n,c] − (mean + 3·std)_{P[n,k]<λl} A[n,c]`, max over k, floored at 0;
3. selects the top `ceil(fraction·C)` channels of each layer, per layer
   independently (the authors' code carries the list over between layers; we
   do not);
4. scores each sample by the sum over layers of its activation of the
   layer's top channel, and splits the scores into two groups by the exact
   two-class Jenks break; the high group is flagged (the original's `≥ break`
   also took the low group's largest member; we flag the high group only);
5. resets the selected channels (conv filter and bias, BatchNorm γ and β, the
   consumers' input weights for the channel; BN running statistics kept);
6. fine-tunes for E2 epochs at `none_lr` on the set minus the flagged samples
   (injected mode) or on everything (natural mode) with a fresh optimiser
   (phase 1 is the normally trained model that vanilla training and the
   detectors of the same data share, so its optimiser is not kept; later
   rounds continue the fine-tune's), BatchNorm statistics frozen (affine
   parameters train).

Choices where the paper/code is silent or differs from our setting:
- The fine-tune lr is constant (`schedule="constant"`), as the authors set
  every lr to `none_lr`.
- Classes whose weak set has fewer than 2 samples are skipped when scoring.
- Only channels with a positive score are reset: when no class has a
  strong sample left (after earlier rounds lowered the confidence), the
  original's zero-floored scores tie and it resets channels 0, 1, 2, … of
  every layer, which on small-cnn in natural mode destroyed the model
  (docs/results/none.md); we reset nothing in that case.
- The monitored activation is the raw output of `ConvUnit.conv` for every
  unit (the paper takes downsample paths after their BN; hooking the conv is
  the same up to BN's per-channel affine map, which preserves the ranking
  within a channel but not the gap's scale).
- `rounds` and `finetune_epochs` default by mode to the authors' README
  commands (1 round / 20 epochs for injected, 10 / 40 for natural).
  `max_reset_fraction` defaults to 0.05 (their code's default) for injected
  and 0.20 for natural; their README's injected command uses 0.03, which on
  small-cnn leaves enough backdoor channels for fine-tuning to bring the
  ASR back (docs/results/none.md).
- BN statistics frozen during the fine-tune: "eval" (normalise with the
  running statistics and keep them) in both modes; "frozen" (normalise with
  batch statistics, running ones untouched) is an option. After large resets
  (20 % of channels per round) or dropping a third of the data, "frozen"
  trains under batch statistics that no longer match the stale running ones,
  and the evaluated model collapsed to chance on small-cnn while the same
  weights scored 83 % with batch statistics; on full Fashion-MNIST WaNet
  10 % it collapsed to 10.0 % CA (docs/results/none.md). Injected mode used
  "frozen" until then (1 point lower ASR on BadNets, one run).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ..data.core import ImageData
from ..errors import UserError
from ..models.base import ConvUnit
from .base import DefenseContext, DefenseResult, Detection, register_defense
from .shared import normal_fit

MODE_DEFAULTS = {  # (rounds, finetune_epochs, max_reset_fraction, bn); see the module docstring
    "injected": (1, 20, 0.05, "eval"),
    "natural": (10, 40, 0.20, "eval"),
}


@dataclass(frozen=True)
class NONESettings:
    mode: Literal["injected", "natural"] = "injected"  # injected: drop flagged samples; natural: keep all
    epochs: int | None = None  # E1, normal training before the rounds (None = the recipe's epochs)
    rounds: int | None = None  # None = 1 (injected) / 10 (natural)
    finetune_epochs: int | None = None  # E2 per round; None = 20 (injected) / 40 (natural)
    none_lr: float = 1e-4  # constant lr of every fine-tune
    lambda_h: float = 0.9  # softmax above this = strong sample of a class
    lambda_l: float = 0.1  # softmax below this = weak sample of a class
    max_reset_fraction: float | None = None  # per layer; None = 0.05 (injected) / 0.20 (natural)
    # how BN statistics stay frozen while fine-tuning: "frozen" normalises with batch statistics (running ones
    # untouched); "eval" normalises with the running statistics, so training sees what evaluation sees.
    # None = "frozen" (injected) / "eval" (natural)
    bn: Literal["frozen", "eval"] | None = None

    def check(self) -> None:
        for name in ("epochs", "rounds", "finetune_epochs"):
            v = getattr(self, name)
            if v is not None and v < 0:
                raise UserError(f"none: {name!r} must be ≥ 0")
        if self.rounds is not None and self.rounds < 1:
            raise UserError("none: 'rounds' must be ≥ 1")
        if not (self.none_lr > 0 and math.isfinite(self.none_lr)):
            raise UserError("none: 'none_lr' must be a positive number")
        if not 0 <= self.lambda_l < self.lambda_h <= 1:
            raise UserError("none: need 0 ≤ lambda_l < lambda_h ≤ 1")
        f = self.max_reset_fraction
        if f is not None and not 0 < f <= 1:
            raise UserError("none: 'max_reset_fraction' must lie in (0, 1]")

    def resolved(self) -> tuple[int, int, float, str]:
        rounds, e2, frac, bn = MODE_DEFAULTS[self.mode]
        return (self.rounds if self.rounds is not None else rounds,
                self.finetune_epochs if self.finetune_epochs is not None else e2,
                self.max_reset_fraction if self.max_reset_fraction is not None else frac,
                self.bn if self.bn is not None else bn)


# ------------------------------------------------------------------ pieces
def jenks_two(values: torch.Tensor) -> torch.Tensor:
    """Boolean mask of the high group of the best two-class split of `values`.

    The split minimises the total within-group sum of squares. In one
    dimension the optimal groups are contiguous in sorted order, so one sort
    and prefix sums give every split's cost in O(N). All-equal (or fewer than
    two) values flag nothing.
    """
    v = values.detach().double().flatten().cpu()
    n = len(v)
    flagged = torch.zeros(n, dtype=torch.bool)
    if n < 2 or bool(v.max() == v.min()):
        return flagged
    order = torch.argsort(v, stable=True)
    s = v[order]
    c1 = torch.cumsum(s, 0)
    c2 = torch.cumsum(s * s, 0)
    i = torch.arange(1, n, dtype=torch.float64)  # size of the low group
    lo1, lo2 = c1[:-1], c2[:-1]
    hi1, hi2 = c1[-1] - lo1, c2[-1] - lo2
    cost = (lo2 - lo1 * lo1 / i) + (hi2 - hi1 * hi1 / (n - i))
    k = int(torch.argmin(cost)) + 1  # first position of the high group
    flagged[order[k:]] = True
    return flagged


def channel_scores(acts: list[torch.Tensor], probs: torch.Tensor, lambda_h: float,
                   lambda_l: float) -> list[torch.Tensor]:
    """Per layer, per channel: max over classes of the strong-vs-weak gap, floored at 0."""
    scores = [torch.zeros(a.shape[1], device=a.device) for a in acts]
    for k in range(probs.shape[1]):
        strong, weak = probs[:, k] > lambda_h, probs[:, k] < lambda_l
        if not bool(strong.any()) or int(weak.sum()) < 2:
            continue
        for l, a in enumerate(acts):
            w = a[weak]
            gap = a[strong].amax(0) - (w.mean(0) + 3 * w.std(0, unbiased=False))
            scores[l] = torch.maximum(scores[l], gap)
    return scores


def select_channels(scores: list[torch.Tensor], fraction: float) -> list[torch.Tensor]:
    """Indices of the top ceil(fraction·C) channels of each layer, best first, among those with a positive
    score: a channel with no strong-vs-weak gap (or a model with no confident class) is never reset."""
    out = []
    for s in scores:
        top = torch.argsort(s, descending=True, stable=True)[:max(1, math.ceil(fraction * len(s)))]
        out.append(top[s[top] > 0])
    return out


def sample_scores(acts: list[torch.Tensor], selected: list[torch.Tensor]) -> torch.Tensor:
    """Σ over layers of each sample's activation of the layer's top channel (layers with none add 0)."""
    total = torch.zeros(len(acts[0]), device=acts[0].device)
    for a, idx in zip(acts, selected):
        if len(idx):
            total += a[:, idx[0]]
    return total


def _zero_inputs(module: nn.Module, channels: int, idx: torch.Tensor) -> None:
    """Zero the input weights of `module` that read channels `idx` of a `channels`-channel map."""
    if isinstance(module, nn.Conv2d):
        if module.groups != 1 or module.in_channels != channels:
            raise UserError(f"none: cannot reset inputs of {module} (needs a plain conv reading {channels} channels)")
        module.weight[:, idx] = 0
    elif isinstance(module, nn.Linear):
        if module.in_features % channels:
            raise UserError(f"none: {module} does not read a {channels}-channel map")
        module.weight.view(module.out_features, channels, -1)[:, idx] = 0  # flattened C×h×w or pooled C
    else:
        raise UserError(f"none: cannot reset the inputs of a {type(module).__name__} consumer")


@torch.no_grad()
def reset_channels(units: list[ConvUnit], selected: list[torch.Tensor]) -> None:
    """Zero each selected channel: conv filter and bias, BN γ and β, consumers' input weights."""
    for unit, idx in zip(units, selected):
        idx = idx.to(unit.conv.weight.device)
        unit.conv.weight[idx] = 0
        if unit.conv.bias is not None:
            unit.conv.bias[idx] = 0
        if unit.bn is not None and unit.bn.affine:
            unit.bn.weight[idx] = 0
            unit.bn.bias[idx] = 0
        for consumer in unit.consumers:
            _zero_inputs(consumer, unit.conv.out_channels, idx)


def _spatial_max(out: torch.Tensor) -> torch.Tensor:
    return out.amax(dim=(2, 3)) if out.dim() == 4 else out


@dataclass
class Round:
    scores: torch.Tensor  # N sample scores
    flagged: torch.Tensor  # N bool
    selected: list[torch.Tensor]  # per unit, the channel indices to reset


def analyse(trainer, model, data: ImageData, lambda_h: float, lambda_l: float, fraction: float) -> Round:
    """Steps 1–5 of a round: record, score channels, select, score samples, split."""
    units = model.conv_units()
    if not units:
        raise UserError("none: the model declares no conv units to monitor")
    # one pass: each conv's per-channel spatial max, and the model's own output (its logits)
    *acts, logits = trainer.activations(model, data, [u.conv for u in units] + [model], reduce=_spatial_max)
    probs = torch.softmax(logits, 1)
    selected = select_channels(channel_scores(acts, probs, lambda_h, lambda_l), fraction)
    scores = sample_scores(acts, selected).cpu()
    return Round(scores, jenks_two(scores), [s.cpu() for s in selected])


# ---------------------------------------------------------------- defense
def _phase1(train: ImageData, ctx: DefenseContext, s: NONESettings):
    """E1 epochs of normal training: the normally trained model that vanilla and the detectors share."""
    return normal_fit(train, ctx, s.epochs, desc="none: train")


def detect_none(train: ImageData, ctx: DefenseContext, s: NONESettings | None) -> Detection:
    """NONE's first-round flags: train normally, then split samples by their backdoor-neuron activation."""
    s = s or NONESettings()
    _, _, fraction, _ = s.resolved()
    model, _ = _phase1(train, ctx, s)
    r = analyse(ctx.trainer, model, train, s.lambda_h, s.lambda_l, fraction)
    return Detection(r.scores, r.flagged, {"n_flagged": int(r.flagged.sum())})


@register_defense("none", settings=NONESettings, detect=detect_none)
def none_defense(train: ImageData, ctx: DefenseContext, s: NONESettings | None) -> DefenseResult:
    """NONE: reset neurons that separate a class too linearly, drop the samples that fire them, fine-tune."""
    s = s or NONESettings()
    rounds, e2, fraction, bn = s.resolved()
    model, history = _phase1(train, ctx, s)
    history = list(history)
    optimizer = None  # the fine-tune starts a fresh optimiser (the shared model's own is not kept)
    units = model.conv_units()
    info: dict = {"mode": s.mode, "max_reset_fraction": fraction, "finetune_epochs": e2, "bn": bn, "rounds": []}
    r = None
    for i in range(rounds):
        r = analyse(ctx.trainer, model, train, s.lambda_h, s.lambda_l, fraction)
        reset_channels(units, selected=r.selected)
        keep = ~r.flagged if s.mode == "injected" else torch.ones(len(train), dtype=torch.bool)
        if int(keep.sum()) == 0:
            raise UserError("none: every sample was flagged; nothing left to fine-tune on")
        ctx.log(f"round {i + 1}/{rounds}: flagged {int(r.flagged.sum())} of {len(train)}, "
                f"reset {sum(len(x) for x in r.selected)} channels")
        info["rounds"].append({
            "round": i + 1,
            "n_flagged": int(r.flagged.sum()),
            "flagged_index": torch.nonzero(r.flagged).flatten().tolist(),
            "reset": {u.name: x.tolist() for u, x in zip(units, r.selected)},
        })
        fit = ctx.trainer.fit(model, train.subset(keep.to(train.y.device)), epochs=e2, lr=s.none_lr,
                              schedule="constant", optimizer=optimizer, bn=bn,
                              desc=f"none: fine-tune {i + 1}")
        optimizer = fit.optimizer  # later rounds continue it
        history += fit.history
    return DefenseResult(model, r.scores, r.flagged, history, info)
