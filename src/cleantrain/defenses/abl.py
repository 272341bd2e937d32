"""ABL — Anti-Backdoor Learning (Li et al., NeurIPS 2021).

1. Isolation training: a fresh model trained with the LGA loss
   `sign(ℓ − γ)·ℓ` on the batch-mean cross-entropy ℓ (or flooding
   `|ℓ − γ| + γ`), constant lr, no augmentation. Backdoor samples are learned
   fast and fall far below γ; clean ones are held near it.
2. Isolation: per-sample cross-entropy in one batched pass (eval mode); the
   lowest `isolation_ratio · N` samples are D_iso, the rest D_rest.
3. Fine-tuning on D_rest with plain cross-entropy and augmentation, continuing
   the isolation model with the same optimizer.
4. Unlearning: gradient ascent (loss = −CE) on D_iso at a small constant lr,
   no augmentation, BatchNorm running statistics left unchanged.

Measured on Fashion-MNIST (docs/results/abl.md): after fine-tuning, the
isolated poison has loss ~1e-6, where −CE's gradient vanishes; 20 epochs of
ascent at lr 5e-3…5e-2 left ASR at 100 %. `unlearn_loss="unlikelihood"`
(−log(1 − p_y)) keeps a gradient of order one there.

Choices where the paper is silent, and additions (all settings):
- `unlearn_bn`: "eval" normalises with the running statistics during
  unlearning; "frozen" normalises with batch statistics (as a later
  reimplementation does) — either way the running statistics do not move.
- `guard_tolerance`: our early stop. A slice of the *training* data
  (`guard_fraction` of N, taken at random from D_rest or from its
  least-suspect half, and left out of fine-tuning) is scored before
  unlearning and after every unlearning epoch; when its accuracy falls by
  more than the tolerance the last epoch is undone and unlearning stops.
  The defense cannot tell clean from poison, so the slice may hold poison;
  its accuracy then *drops* a little when unlearning works. `reserved` uses
  the run's reserved clean set instead, when there is one. Measured on
  small-cnn: clean accuracy falls together with the ASR, so the guard
  stops before the backdoor goes; it is off by default.
- `isolation_size="gap"`: the isolated count is read from the data — the
  split of the log-loss distribution that best separates a low-loss mode
  (Otsu's criterion), kept only when that mode is far below the rest —
  instead of a fixed share. Bounded by `[min_ratio, max_ratio]`. Measured:
  it over-isolates (long low tail of clean losses); off by default.
- `rule`: which per-sample number is ranked. "final" is the paper's (loss of
  the last isolation model). "class" ranks each sample's log-loss *relative
  to its labelled class* (minus the class's `class_quantile` log-loss),
  averaged over the last `rule_window` share of the isolation epochs (one
  extra batched pass per such epoch). Easy clean classes (trousers, bags)
  can be fitted below the poison in absolute loss — always with global
  average pooling, and late in long isolation runs even with max pooling —
  but not below their own class; the poison sits far below the genuine
  members of its target class. Evidence: docs/results/abl.md.
- `retain_weight` > 0: unlearning with a retention term. Each step is the
  unlearning loss on a batch of D_iso plus `retain_weight` × (CE on a batch
  of D_rest samples whose label is not one of D_iso's dominant labels + CE on
  a batch of the least suspicious `retain_dominant_share` of the dominant
  labels' D_rest samples). Plain unlikelihood unlearning lowers p_target on
  *every* input (target-class test accuracy fell to ~2 %); the contrast with
  the target class's clean members makes it lower it on the trigger only.
- `refit_epochs` > 0: after unlearning, the D_rest samples that the model fitted
  before unlearning and no longer fits are dropped too (when unlearning removed
  the backdoor they are mostly the poison that isolation missed; they join the
  result's flagged set), and the model is fine-tuned on the rest.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from ..data.batches import to_float
from ..data.core import ImageData
from ..errors import UserError
from .base import DefenseContext, DefenseResult, Detection, register_defense


@dataclass(frozen=True)
class ABLSettings:
    # 1. isolation training
    loss: Literal["lga", "flooding"] = "lga"  # LGA sign(ℓ−γ)·ℓ or flooding |ℓ−γ|+γ, on the batch mean
    gamma: float = 0.5  # loss floor γ
    isolation_epochs: int = 20  # T_iso (paper 20; authors' code 10)
    isolation_lr: float = 0.1  # constant lr of isolation training
    # 2. isolation
    isolation_ratio: float = 0.01  # p: share of samples isolated (isolation_size="fixed")
    isolation_size: Literal["fixed", "gap"] = "fixed"  # fixed share p, or the low-loss mode's size
    min_ratio: float = 0.001  # bounds of the isolated share when isolation_size="gap"
    max_ratio: float = 0.2
    rule: Literal["final", "class"] = "final"  # final loss (paper), or log-loss relative to the labelled class
    class_quantile: float = 0.75  # rule="class": a class's reference log-loss is this quantile of it
    rule_window: float = 0.5  # rule="class": average over this share of the last isolation epochs
    # 3. fine-tuning on D_rest (continues the isolation optimizer)
    finetune_epochs: int = 60  # paper 60
    finetune_lr: float = 0.1  # peak lr; the recipe's schedule runs over the fine-tuning epochs
    # 4. unlearning on D_iso
    unlearn_epochs: int = 20  # T_un (paper 20)
    unlearn_lr: float = 5e-4  # constant
    unlearn_loss: Literal["ascent", "unlikelihood"] = "ascent"  # −CE (paper) or −log(1 − p_y)
    unlearn_bn: Literal["eval", "frozen"] = "eval"  # BN normalises with running or batch stats; never updated
    # our additions against the clean accuracy that unlearning costs (docs/results/abl.md, 2026-11-29)
    retain_weight: float = 0.0  # 0 = off; else each unlearning step adds this × CE on a batch of D_rest
    retain_exclude_share: float = 0.1  # a label holding ≥ this share of D_iso is "dominant" (the likely target)
    retain_dominant_share: float = 0.0  # of a dominant label's D_rest samples, keep the least suspicious share
    refit_epochs: int = 0  # 0 = off; else flag D_rest samples fitted before unlearning but not after, drop them, fine-tune
    refit_lr: float = 0.01  # peak lr of that fine-tuning (the recipe's schedule, a new optimizer)
    batch_size: int = 128
    # our addition: stop unlearning when accuracy on a held-out slice falls
    guard_tolerance: float | None = None  # None = off; else max accuracy drop (0.02 = 2 points)
    guard_source: Literal["rest", "least_suspect", "reserved"] = "least_suspect"
    guard_fraction: float = 0.05  # share of the training set held out for the guard

    def check(self) -> None:
        if not (self.gamma > 0 and math.isfinite(self.gamma)):
            raise UserError("abl: 'gamma' must be a positive number")
        if not 0 < self.isolation_ratio < 1 or not 0 < self.min_ratio <= self.max_ratio < 1:
            raise UserError("abl: 'isolation_ratio', 'min_ratio' ≤ 'max_ratio' must lie in (0, 1)")
        if min(self.isolation_epochs, self.finetune_epochs, self.unlearn_epochs) < 0:
            raise UserError("abl: epochs must be ≥ 0")
        if self.isolation_epochs < 1:
            raise UserError("abl: 'isolation_epochs' must be ≥ 1")
        for name in ("isolation_lr", "finetune_lr", "unlearn_lr"):
            v = getattr(self, name)
            if not (v > 0 and math.isfinite(v)):
                raise UserError(f"abl: {name!r} must be a positive number")
        if self.batch_size < 1:
            raise UserError("abl: 'batch_size' must be ≥ 1")
        if self.guard_tolerance is not None and not 0 <= self.guard_tolerance < 1:
            raise UserError("abl: 'guard_tolerance' must lie in [0, 1) (or be null = off)")
        if not 0 < self.class_quantile < 1 or not 0 < self.rule_window <= 1:
            raise UserError("abl: 'class_quantile' must lie in (0, 1) and 'rule_window' in (0, 1]")
        if not (self.retain_weight >= 0 and math.isfinite(self.retain_weight)):
            raise UserError("abl: 'retain_weight' must be a number ≥ 0 (0 = off)")
        if not 0 < self.retain_exclude_share <= 1:
            raise UserError("abl: 'retain_exclude_share' must lie in (0, 1]")
        if not 0 <= self.retain_dominant_share <= 1:
            raise UserError("abl: 'retain_dominant_share' must lie in [0, 1]")
        if self.refit_epochs < 0 or not (self.refit_lr > 0 and math.isfinite(self.refit_lr)):
            raise UserError("abl: 'refit_epochs' must be ≥ 0 and 'refit_lr' a positive number")
        if not 0 < self.guard_fraction < 0.5:
            raise UserError("abl: 'guard_fraction' must lie in (0, 0.5)")


# ------------------------------------------------------------------ losses
def lga(gamma: float):
    """Local gradient ascent on the batch mean: descend above γ, ascend below."""

    def loss(logits, y, idx):
        ce = F.cross_entropy(logits, y)
        return torch.sign(ce - gamma) * ce

    return loss


def flooding(gamma: float):
    """Flooding |ℓ − γ| + γ: the same gradient as LGA."""

    def loss(logits, y, idx):
        return (F.cross_entropy(logits, y) - gamma).abs() + gamma

    return loss


def ascent(logits, y, idx):
    """Gradient ascent on the cross-entropy (the paper's unlearning loss)."""
    return -F.cross_entropy(logits, y)


def unlikelihood(logits, y, idx):
    """−log(1 − p_y): pushes the given label's probability down like ascent, but its gradient does not
    vanish when p_y ≈ 1 (−CE's does), and it stops pushing once p_y is small instead of diverging."""
    logp = F.log_softmax(logits, 1)
    others = logp.scatter(1, y[:, None], float("-inf")).logsumexp(1)  # log Σ_{j≠y} p_j
    return -others.mean()


ISOLATION_LOSSES = {"lga": lga, "flooding": flooding}
UNLEARN_LOSSES = {"ascent": ascent, "unlikelihood": unlikelihood}


# --------------------------------------------------------------- isolation
def gap_count(losses: torch.Tensor, lo: int, hi: int) -> int:
    """Size of the low-loss mode: Otsu's split of log-loss, kept only if the mode sits far below the rest.

    Returns `lo` when no split in [lo, hi] has its lower group at least ten
    times lower (in median loss) than the upper group."""
    v = torch.sort(losses.double().clamp_min(1e-12).log10()).values
    n = len(v)
    hi = min(hi, n - 1)
    if hi <= lo:
        return lo
    csum = torch.cumsum(v, 0)
    k = torch.arange(1, n, dtype=torch.float64)
    mean_lo = csum[:-1] / k
    mean_hi = (csum[-1] - csum[:-1]) / (n - k)
    between = k * (n - k) * (mean_lo - mean_hi) ** 2  # Otsu: maximise between-group variance
    between[: lo - 1] = -1
    between[hi:] = -1
    best = int(torch.argmax(between)) + 1  # size of the lower group
    if best < lo or float(v[best:].median() - v[:best].median()) < 1.0:
        return lo
    return best


def class_relative(losses: torch.Tensor, y: torch.Tensor, num_classes: int, q: float) -> torch.Tensor:
    """log-loss minus the q-quantile log-loss of the sample's labelled class."""
    logl = losses.double().clamp_min(1e-12).log()
    ref = torch.zeros(num_classes, dtype=torch.float64)
    for c in range(num_classes):
        members = logl[y == c]
        if len(members):
            ref[c] = torch.quantile(members, q)
    return logl - ref[y]


@dataclass
class Isolation:
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    losses: torch.Tensor  # final per-sample loss (N)
    scores: torch.Tensor  # N, higher = more suspicious
    isolated: torch.Tensor  # N bool
    info: dict


def isolate(train: ImageData, ctx: DefenseContext, s: ABLSettings) -> Isolation:
    """Steps 1–2: LGA isolation training, then the lowest-loss samples."""
    t0 = time.perf_counter()
    model = ctx.new_model()
    curves: list[torch.Tensor] = []
    first = s.isolation_epochs - max(1, round(s.rule_window * s.isolation_epochs))

    def record(epoch, m):
        if epoch >= first:
            curves.append(ctx.trainer.per_sample_loss(m, train).cpu())

    fit = ctx.trainer.fit(model, train, epochs=s.isolation_epochs, loss=ISOLATION_LOSSES[s.loss](s.gamma),
                          lr=s.isolation_lr, schedule="constant", augment=False, batch_size=s.batch_size,
                          desc="isolation", on_epoch=record if s.rule == "class" else None)
    ran_last = bool(fit.history) and fit.history[-1]["epoch"] == s.isolation_epochs and len(curves) > 0
    losses = curves[-1] if s.rule == "class" and ran_last else ctx.trainer.per_sample_loss(model, train).cpu()
    y = train.y.cpu()
    if s.rule == "class" and curves:  # (a resumed run keeps only the epochs it ran again)
        scores = -torch.stack([class_relative(c, y, train.num_classes, s.class_quantile) for c in curves]).mean(0)
    else:  # the paper's rule
        scores = -losses
    n = len(train)
    if s.isolation_size == "gap":
        k = gap_count(torch.exp(-scores) if s.rule == "class" else losses, max(1, round(s.min_ratio * n)),
                      max(1, round(s.max_ratio * n)))
    else:
        k = max(1, round(s.isolation_ratio * n))
    order = torch.argsort(-scores, stable=True)
    isolated = torch.zeros(n, dtype=torch.bool)
    isolated[order[:k]] = True
    labels = torch.bincount(train.y.cpu()[isolated], minlength=train.num_classes)
    info = {"n_isolated": k, "isolated_share": k / n, "isolation_rule": s.rule,
            "isolation_size": s.isolation_size, "isolated_label_counts": labels.tolist(),
            "isolated_max_loss": float(losses[isolated].max()), "median_loss": float(losses.median()),
            "isolation_seconds": round(time.perf_counter() - t0, 3)}
    ctx.log(f"isolated {k} of {n} samples (labels {labels.tolist()})")
    return Isolation(model, fit.optimizer, losses, scores, isolated, info)


def abl_detect(train: ImageData, ctx: DefenseContext, s: ABLSettings) -> Detection:
    """ABL's isolation only: score = −loss after LGA training; flagged = the isolated samples."""
    iso = isolate(train, ctx, s)
    return Detection(iso.scores, iso.isolated, iso.info)


# -------------------------------------------------------------- unlearning
def guard_slice(train: ImageData, ctx: DefenseContext, iso: Isolation, s: ABLSettings) -> tuple[ImageData, torch.Tensor]:
    """The guard's samples (and the training mask they take out of fine-tuning)."""
    n = len(train)
    held = torch.zeros(n, dtype=torch.bool)
    if s.guard_source == "reserved":
        return ctx.need_clean("abl guard_source=reserved"), held
    pool = torch.nonzero(~iso.isolated).flatten()
    if s.guard_source == "least_suspect":
        pool = pool[torch.argsort(iso.scores[pool], stable=True)[: max(1, len(pool) // 2)]]
    g = torch.Generator().manual_seed(ctx.seed + 7)
    pick = pool[torch.randperm(len(pool), generator=g)[: max(1, round(s.guard_fraction * n))]]
    held[pick] = True
    return train.subset(held.to(train.y.device)), held


def retain_pool(train: ImageData, isolated: torch.Tensor, held: torch.Tensor, scores: torch.Tensor,
                s: ABLSettings) -> torch.Tensor:
    """The retention samples (mask over `train`): D_rest samples whose label is not a dominant label of
    D_iso, plus, of each dominant label, the `retain_dominant_share` of its D_rest samples with the lowest
    isolation score (least suspicious).

    An all-to-one backdoor's poison all carries the target label, and the
    isolated set is mostly that label, so the non-dominant labels hold (almost)
    no poison. Leaving the target label out altogether teaches the model that
    nothing is that class (measured: its test accuracy falls to ~0), hence the
    share of its least suspicious members."""
    y = train.y.cpu()
    dominant = dominant_labels(train, isolated, s)
    pool = ~isolated & ~held & ~dominant[y]
    for c in torch.nonzero(dominant).flatten().tolist():
        members = torch.nonzero((y == c) & ~isolated & ~held).flatten()
        k = round(s.retain_dominant_share * len(members))
        if k:
            pool[members[torch.argsort(scores[members], stable=True)[:k]]] = True
    return pool


def dominant_labels(train: ImageData, isolated: torch.Tensor, s: ABLSettings) -> torch.Tensor:
    """Labels holding at least `retain_exclude_share` of D_iso (bool per class)."""
    counts = torch.bincount(train.y.cpu()[isolated], minlength=train.num_classes)
    return counts >= max(1.0, s.retain_exclude_share * int(isolated.sum()))


def unlearn_retaining(model, train: ImageData, forget: torch.Tensor, keep: torch.Tensor, ctx: DefenseContext,
                      s: ABLSettings, steps: int | None = None, lr: float | None = None,
                      desc: str = "unlearn+retain", evaluate: bool = True) -> tuple[list[dict], dict]:
    """Step 4 with a retention term. Every step takes a batch of `forget`, a batch of the `keep` samples of
    non-dominant labels and a batch of those of dominant labels (masks over `train`; each at most
    `batch_size`) and makes one optimiser step on unlearning loss + `retain_weight` × (CE of the second +
    CE of the third), each term a mean over its own batch — so the few kept members of the target label
    weigh as much as all other classes together and the model has to lower p_target on the isolated
    samples *without* lowering it on the label's clean members. As many steps as plain unlearning takes."""
    tr = ctx.trainer
    dom = dominant_labels(train, forget, s)[train.y.cpu()]
    groups = [torch.nonzero(m).flatten() for m in (forget, keep & ~dom, keep & dom)]
    bs = s.batch_size
    steps = steps if steps is not None else s.unlearn_epochs * max(1, -(-len(groups[0]) // bs))
    lr = lr if lr is not None else s.unlearn_lr
    g = torch.Generator().manual_seed(ctx.seed + 11 + steps)
    forget_loss = UNLEARN_LOSSES[s.unlearn_loss]
    group_of = torch.zeros(len(train), dtype=torch.long)
    group_of[groups[1]], group_of[groups[2]] = 1, 2
    group_of = group_of.to(tr.device)

    def stream():
        queues = [torch.empty(0, dtype=torch.long) for _ in groups]
        while True:
            take = []
            for i, rows in enumerate(groups):
                n = min(bs, len(rows))
                if len(queues[i]) < n:
                    queues[i] = torch.cat([queues[i], rows[torch.randperm(len(rows), generator=g)]])
                take.append(queues[i][:n])
                queues[i] = queues[i][n:]
            idx = torch.cat(take).to(train.y.device)
            yield to_float(train.x[idx]), train.y[idx], idx.to(tr.device)

    def loss(logits, y, idx):
        grp = group_of[idx]
        m = grp == 0
        value = forget_loss(logits[m], y[m], idx[m])
        for k in (1, 2):
            m = grp == k
            if m.any():
                value = value + s.retain_weight * F.cross_entropy(logits[m], y[m])
        return value

    fit = tr.fit_steps(model, stream(), steps, loss=loss, lr=lr, optimizer=tr.new_optimizer(model, lr),
                       bn=s.unlearn_bn, desc=desc)
    if evaluate and tr.evaluator is not None and fit.history:
        fit.history[-1].update(tr.evaluator(model))
    return fit.history, {"unlearn_epochs_run": s.unlearn_epochs, "unlearn_steps": steps,
                         "n_retain_other": len(groups[1]), "n_retain_dominant": len(groups[2])}


def refit(model, train: ImageData, isolated: torch.Tensor, held: torch.Tensor, fitted_before: torch.Tensor,
          ctx: DefenseContext, s: ABLSettings) -> tuple[torch.Tensor, dict]:
    """After unlearning: the D_rest samples the model fitted before unlearning but no longer fits share what
    was unlearned (the rest of the poison, when unlearning removed the backdoor); drop them with D_iso and
    fine-tune the unlearned model on what is left. Returns the mask of the newly dropped samples."""
    tr = ctx.trainer
    fitted_after = (tr.predict(model, train).cpu() == train.y.cpu())
    lost = ~isolated & ~held & fitted_before & ~fitted_after
    keep = ~isolated & ~held & ~lost
    t0 = time.perf_counter()
    tr.fit(model, train.subset(keep.to(train.y.device)), epochs=s.refit_epochs, lr=s.refit_lr,
           batch_size=s.batch_size, desc="refit")
    labels = torch.bincount(train.y.cpu()[lost], minlength=train.num_classes)
    ctx.log(f"refit: dropped {int(lost.sum())} more samples (labels {labels.tolist()}), fine-tuned on {int(keep.sum())}")
    return lost, {"n_refit_dropped": int(lost.sum()), "refit_dropped_label_counts": labels.tolist(),
                  "n_refit": int(keep.sum()), "refit_seconds": round(time.perf_counter() - t0, 3)}


def unlearn(model, forget: ImageData, ctx: DefenseContext, s: ABLSettings,
            guard: ImageData | None = None, before: float | None = None) -> tuple[list[dict], dict]:
    """Step 4: gradient ascent on `forget`. With a guard, one Trainer stage per epoch so it can stop: an epoch
    after which the guard's accuracy is more than `guard_tolerance` below `before` (default: the accuracy at the
    start of this call) is undone and ends it."""
    tr = ctx.trainer
    opt = tr.new_optimizer(model, s.unlearn_lr)
    args = dict(loss=UNLEARN_LOSSES[s.unlearn_loss], lr=s.unlearn_lr, schedule="constant", optimizer=opt, augment=False,
                bn=s.unlearn_bn, batch_size=s.batch_size)
    if guard is None:  # evaluated as the recipe's eval_every says
        fit = tr.fit(model, forget, epochs=s.unlearn_epochs, desc="unlearn", **args)
        return fit.history, {"unlearn_epochs_run": s.unlearn_epochs}

    def guard_acc(m) -> float:
        return float((tr.predict(m, guard).cpu() == guard.y.cpu()).float().mean())

    before = guard_acc(model) if before is None else before
    history: list[dict] = []
    info: dict = {"unlearn_epochs_run": 0, "guard_acc_before": before}
    for e in range(s.unlearn_epochs):
        saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
        fit = tr.fit(model, forget, epochs=1, desc=f"unlearn {e + 1}/{s.unlearn_epochs}",
                     on_epoch=lambda ep, m: {"guard_acc": guard_acc(m)}, **args)
        history += fit.history
        info["unlearn_epochs_run"] = e + 1
        acc = fit.history[-1].get("guard_acc", before) if fit.history else before
        info["guard_acc_after"] = acc
        if before - acc > s.guard_tolerance:
            model.load_state_dict(saved)
            info.update(guard_stopped_at=e + 1, unlearn_epochs_kept=e)
            ctx.log(f"guard: accuracy {before:.3f} → {acc:.3f} at unlearning epoch {e + 1}; undone, stopped")
            break
    return history, info


@register_defense("abl", settings=ABLSettings, detect=abl_detect)
def abl(train: ImageData, ctx: DefenseContext, s: ABLSettings) -> DefenseResult:
    """ABL (Li et al. 2021): isolate the fastest-learned samples with LGA, fine-tune on the rest, unlearn them."""
    start = len(ctx.trainer.history)
    iso = isolate(train, ctx, s)
    guard, held = (guard_slice(train, ctx, iso, s) if s.guard_tolerance is not None
                   else (None, torch.zeros(len(train), dtype=torch.bool)))
    rest = ~iso.isolated & ~held
    t0 = time.perf_counter()
    if s.finetune_epochs > 0:
        ctx.trainer.fit(iso.model, train.subset(rest.to(train.y.device)), epochs=s.finetune_epochs,
                        lr=s.finetune_lr, optimizer=iso.optimizer, batch_size=s.batch_size, desc="finetune")
    t1 = time.perf_counter()
    fitted = (ctx.trainer.predict(iso.model, train).cpu() == train.y.cpu()) if s.refit_epochs > 0 else None
    if s.retain_weight > 0:
        if guard is not None:
            raise UserError("abl: 'retain_weight' and 'guard_tolerance' cannot be combined")
        _, uinfo = unlearn_retaining(iso.model, train, iso.isolated, retain_pool(train, iso.isolated, held, iso.scores, s), ctx, s,
                                     evaluate=s.refit_epochs == 0)  # refit evaluates at its end
    else:
        _, uinfo = unlearn(iso.model, train.subset(iso.isolated.to(train.y.device)), ctx, s, guard)
    info = {**iso.info, **uinfo, "n_finetune": int(rest.sum()), "n_guard": int(held.sum()),
            "finetune_seconds": round(t1 - t0, 3), "unlearn_seconds": round(time.perf_counter() - t1, 3)}
    flagged = iso.isolated
    if fitted is not None:
        lost, rinfo = refit(iso.model, train, iso.isolated, held, fitted, ctx, s)
        flagged = iso.isolated | lost
        info.update(rinfo)
    return DefenseResult(iso.model, iso.scores, flagged, ctx.trainer.history[start:], info)
