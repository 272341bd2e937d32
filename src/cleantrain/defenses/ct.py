"""CT — Confusion Training (Qi et al., USENIX Security 2023): find the poison, then retrain.

Train on the poisoned set D while also training on a reserved clean set C
with deliberately wrong labels. The confusion wipes out the benign link
between image and label; a backdoor's simple, strong link survives, so the
samples whose given label the confused model still predicts are the poison.

Per round r = 0 … R−1 (R = len(distillation_ratios) + 1), D_0 = D:
1. class weights w_c = sqrt(n_c/|D_r| + weight_floor) (all 1 in the last round);
2. pretrain on D_r (no augmentation, constant lr), r = 0 from scratch, later
   rounds from the previous round's pretrained model; the last round trains on
   D_r ∪ C with C's labels shifted to (y+1) mod K;
3. confusion training from that model: a clean batch every step with the
   counter-driven confusion label (never the teacher's prediction), and every
   `batch_factors[r]`-th step a D_r batch in the same forward pass, loss
   ((λ−1)·CE(clean) + CE_w(D_r)) / λ;
4. distil: D_{r+1} = the ratio_r·N lowest-loss samples of D, each class topped
   up to ⌊N_c/class_floor[r]⌋; in the last round, suspects = pred == label;
5. final filter (`filter_rule`), per class c over the samples labelled c:
   - "paper" (methods.md step 5): on 2-D PCA of the confused model's
     features, two Gaussians (pred == c, pred ≠ c) against the pred ≠ c
     Gaussian alone; flag the class's pred == c samples if its ratio is the
     largest and above `filter_top_ratio`, or above `filter_any_ratio`;
   - "enrichment" (ours, docs/results/ct.md "Final filter on Blend"): how much
     more often the confused model predicts c for samples labelled c than for
     samples labelled otherwise, e_c = (#{y=c, pred=c}/n_c) /
     ((#{y≠c, pred=c} + 1)/(N − n_c)); confusion makes a benign class's e_c
     ≈ 1 or less, a backdoor keeps it far above; the paper's decision with
     e_c in place of the ratio: flag the class's pred == c samples if e_c is
     the largest and above `filter_enrichment`, or above
     `filter_enrichment_any` (and ≥ 2 of them, as the paper's group size).
     It misses a target that the confused model also predicts for many
     other-class samples (a "sink" class), where "paper" can still succeed;
   - "tail" (ours, docs/results/ct.md "A filter for low rates"): the
     confused model never fits a clean sample confidently (on full
     Fashion-MNIST no clean sample's loss fell below 0.2), while a
     backdoor's samples sit far below that floor. For class c, F_c = the
     `filter_tail_share` quantile of the loss over samples labelled
     otherwise, t_c = (share of class c with loss ≤ F_c) / filter_tail_share,
     i.e. how many times more of class c lies in the other classes' lowest
     tail than chance; the paper's decision with t_c in place of the ratio
     (largest and above `filter_tail`, or above `filter_tail_any`).
     It keeps working when the poison is too few to form a second Gaussian
     in the class (BadNets 0.3 %: ratio 1.04, t_0 = 98);
   - "either": the union of "paper" and "enrichment";
   - "all": no filter, every suspect is flagged (what `auto` uses: on full
     Fashion-MNIST WaNet 10 % the score's AUROC was 0.989 but the paper's
     filter flagged nothing; the suspects the filter exists to spare are
     ~2 % of the data, a small loss for a retraining).
The registered defense then retrains a fresh model normally on the rest.
Steps 1–4 (`confuse`) are cached apart from the filter, so detections that
differ only in the filter share them.

Choices where the method leaves room (written down as methods.md asks):
- Covariance ridge: `filter_ridge`·I added to each fitted covariance
  (scikit-learn's `reg_covar`), not the original's 0.001 added to every entry.
- PCA: exact (scikit-learn `PCA`), fitted on each class's features.
- Teacher labels: the frozen teacher's prediction on each clean sample is
  computed once (eval mode, no augmentation), which is what a frozen teacher
  gives on the fly; clean and D_r batches are drawn without augmentation.
- The confusion counter ρ and the step t restart at 0 in every round.
- Score per sample: minus the last confused model's loss (low loss =
  suspicious); `flagged` is the filtered suspect set.
- The teacher is the normally trained model shared with the other detectors
  (`shared.normal_model`), trained for `base_epochs` (None = the run's recipe).
- `clean_from="trusted"` takes C from the samples another detector
  (`trusted_detector`) trusts most, an equal share per class; this is weaker
  (C may hold poison) and the result says so.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace
from typing import Iterator, Literal

import numpy as np
import torch
import torch.nn.functional as F

from ..data.batches import batches
from ..data.core import ImageData
from ..errors import UserError
from .base import DefenseContext, Detection, defense_settings, register_detector, run_detector
from .shared import cached_tensors, normal_model, per_class


@dataclass(frozen=True)
class CTSettings:
    """Defaults: the published CIFAR-10 schedule (configs/ct-*.yaml scale it to other data)."""

    distillation_ratios: tuple[float, ...] = (0.5, 0.2, 0.04, 0.02, 0.01)  # share of D kept after round r
    class_floor: tuple[int, ...] = (50, 50, 50, 50, 100)  # keep ≥ ⌊N_c / floor_r⌋ samples of each class
    pretrain_epochs: tuple[int, ...] = (100, 100, 40, 40, 40, 40)  # per round
    pretrain_lr: float = 0.01
    pretrain_momentum: float = 0.9
    pretrain_weight_decay: float = 1e-4
    pretrain_batch_size: int = 32
    confusion_iters: tuple[int, ...] = (6000, 6000, 6000, 6000, 2000, 2000)  # per round
    confusion_lr: tuple[float, ...] = (1e-3, 1e-3, 1e-3, 1e-2, 1e-2, 1e-2)  # per round
    confusion_momentum: float = 0.7
    confusion_weight_decay: float = 1e-4
    confusion_batch_size: int = 32  # clean batch and D_r batch each
    lambdas: tuple[float, ...] = (20.0, 20.0, 20.0, 30.0, 30.0, 15.0)  # λ per round
    batch_factors: tuple[int, ...] = (2, 2, 2, 2, 2, 2)  # a D_r batch every k-th step, per round
    weight_floor: float = 0.001  # w_c = sqrt(n_c/|D_r| + weight_floor)
    base_epochs: int | None = None  # the frozen teacher's epochs; None = the run's recipe
    filter_dims: int = 2  # PCA dimensions of the final filter
    filter_ridge: float = 1e-3  # added to each Gaussian's covariance diagonal
    filter_top_ratio: float = 1.5  # flag the class with the largest ratio if above this
    filter_any_ratio: float = 2.0  # flag every class whose ratio is above this
    # the final filter (module docstring, step 5); "paper" = methods.md's rule
    filter_rule: Literal["paper", "enrichment", "tail", "either", "all"] = "paper"  # "all": flag every suspect
    filter_enrichment: float = 5.0  # filter_rule=enrichment: flag the class with the largest e_c if above this
    filter_enrichment_any: float = 20.0  # filter_rule=enrichment: flag every class whose e_c is above this
    filter_tail_share: float = 0.0003  # filter_rule=tail: the other classes' loss quantile that sets F_c
    filter_tail: float = 40.0  # filter_rule=tail: flag the class with the largest t_c if above this
    filter_tail_any: float = 100.0  # filter_rule=tail: flag every class whose t_c is above this
    clean_from: Literal["reserved", "trusted"] = "reserved"  # where C comes from
    trusted_detector: str = "ss"  # clean_from=trusted: the detector whose lowest scores make C
    trusted_size: int = 2000  # clean_from=trusted: size of C

    def check(self) -> None:
        r = len(self.distillation_ratios) + 1
        per_round = {"pretrain_epochs": self.pretrain_epochs, "confusion_iters": self.confusion_iters,
                     "confusion_lr": self.confusion_lr, "lambdas": self.lambdas, "batch_factors": self.batch_factors}
        for name, v in per_round.items():
            if len(v) != r:
                raise UserError(f"ct: {name!r} needs one value per round ({r}), got {len(v)}")
        if len(self.class_floor) != r - 1:
            raise UserError(f"ct: 'class_floor' needs one value per distillation ratio ({r - 1})")
        if not all(0 < x <= 1 for x in self.distillation_ratios):
            raise UserError("ct: 'distillation_ratios' must lie in (0, 1]")
        if min(self.class_floor, default=1) < 1 or min(self.batch_factors) < 1 or min(self.lambdas) <= 1:
            raise UserError("ct: 'class_floor' and 'batch_factors' must be ≥ 1, 'lambdas' > 1")
        if min(self.pretrain_epochs) < 0 or min(self.confusion_iters) < 1:
            raise UserError("ct: 'pretrain_epochs' must be ≥ 0 and 'confusion_iters' ≥ 1")
        if min(self.confusion_lr) <= 0 or self.pretrain_lr <= 0:
            raise UserError("ct: learning rates must be positive")
        if min(self.pretrain_batch_size, self.confusion_batch_size, self.filter_dims, self.trusted_size) < 1:
            raise UserError("ct: batch sizes, 'filter_dims' and 'trusted_size' must be ≥ 1")
        if self.base_epochs is not None and self.base_epochs < 1:
            raise UserError("ct: 'base_epochs' must be ≥ 1")
        if self.filter_rule not in ("paper", "enrichment", "tail", "either", "all"):
            raise UserError(f"ct: 'filter_rule' must be 'paper', 'enrichment', 'tail', 'either' or 'all', "
                            f"got {self.filter_rule!r}")
        if not 0 < self.filter_tail_share < 1 or min(self.filter_tail, self.filter_tail_any) <= 1:
            raise UserError("ct: 'filter_tail_share' must lie in (0, 1), 'filter_tail' and 'filter_tail_any' be > 1")
        if min(self.filter_enrichment, self.filter_enrichment_any) <= 1:
            raise UserError("ct: 'filter_enrichment' and 'filter_enrichment_any' must be > 1")
        if self.trusted_detector == "ct":
            raise UserError("ct: 'trusted_detector' must be another detector")


# ------------------------------------------------------------- the pieces
def confusion_labels(teacher_pred: torch.Tensor, t: int, rho: int, k: int) -> tuple[torch.Tensor, int]:
    """The confusion label of step t: (p + ρ + t) mod K after bumping ρ when (ρ + t) mod K == 0.

    The offset (ρ + t) mod K is then never 0, so the label never equals the teacher's prediction p."""
    if (rho + t) % k == 0:
        rho += 1
    return (teacher_pred + rho + t) % k, rho


