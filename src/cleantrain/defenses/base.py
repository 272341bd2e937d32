"""The defense contract.

`fit(train: ImageData, ctx, settings) -> DefenseResult`: a defense sees the
images and the given labels only (never the provenance). Detectors implement
`detect(train, ctx, settings) -> Detection`; registering one with
`register_detector` also makes it a defense that retrains a fresh model
normally on the samples it keeps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ..config import build
from ..data.core import ImageData
from ..errors import UserError
from ..models.base import Net, make_model
from ..registry import defenses
from ..train.trainer import Trainer


@dataclass
class DefenseContext:
    trainer: Trainer
    model_key: str
    shape: tuple[int, int, int]
    num_classes: int
    mean: list[float]
    std: list[float]
    seed: int = 0
    clean: ImageData | None = None  # a reserved, trusted clean set, when one exists
    clean_source: str = "none"  # where `clean` came from (held-out test split, a file, ...)
    expected_rate: float | None = None  # a prior on the poisoning rate, when the user has one
    log: Callable[[str], None] = lambda msg: None
    _models_made: int = 0

    def new_model(self, init_seed: int | None = None) -> Net:
        """A freshly initialised model: from `init_seed` when given, else the i-th call gives the same weights
        for the same run seed."""
        if init_seed is None:
            self._models_made += 1
            init_seed = self.seed * 1000 + self._models_made
        state = torch.random.get_rng_state()
        torch.manual_seed(init_seed)
        try:
            m = make_model(self.model_key, self.shape[0], self.num_classes, self.shape[1], self.mean, self.std)
        finally:
            torch.random.set_rng_state(state)
        return self.trainer.prepare(m)

    def need_clean(self, what: str) -> ImageData:
        if self.clean is None:
            raise UserError(f"{what} needs a reserved clean set: pass --clean-set N or --clean-data FILE.npz")
        return self.clean


@dataclass
class Detection:
    scores: torch.Tensor  # N, higher = more suspicious
    flagged: torch.Tensor  # N bool
    info: dict[str, Any] = field(default_factory=dict)
    # N-bool masks that the defense's own later steps use (not saved with a cached detection)
    masks: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class DefenseResult:
    model: Net
    scores: torch.Tensor | None = None
    flagged: torch.Tensor | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DefenseSpec:
    fit: Callable[[ImageData, DefenseContext, Any], DefenseResult]
    detect: Callable[[ImageData, DefenseContext, Any], Detection] | None = None
    doc: str = ""
    needs_clean: bool = False  # asks the run for a reserved clean set


def register_defense(key: str, settings: type | None = None, detect=None, needs_clean: bool = False):
    """Register `fit(train, ctx, s) -> DefenseResult` (and optionally its detect step)."""

    def deco(fn):
        defenses.register(key, settings)(DefenseSpec(fn, detect, (fn.__doc__ or "").strip(), needs_clean))
        return fn

    return deco


def retrain_kept(train: ImageData, ctx: DefenseContext, det: Detection) -> DefenseResult:
    """Train a fresh model normally on the samples a detector keeps (shared with any other defense that keeps
    the same samples: `shared.normal_fit`)."""
    from .shared import normal_fit

    keep = ~det.flagged.to(train.y.device)
    if int(keep.sum()) == 0:
        raise UserError("the detector flagged every sample; nothing left to train on")
    model, history = normal_fit(train.subset(keep), ctx, desc="retrain")
    return DefenseResult(model, det.scores, det.flagged, history, det.info)


def register_detector(key: str, settings: type | None = None, needs_clean: bool = False):
    """Register `detect(train, ctx, s) -> Detection`; the defense retrains on the kept set."""

    def deco(detect_fn):
        def fit(train, ctx, s):
            return retrain_kept(train, ctx, run_detector(key, train, ctx, s))

        fit.__doc__ = detect_fn.__doc__
        defenses.register(key, settings)(DefenseSpec(fit, detect_fn, (detect_fn.__doc__ or "").strip(), needs_clean))
        return detect_fn

    return deco


def defense_settings(key: str, options: dict[str, Any] | None):
    entry = defenses.entry(key)
    if entry.settings is None:
        if options:
            raise UserError(f"defense {key!r} takes no settings (got {', '.join(options)})")
        return None
    return build(entry.settings, options, where=f"defense {key!r}")


def run_defense(key: str, train: ImageData, ctx: DefenseContext, settings: Any) -> DefenseResult:
    if not isinstance(train, ImageData) or type(train) is not ImageData:
        raise TypeError("defenses take ImageData (images and given labels only)")
    return defenses.get(key).fit(train, ctx, settings)


def run_detector(key: str, train: ImageData, ctx: DefenseContext, settings: Any) -> Detection:
    spec = defenses.get(key)
    if spec.detect is None:
        detectors = [k for k in defenses.keys() if defenses.get(k).detect is not None]
        raise UserError(f"{key!r} is not a detector; valid: {', '.join(detectors)}")
    from .shared import cached_detection

    return cached_detection(key, train, ctx, settings, spec.detect)
