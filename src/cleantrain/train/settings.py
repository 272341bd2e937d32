"""The training recipe: optimiser, schedule, augmentation, speed switches."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from ..errors import UserError


@dataclass(frozen=True)
class TrainSettings:
    epochs: int = 10
    batch_size: int = 128
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: Literal["constant", "step", "cosine", "onecycle"] = "onecycle"
    step_milestones: tuple[float, ...] = (0.5, 0.75)  # fractions of the run (step schedule)
    step_gamma: float = 0.1
    warmup: float = 0.2  # share of the run spent warming up (onecycle)
    crop_pad: int = 2  # random crop padding in pixels; 0 = off
    hflip: bool = True  # random horizontal flips, where the dataset allows them
    cutout: int = 0  # one square hole of this side; 0 = off
    label_smoothing: float = 0.0
    amp: bool = True  # bfloat16 autocast on CUDA (ignored on CPU)
    # bfloat16 autocast on the CPU too: ≈ 1.6× faster runs (1.8× per epoch) where the CPU computes bf16 natively
    # (AVX512_BF16 or AMX; docs/results/trainer.md), slower where it must emulate it. Off by default.
    cpu_amp: bool = False
    channels_last: bool = True
    compile: bool = False  # torch.compile on CUDA
    threads: int = 0  # CPU threads; 0 = all cores
    eval_batch_size: int = 1024
    eval_every: int = 1  # evaluate CA/ASR every k epochs (0 = only at the end)
    # per-epoch CA/ASR on a fixed random subset of this many test images (and as many triggered ones); 0 = all.
    # The run's final numbers (result.json) always use the whole test split.
    eval_sample: int = 2000
    sync_bn: bool = False  # SyncBatchNorm across ranks under torchrun (GPUs only; PyTorch's SyncBN is CUDA-only)

    def check(self) -> None:
        if self.epochs < 0:
            raise UserError("setting 'epochs' must be ≥ 0")
        if self.batch_size < 1 or self.eval_batch_size < 1:
            raise UserError("batch sizes must be ≥ 1")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise UserError("setting 'lr' must be a positive number")
        if self.weight_decay < 0 or not 0 <= self.momentum < 1:
            raise UserError("'weight_decay' must be ≥ 0 and 'momentum' in [0, 1)")
        if not 0 <= self.warmup < 1 or not 0 <= self.label_smoothing < 1:
            raise UserError("'warmup' and 'label_smoothing' must lie in [0, 1)")
        if min(self.crop_pad, self.cutout, self.threads, self.eval_every, self.eval_sample) < 0:
            raise UserError("'crop_pad', 'cutout', 'threads', 'eval_every', 'eval_sample' must be ≥ 0")


def lr_factor(schedule: str, t: float, s: TrainSettings) -> float:
    """Multiplier of the base lr at progress t ∈ [0, 1) of a run."""
    if schedule == "constant":
        return 1.0
    if schedule == "step":
        return s.step_gamma ** sum(t >= m for m in s.step_milestones)
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * t))
    if schedule == "onecycle":
        if s.warmup > 0 and t < s.warmup:
            return 0.1 + 0.9 * t / s.warmup
        u = (t - s.warmup) / max(1e-12, 1 - s.warmup)
        return max(0.0, 1 - u) * 0.99 + 0.01
    raise UserError(f"unknown schedule {schedule!r}")