def class_weights(y: torch.Tensor, k: int, floor: float) -> torch.Tensor:
    """w_c = sqrt(n_c / n + floor)."""
    n_c = torch.bincount(y, minlength=k).float()
    return torch.sqrt(n_c / max(1, len(y)) + floor)


def inspection_loss(lam: float, w: torch.Tensor):
    """Rows with idx < 0 are clean rows (confusion labels); the rest are D_r rows."""

    def loss(logits: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        clean = (idx < 0).to(logits.device)
        ce_clean = F.cross_entropy(logits[clean], y[clean])
        if bool(clean.all()):
            return ce_clean
        yd = y[~clean]
        inv = 1.0 / w[yd]
        ce_w = (F.cross_entropy(logits[~clean], yd, reduction="none") * inv).sum() / inv.sum()
        return ((lam - 1) * ce_clean + ce_w) / lam

    return loss


def _forever(data: ImageData, bs: int, gen: torch.Generator) -> Iterator:
    while True:
        yield from batches(data, bs, shuffle=True, generator=gen, drop_last=True)


def mixed_batches(clean: ImageData, teacher_pred: torch.Tensor, pool: ImageData, bs: int, batch_factor: int,
                  gen: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(x, y, idx): a clean batch with confusion labels every step (idx −1), plus a D_r batch every k-th step."""
    k = clean.num_classes
    clean_it, pool_it = _forever(clean, bs, gen), _forever(pool, bs, gen)
    rho, t = 0, 0
    while True:
        xc, _, ic = next(clean_it)
        yc, rho = confusion_labels(teacher_pred[ic], t, rho, k)
        mark = torch.full_like(ic, -1)
        if t % batch_factor == 0:
            xd, yd, idd = next(pool_it)
            yield torch.cat([xc, xd]), torch.cat([yc, yd]), torch.cat([mark, idd])
        else:
            yield xc, yc, mark
        t += 1


def distill(losses: torch.Tensor, y: torch.Tensor, k: int, ratio: float, floor: int) -> torch.Tensor:
    """Mask of the ratio·N lowest-loss samples, each class topped up to ⌊N_c/floor⌋ with its next-lowest."""
    losses, y = losses.cpu(), y.cpu()
    keep = torch.zeros(len(y), dtype=torch.bool)
    keep[torch.argsort(losses)[: int(ratio * len(y))]] = True
    for _, idx in per_class(y, k):
        need = len(idx) // floor - int(keep[idx].sum())
        if need > 0:
            rest = idx[~keep[idx]]
            keep[rest[torch.argsort(losses[rest])[:need]]] = True
    return keep


def likelihood_ratio_filter(features: np.ndarray, y: np.ndarray, pred: np.ndarray, k: int, dims: int = 2,
                            ridge: float = 1e-3, top: float = 1.5, any_: float = 2.0
                            ) -> tuple[np.ndarray, np.ndarray]:
    """Per class: ratio_c = exp((LL(two Gaussians) − LL(pred≠c Gaussian alone)) / n_c) on PCA features.

    Returns (flag mask over all rows: pred == y in a flagged class, ratio per class)."""
    from sklearn.decomposition import PCA
    from sklearn.mixture import GaussianMixture

    def gaussian(z):
        return GaussianMixture(1, covariance_type="full", reg_covar=ridge, random_state=0).fit(z)

    log_ratio = np.zeros(k)
    for c in range(k):
        rows = np.flatnonzero(y == c)
        inside = pred[rows] == c
        if inside.sum() < 2 or (~inside).sum() < 2:
            continue  # groups too small: ratio 1
        z = PCA(min(dims, features.shape[1], len(rows)), random_state=0).fit_transform(features[rows])
        g_in, g_out = gaussian(z[inside]), gaussian(z[~inside])
        two = g_in.score_samples(z[inside]).sum() + g_out.score_samples(z[~inside]).sum()
        one = g_out.score_samples(z).sum()
        log_ratio[c] = (two - one) / len(rows)
    ratio = np.exp(np.minimum(log_ratio, 700.0))
    flagged_class = ratio > any_
    best = int(np.argmax(ratio))
    if ratio[best] > top:
        flagged_class[best] = True
    return (pred == y) & flagged_class[y], ratio


def fit_enrichment(y: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    """e_c = (share of class c the model predicts as c) / (share of the other classes it predicts as c, +1 smoothed)."""
    n_c = np.bincount(y, minlength=k).astype(float)
    fit = np.bincount(y[pred == y], minlength=k).astype(float)
    into = np.bincount(pred[pred != y], minlength=k).astype(float)  # labelled otherwise, predicted c
    rest = np.maximum(len(y) - n_c, 1.0)
    return (fit / np.maximum(n_c, 1.0)) / ((into + 1.0) / rest)


def enrichment_filter(y: np.ndarray, pred: np.ndarray, k: int, top: float = CTSettings.filter_enrichment,
                      any_: float = CTSettings.filter_enrichment_any) -> tuple[np.ndarray, np.ndarray]:
    """(flag mask: pred == y in a class whose e_c is the largest and > top, or > any_, e per class).

    A class with fewer than 2 samples where pred == label is never flagged."""
    e = fit_enrichment(y, pred, k)
    return flag_classes(e, y, pred, k, top, any_), e


def flag_classes(stat: np.ndarray, y: np.ndarray, pred: np.ndarray, k: int, top: float, any_: float) -> np.ndarray:
    """The paper's decision on a per-class statistic: flag the pred == y samples of the class with the largest
    value if it is above `top`, and of every class above `any_`; a class with < 2 such samples is never flagged."""
    big_enough = np.bincount(y[pred == y], minlength=k) >= 2
    flagged_class = (stat > any_) & big_enough
    best = int(np.argmax(stat))
    if stat[best] > top and big_enough[best]:
        flagged_class[best] = True
    return (pred == y) & flagged_class[y]


def tail_enrichment(losses: np.ndarray, y: np.ndarray, k: int,
                    share: float = CTSettings.filter_tail_share) -> np.ndarray:
    """t_c = (share of class c whose loss is ≤ the `share` quantile of the other classes' losses) / share."""
    t = np.zeros(k)
    for c in range(k):
        mine, other = y == c, np.sort(losses[y != c])
        if not mine.any() or not len(other):
            continue
        floor = other[max(1, int(share * len(other))) - 1]
        t[c] = (losses[mine] <= floor).mean() / share
    return t


def tail_filter(losses: np.ndarray, y: np.ndarray, pred: np.ndarray, k: int,
                share: float = CTSettings.filter_tail_share, top: float = CTSettings.filter_tail,
                any_: float = CTSettings.filter_tail_any) -> tuple[np.ndarray, np.ndarray]:
    """(flag mask: pred == y in a class whose t_c is the largest and > top, or > any_, t per class).

    A class with fewer than 2 samples where pred == label is never flagged."""
    t = tail_enrichment(losses, y, k, share)
    return flag_classes(t, y, pred, k, top, any_), t


# ----------------------------------------------------------- the clean set
def reserved_clean(train: ImageData, ctx: DefenseContext, s: CTSettings) -> tuple[ImageData, str, bool]:
    """(C, where it came from, whether it is the weaker 'trusted' kind)."""
    if s.clean_from == "reserved":
        if ctx.clean is None:
            raise UserError("ct needs a reserved clean set: pass --clean-set N (data from a registered dataset) "
                            "or --clean-data FILE.npz; or, weaker, --defense-opt clean_from=trusted")
        return ctx.clean, ctx.clean_source, False
    det = run_detector(s.trusted_detector, train, ctx, defense_settings(s.trusted_detector, None))
    scores = torch.nan_to_num(det.scores.detach().cpu().double(), nan=float("inf"))
    per = max(1, s.trusted_size // train.num_classes)
    picks = [idx[torch.argsort(scores[idx])[:per]] for _, idx in per_class(train.y, train.num_classes)]
    idx = torch.cat(picks).sort().values
    source = (f"WEAKER: {len(idx)} training samples that {s.trusted_detector} trusts most "
              "(no reserved clean set; these may include poison)")
    ctx.log(f"clean set: {source}")
    return train.subset(idx.to(train.device)), source, True


# ------------------------------------------------------------- the method
def _sgd(model, lr: float, momentum: float, wd: float) -> torch.optim.SGD:
    return torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr, momentum=momentum,
                           weight_decay=wd)


def _join(a: ImageData, b: ImageData) -> ImageData:
    return replace(a, x=torch.cat([a.x, b.x.to(a.device)]), y=torch.cat([a.y, b.y.to(a.device)]))


# the filter fields that confusion caches written before 'tail' existed hold (at their defaults) in their key
_FILTER_FIELDS_IN_KEY = ("filter_dims", "filter_ridge", "filter_top_ratio", "filter_any_ratio", "filter_rule",
                         "filter_enrichment", "filter_enrichment_any")
FILTER_FIELDS = _FILTER_FIELDS_IN_KEY + ("filter_tail_share", "filter_tail", "filter_tail_any")


def confusion_key(s: CTSettings) -> dict:
    """The settings that determine steps 1–4: every setting but the filter's, so that detections differing only
    in the filter share one confusion (a setting added to the filter must not change this key)."""
    unfiltered = replace(s, **{f: getattr(CTSettings(), f) for f in FILTER_FIELDS})
    return {k: v for k, v in asdict(unfiltered).items() if k not in FILTER_FIELDS or k in _FILTER_FIELDS_IN_KEY}


def confuse(train: ImageData, ctx: DefenseContext, s: CTSettings) -> tuple[dict[str, torch.Tensor], dict]:
    """Steps 1–4, the costly part: the last confused model's per-sample loss, prediction and features."""
    tr, k, n = ctx.trainer, train.num_classes, len(train)
    t0 = time.perf_counter()
    clean, source, weaker = reserved_clean(train, ctx, s)
    clean = clean.to(tr.device)
    teacher = normal_model(train, ctx, s.base_epochs)
    teacher_pred = tr.predict(teacher, clean)
    shifted = clean.with_labels((clean.y + 1) % k)
    rounds = len(s.distillation_ratios) + 1
    keep = torch.ones(n, dtype=torch.bool)
    pretrained = ctx.new_model()
    info: dict = {"clean_source": source, "weaker_clean_set": weaker, "n_clean": len(clean), "rounds": []}
    for r in range(rounds):
        last = r == rounds - 1
        pool = train.subset(keep.to(tr.device))
        w = torch.ones(k) if last else class_weights(pool.y.cpu(), k, s.weight_floor)
        fit_set = _join(pool, shifted) if last else pool
        tr.fit(pretrained, fit_set, epochs=s.pretrain_epochs[r], lr=s.pretrain_lr, schedule="constant",
               optimizer=_sgd(pretrained, s.pretrain_lr, s.pretrain_momentum, s.pretrain_weight_decay),
               augment=False, batch_size=s.pretrain_batch_size, evaluate=False, desc=f"ct pretrain {r}")
        confused = ctx.new_model()
        confused.load_state_dict(pretrained.state_dict())
        gen = torch.Generator().manual_seed(ctx.seed * 7919 + r)
        stream = mixed_batches(clean, teacher_pred, pool, s.confusion_batch_size, s.batch_factors[r], gen)
        tr.fit_steps(confused, stream, s.confusion_iters[r],
                     loss=inspection_loss(s.lambdas[r], w.to(tr.device)), lr=s.confusion_lr[r],
                     optimizer=_sgd(confused, s.confusion_lr[r], s.confusion_momentum, s.confusion_weight_decay),
                     desc=f"ct confuse {r}")
        logits = tr.logits(confused, train)
        losses = F.cross_entropy(logits, train.y, reduction="none").cpu()
        row = {"round": r, "pool": len(pool), "seconds": round(time.perf_counter() - t0, 1)}
        if not last:
            keep = distill(losses, train.y, k, s.distillation_ratios[r], s.class_floor[r])
            row["kept"] = int(keep.sum())
        info["rounds"].append(row)
        ctx.log(f"round {r}: pool {len(pool)}" + (f" -> {row['kept']}" if not last else ""))
    tensors = {"losses": losses, "pred": logits.argmax(1).cpu(), "features": tr.features(confused, train).cpu()}
    return tensors, info


@register_detector("ct", settings=CTSettings, needs_clean=True)
def ct(train: ImageData, ctx: DefenseContext, s: CTSettings) -> Detection:
    """CT: confusion training flags what a deliberately confused model still fits; retrain on the rest."""
    s = s or CTSettings()
    k = train.num_classes
    t0 = time.perf_counter()
    train = train.to(ctx.trainer.device)
    # the confusion does not depend on the final filter: computed once for every filter rule
    tensors, info = cached_tensors("confusion", "ct", train, ctx, confusion_key(s), lambda: confuse(train, ctx, s))
    losses, pred = tensors["losses"], tensors["pred"]
    feats = tensors["features"].numpy()
    y_np = train.y.cpu().numpy()
    suspects = (pred == train.y.cpu())
    flagged, ratio = likelihood_ratio_filter(feats, y_np, pred.numpy(), k, s.filter_dims,
                                             s.filter_ridge, s.filter_top_ratio, s.filter_any_ratio)
    by_enrichment, enrichment = enrichment_filter(y_np, pred.numpy(), k, s.filter_enrichment,
                                                  s.filter_enrichment_any)
    by_tail, tail = tail_filter(losses.numpy(), y_np, pred.numpy(), k, s.filter_tail_share, s.filter_tail,
                                s.filter_tail_any)
    if s.filter_rule == "enrichment":
        flagged = by_enrichment
    elif s.filter_rule == "tail":
        flagged = by_tail
    elif s.filter_rule == "either":
        flagged = flagged | by_enrichment
    elif s.filter_rule == "all":
        flagged = suspects.numpy()
    info = dict(info)
    info.update(suspects_before_filter=int(suspects.sum()), filter_rule=s.filter_rule,
                class_ratio=[round(float(v), 4) for v in ratio],
                class_enrichment=[round(float(v), 3) for v in enrichment],
                class_tail=[round(float(v), 2) for v in tail],
                flagged_classes=[c for c in range(k) if flagged[y_np == c].any()],
                seconds=round(info["rounds"][-1]["seconds"] + time.perf_counter() - t0, 1))

    def short(values: list[float]) -> str:  # the paper's ratio is exp(ΔLL / n): 1e48 for a clean split
        return "[" + ", ".join(f"{v:.3g}" for v in values) + "]"

    ctx.log(f"{int(suspects.sum())} suspects, {int(flagged.sum())} flagged after the filter; "
            f"filter {s.filter_rule}; class ratios {short(info['class_ratio'])}, "
            f"enrichment {short(info['class_enrichment'])}, tail {short(info['class_tail'])}")
    return Detection(-losses, torch.from_numpy(np.asarray(flagged)), info)
