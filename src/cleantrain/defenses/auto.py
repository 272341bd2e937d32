"""auto — the composition the benchmark measured strongest: what to run when you do not know the literature.

1. Detect: run each of `detectors` (default CT and SCAn; any registered
   detectors, each with its own settings from `detector_opts` on top of
   `DETECTOR_DEFAULTS`: CT without its final filter) on the training set;
   a sample is a suspect when any of them flags it. SCAn joined on full
   Fashion-MNIST (docs/results/core.md): it reuses CT's teacher (≈ 25-60 s)
   and flags nothing outside a class it finds contaminated, and it catches
   what CT misses: on WaNet 10 % the union keeps 88 of 6 000 poison samples
   (CT alone 468) and `auto`'s ASR fell from 16.8 % to 2.0 % (CA 91.4 %);
   adaptive_patch 1 % ASR 3.8 % where CT alone left 98.9 %. Adding NONE
   was measured and rejected: it adds no poison that CT misses on BadNets
   10 % and flags 35 % of the clean samples on Blend 10 %. The score is the
   mean of each detector's score rank (0 = least, 1 = most suspect; ties
   share their mean rank), so AUROC stays meaningful.
   When no label holds half of the flags (`widen_below`) the detectors
   have not isolated an all-to-one attack's target, and the flags are
   widened by as many again (`rank_flags`) of the samples the mean rank
   scores most suspect: at 1 % on WaNet and adaptive_blend CT's flags were
   mostly clean while its score ranked the poison well (TPR of the flags
   18 / 36 %, of the rank's top of the same size 81 / 84 %).
2. Name the target: the label most common among the most suspect tenth
   of the flags (`top_share`; on the 19 auto runs of the core and auto-rank
   grids it is the target every time; on sets where the detectors miss the
   poison, Blend / adaptive_blend / WaNet / SIG at 0.3 %, it named a clean
   class). An all-to-one attack's poison all
   carries it, so when that label holds at least `target_purity` of the
   tenth (`remove: target`) only the flags of that label are removed,
   united with that label's top-ranked samples, `target_widen` × as many
   (mostly the same ones); the flags of other labels are clean samples
   and are kept. On the core grid this cut the clean samples removed
   from 2.2-8.0 % to 0.0-2.2 % at the same recall or higher; the union
   raised it at 1 % (WaNet 82 → 94 %, adaptive_blend 85 → 96 %). When no label
   dominates the tenth (TaCT 0.3 %: 0.45) and there is no clean-set model
   to confirm its label (step 2c), every flag is removed (`remove: all`
   always does); with one, that label stays the candidate. This is not a test for all-to-all
   attacks: on BadNets all-to-all 10 % the most suspect tenth was one
   label's poison (purity 0.99), auto removed 9 % of the poison and ASR
   stayed 79 % (`remove: all`: half the poison removed, ASR 60 %); step
   2b is.
2b. All-to-all: a model trained on the reserved clean set alone (the
   "reference", `reference_epochs`) never saw the poison, so it gives a
   dirty-label poison sample's given label almost no probability. A label
   other than the named target whose flags it mostly contradicts
   (`spread_share` of them below `contradict_below`) carries poison too,
   which an all-to-one attack's other labels do not (their flags are
   clean samples the confused model fits). The attack is then not
   all-to-one, and every sample the reference contradicts is removed as
   well, in every label, flagged or not: on BadNets all-to-all 10 % the
   flags held 55 % of the poison and almost none of two labels' poison,
   while the reference contradicted 98 % of the poison and 3.8 % of the
   clean samples. Measured in docs/results/core.md ("auto on
   all-to-all attacks").
   It takes two such labels (`spread_min_labels`): on SIG 1 % (full
   data) one clean label had 21 of its 34 flags contradicted.
   Otherwise the same model corrects the named target: the label with
   the most contradicted flags, when it has at least twice as many as
   the named one (`reference_target`), is the target, and every sample of
   it the reference contradicts is removed as well. The top tenth named a
   clean label on WaNet and adaptive_patch 1 % at 10 000 images and on
   SIG 1 % at 60 000; the target held 4-9x the named label's contradicted
   flags there. It rests on poison the reference contradicts (dirty-label
   poison); on clean-label SIG it worked through the flags crowding into
   the target, whose hard T-shirts the reference contradicts as well
   (only 70 of the 600 poison images were contradicted), which a target
   class with few hard samples would not give.
2a. Far contradictions (`far_target`; checked after step 2b, on the
   same model): the flags can miss the target altogether (adaptive_blend
   1 % at 10 000 images: none of the target's poison among them, ASR
   67.6 %). The reference calls a clean sample it contradicts by a related
   class (shirt for T-shirt), but an all-to-one attack's poison by its own
   class, which is mostly unrelated to the target (sneaker for T-shirt).
   A label with many more such "far" contradictions than the others
   (anomaly index ≥ `far_index`, ≥ `far_min` samples) is the target,
   confirmed by the reference; its contradicted samples are removed as in
   step 2b. Clean sets and clean-label SIG gave indices of 0.9-8.1 with
   at most 20 such samples (10 000 images; the 8.1 had 16, hence
   `far_min` 40), the dirty-label targets at 1-10 % 11.4-224 with 57-677
   (docs/results/core.md, "Poison the flags miss: far contradictions").
2c. Confirm the target (all-to-one, `evidence_share`, `confirm_by`): the
   flags crowd into one label on clean data too (the hardest class: on a
   clean 10 000-image set, 544 shirts), so that label's suspects are
   removed only when the reference contradicts at least 15 % of them
   (dirty-label poison; 29-87 % on the grid's right targets, 2-12 % on
   clean data and wrongly named labels, though one clean subset gave 30 %
   of only 98 flags) and at least `far_share` (30 %) of those it contradicts
   go to an unrelated class (step 2a's "far" ones: 53-73 % on the 10 000-
   image grid's dirty-label targets, 33 % for Blend 1 % against shirts, whose
   poison comes partly from related classes; the labels wrongly named and
   over 15 % contradicted had 0-4 % on two clean sets (shirts), 11 % on SIG
   1 % (coats, 288 clean removed before) and 26 % on SIG 1 % against shirts
   (T-shirts)), judged before the reference's own
   picks of that label are added, or SCAn's class test flags the label
   (clean-label SIG, 11-15 % contradicted; SCAn also flags bags and
   sandals on clean 10 000-image sets, its weak half, so a class it flags
   with an anomaly index under `confirm_index` needs `confirm_share` of
   its suspects contradicted as well). Unconfirmed,
   nothing is removed or unlearned and the model is a normal one;
   confirmed by SCAn alone, nothing is unlearned. Measured in
   docs/results/core.md ("`auto` on clean data"). Confirmed by the
   reference, the target's other samples it contradicts are removed as
   well (`add_contradicted`): poison the detectors missed (WaNet 10 %,
   full data: 221 of the 349 missed, with 239 clean ones; ASR 5.4 ->
   3.0 %).
2d. Trigger transfer (`transfer_scales`; only for a target nothing above
   confirmed): the label's suspects' mean image minus that of its other
   samples holds the trigger when they hold the poison. Added onto the
   reserved clean set's other images, it turns them into the label on the
   model trained on all the data far more often than on the model trained
   without the suspects (the one step 3 then reuses). This is the check for
   clean-label poison the reference cannot contradict: on SIG 1 % (full
   data) `far_share` had left the target unconfirmed and ASR at 8.8 %.
   Confirmed by it alone, nothing is unlearned. Measured in
   docs/results/core.md ("A trigger that transfers").
3. Retrain a fresh model normally on the samples not removed
   (`retrain_kept`, as every detector's defense does).
4. Unlearn what survived (not after step 2b found a spread attack, which
   has no single target): the removed suspects of the target label
   (`target_from: top`; the older rule, `flags`, takes every label holding
   ≥ `dominant_share` of the flags and took clean classes in 10 of 19 grid
   runs), of them those the clean-set model contradicts (`unlearn_on`: the
   others are mostly clean samples of the target, which a retrained model
   rightly fits); if the retrained model still
   predicts the given label of more than `unlearn_when` of them (a backdoor
   that poison the detectors missed taught it), run ABL's unlearning
   (`abl.unlearn`: gradient ascent on the suspects, BatchNorm statistics
   kept) one epoch at a time until it fits no more than `unlearn_until` of
   them, at most `unlearn_epochs` epochs; the epoch after which accuracy on
   the reserved clean set is more than `guard_tolerance` below where
   unlearning began is undone and ends it. When the detectors caught the
   poison the retrained model does not fit the suspects and nothing is
   unlearned: unlearning a model that never learned the trigger only
   destroys it (measured: one ascent epoch at lr 0.005 took a clean model
   from 50 % to 11 % accuracy on the guard set).

Why this composition, with the measured numbers: docs/results/core.md and docs/results/bench.md.
"""


from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch

from ..data.core import ImageData
from ..errors import UserError
from ..registry import defenses
from .abl import ABLSettings, unlearn
from .base import (DefenseContext, DefenseResult, Detection, defense_settings, register_defense, retrain_kept,
                   run_detector)
from .shared import normal_fit, normal_model


# CT's budget in auto: that of configs/ct-fashion-mnist.yaml (the published 6 rounds with 2-6 pretraining
# epochs and 200-300 confusion steps), not CIFAR-10's 100-epoch pretraining, so that `--defense auto`
# without a preset costs a few times normal training rather than a hundred.
# Its final filter is off ("all": every sample the confused model still fits is flagged): on full Fashion-MNIST
# the paper's filter flagged nothing on WaNet 10 % although CT's score had AUROC 0.989 (docs/results/bench.md),
# and the clean samples it would spare are ~2 % of the data, which a retraining hardly misses.
DETECTOR_DEFAULTS: dict[str, dict[str, Any]] = {
    "ct": {"pretrain_epochs": [2, 2, 4, 6, 6, 6], "confusion_iters": [300, 300, 300, 300, 200, 200],
           "filter_rule": "all"},
}


def detector_settings(key: str, s: "AutoSettings"):
    return defense_settings(key, {**DETECTOR_DEFAULTS.get(key, {}), **(s.detector_opts.get(key) or {})})


@dataclass(frozen=True)
class AutoSettings:
    detectors: tuple[str, ...] = ("ct", "scan")  # flag the union of these detectors' suspects (measured)
    # {detector key: {setting: value}}, on top of DETECTOR_DEFAULTS
    detector_opts: dict[str, Any] = field(default_factory=dict)
    # Widen the flags with the rank: also flag the rank_flags × (number flagged) samples the mean rank scores most
    # suspect (0 = never), when no label holds `widen_below` of the flags (an all-to-one attack the detectors caught
    # fills its flags with its target label: 79-92 % at 10 % in the core grid, 33-54 % at 1 %; 1 = always). At 1 %
    # WaNet / adaptive_blend the rank's top held 4.5× / 2.3× more poison than CT's flags of the same size; with
    # target_from="top" auto's ASR went from 62 / 98 % to 1.7 / 5.0 % (docs/results/core.md, "How auto got its
    # current defaults")
    rank_flags: float = 1.0
    widen_below: float = 0.5
    dominant_share: float = 0.2  # unlearning looks at the suspects of labels holding at least this share of them
    # how the label(s) to unlearn are chosen: "flags" = those holding ≥ dominant_share of all flagged samples;
    # "top" = the one most common label among the top-ranked `top_share` of the flagged samples (on the 19 auto
    # runs of the core and auto-rank grids it is the target every time; "flags" also took a clean class in 10
    # and missed the target in 5)
    target_from: Literal["flags", "top"] = "top"
    top_share: float = 0.1
    # what retraining leaves out: "target" = the flags of the target label (the most common label of the top
    # `top_share` of the flags, when it holds at least `target_purity` of them; 0.63-1.00 on the core grid) united
    # with that label's `target_widen` × as many top-ranked samples; "all" = every flag
    remove: Literal["target", "all"] = "target"
    target_purity: float = 0.5
    target_widen: float = 1.0
    # All-to-all / several targets (step 2b): a model trained on the reserved clean set alone (`reference_epochs`;
    # 0 = no check) never saw the poison, so it contradicts a dirty-label poison sample's given label (gives it less
    # than `contradict_below`). A label other than the target whose flags it contradicts in at least `spread_share`
    # (of ≥ `spread_min_flags` flags) carries poison too; when `spread_min_labels` labels do, the attack is not
    # all-to-one, and every sample the reference contradicts, in any label, is removed as well. Otherwise the label
    # with the most contradicted flags may replace the named target (`reference_target`, `retarget_ratio`).
    reference_epochs: int = 30
    contradict_below: float = 0.05
    spread_share: float = 0.5
    spread_min_flags: int = 20
    spread_min_labels: int = 2  # ... in at least this many labels other than the named target
    retarget_ratio: float = 2.0  # see `reference_target`
    # Step 2c: an all-to-one target is confirmed before anything is removed: the reference contradicts at least
    # `evidence_share` of its suspects (dirty-label poison), or a detector of `confirm_by` (a class-level test) flags
    # the class (clean-label poison keeps its true label). Unconfirmed, nothing is removed or unlearned; confirmed by
    # `confirm_by` alone, nothing is unlearned. 0 = no check. On a clean 10 000-image set auto had removed 597 of the
    # ~1 000 shirts (5.7 % of them contradicted) and lost 3.5 CA points; right targets held 29-87 % (dirty-label) and
    # 11-15 % (SIG, which SCAn flags), clean or wrongly named ones 2-12 % (one clean subset: 30 % of 98 flags); SCAn
    # also flags bags and sandals on clean 10 000-image sets (docs/results/core.md, "`auto` on clean data")
    evidence_share: float = 0.15
    # ... or the reference contradicts the label's samples, flagged or not, in favour of unrelated classes far more
    # often than any other label's (`far_target`, step 2a; it also names the target when the flags named another
    # label): "unrelated" = the reference's mean probability between the two classes under `far_below` (0 = no
    # check); the label needs an anomaly index of at least `far_index` and `far_min` such samples (measured: the
    # module docstring, step 2a)
    far_below: float = 0.01
    far_index: float = 6.0
    far_min: int = 40
    # ... and `evidence_share` confirms only when at least `far_share` of the suspects the reference contradicts go to
    # a class unrelated to the label (dirty-label poison comes from every class; a hard clean sample's confusion is
    # with a related one); 0 = no such check, as with far_below = 0
    far_share: float = 0.3
    confirm_by: tuple[str, ...] = ("scan",)
    # ... but a class it flags only weakly (anomaly index under `confirm_index`, where the detector reports one, as SCAn
    # does) confirms only when the reference also contradicts at least `confirm_share` of its suspects: SCAn's own bar
    # (e) lets easy clean classes through on 10 000 images (bags at index 2.8-3.9 with 1.5-1.8 % contradicted, named by
    # WaNet 1 %'s flags: 579-604 clean bags removed, CA -2.2 to -2.9), while the clean-label targets it confirmed had
    # index 408-540 (SIG 10 %) or 14.9 % contradicted (SIG 1 %, full data, index 3.4-3.6); the dirty-label targets
    # pass `evidence_share` anyway (docs/results/core.md, "SCAn's weak confirmations")
    confirm_index: float = 10.0
    confirm_share: float = 0.05
    # ... or, when neither confirms it, the trigger transfers (step 2d, `trigger_transfer`): the mean of the label's
    # suspects minus the mean of its other samples, added `transfer_scales` × onto the reserved clean set's images of
    # the other labels, turns at least `transfer_lift` more of them into the label on the normally trained model than
    # on the one trained without the suspects, and `transfer_ratio` × as many, at a scale where the second still names
    # `transfer_keep` of what it named right unstamped; () = no such check. Measured on 14 labels of cached grid runs
    # (docs/results/core.md, "A trigger that transfers"): the four targets whose suspects held poison 0.13-1.00 more
    # at ratios of 75 or more; nine clean labels (clean sets, wrongly named labels) at most 0.11 more, then at a ratio
    # of 2.0, and at ratios over 2 at most 0.044 more (WaNet 1 %'s bags, full data: the thinnest margin)
    transfer_scales: tuple[float, ...] = (1.0, 1.5, 2.0, 3.0, 4.0)
    transfer_lift: float = 0.1
    transfer_ratio: float = 10.0
    transfer_keep: float = 0.6
    # when the target label's other samples the reference contradicts are removed as well: "confirmed" = when it named
    # the target or confirmed the named one (step 2c); "retargeted" = only when it named it (the rule before). The
    # detectors miss 2.5-6 % of the poison on WaNet / adaptive_patch 10 % (full data) and Blend 10 % (10 000 images),
    # which the reference mostly contradicts: ASR 5.4 / 6.0 / 13.1 % -> 3.0 / 2.2 / 1.4 %; where the flags held all
    # the poison (BadNets) the extra ~3.5 % of the target's clean samples cost 0.1-0.7 CA points
    # (docs/results/core.md, "Poison the flags miss")
    add_contradicted: Literal["retargeted", "confirmed"] = "confirmed"
    # what is unlearned, and whose fit decides whether to: "contradicted" = the target's removed suspects the clean-set
    # model contradicts (dirty-label poison; all of them when there is no reference), "suspects" = all of them
    unlearn_on: Literal["contradicted", "suspects"] = "contradicted"
    unlearn_when: float = 0.2  # unlearn only when the retrained model still fits more than this share of suspects
    unlearn_until: float = 0.05  # ... and stop once it fits no more than this share
    unlearn_epochs: int = 20  # at most this many gradient-ascent epochs on the suspects (0 = off)
    unlearn_loss: Literal["ascent", "unlikelihood"] = "unlikelihood"  # abl's losses; −CE has no gradient on fitted poison
    unlearn_lr: float = 3e-5  # configs/abl-fashion-mnist.yaml's unlearning lr for "unlikelihood"
    guard_tolerance: float = 0.01  # stop (and undo the epoch) when reserved-clean accuracy has fallen by more, in all
    batch_size: int = 128

    def check(self) -> None:
        if not self.detectors:
            raise UserError("auto: 'detectors' must name at least one detector")
        for key in self.detectors:
            if defenses.get(key).detect is None:
                raise UserError(f"auto: {key!r} is not a detector")
        if not isinstance(self.detector_opts, dict) or not all(isinstance(v, dict) for v in self.detector_opts.values()):
            raise UserError("auto: 'detector_opts' must map detector keys to settings")
        for key in self.detectors:
            detector_settings(key, self)  # fail before any work
        if self.unlearn_epochs < 0 or not self.unlearn_lr > 0 or not 0 <= self.guard_tolerance < 1:
            raise UserError("auto: 'unlearn_epochs' ≥ 0, 'unlearn_lr' > 0, 'guard_tolerance' in [0, 1)")
        if not 0 <= self.rank_flags <= 10:
            raise UserError("auto: 'rank_flags' must lie in [0, 10]")
        if not 0 <= self.widen_below <= 1:
            raise UserError("auto: 'widen_below' must lie in [0, 1]")
        if not 0 < self.dominant_share <= 1 or not 0 < self.top_share <= 1:
            raise UserError("auto: 'dominant_share' and 'top_share' must lie in (0, 1]")
        if self.remove not in ("target", "all"):
            raise UserError(f"auto: 'remove' is 'target' or 'all', got {self.remove!r}")
        if not 0 < self.target_purity <= 1 or not 0 <= self.target_widen <= 10:
            raise UserError("auto: 'target_purity' must lie in (0, 1] and 'target_widen' in [0, 10]")
        if self.target_from not in ("flags", "top"):
            raise UserError(f"auto: 'target_from' is 'flags' or 'top', got {self.target_from!r}")
        if self.reference_epochs < 0 or self.spread_min_flags < 1 or self.spread_min_labels < 1:
            raise UserError("auto: 'reference_epochs' must be ≥ 0, 'spread_min_flags' and 'spread_min_labels' ≥ 1")
        if not self.retarget_ratio >= 1:
            raise UserError("auto: 'retarget_ratio' must be ≥ 1")
        if not 0 < self.contradict_below < 1 or not 0 < self.spread_share <= 1:
            raise UserError("auto: 'contradict_below' must lie in (0, 1) and 'spread_share' in (0, 1]")
        if self.add_contradicted not in ("retargeted", "confirmed"):
            raise UserError(f"auto: 'add_contradicted' is 'retargeted' or 'confirmed', got {self.add_contradicted!r}")
        if not 0 <= self.far_below < 1 or not 0 <= self.far_index < float("inf") or self.far_min < 1:
            raise UserError("auto: 'far_below' must lie in [0, 1), 'far_index' be a finite number ≥ 0, 'far_min' ≥ 1")
        if not 0 <= self.evidence_share <= 1 or not 0 <= self.far_share <= 1:
            raise UserError("auto: 'evidence_share' and 'far_share' must lie in [0, 1]")
        if not 0 <= self.confirm_index < float("inf") or not 0 <= self.confirm_share <= 1:
            raise UserError("auto: 'confirm_index' must be a finite number ≥ 0 and 'confirm_share' lie in [0, 1]")
        if not all(0 < float(k) <= 100 for k in self.transfer_scales):
            raise UserError("auto: every one of 'transfer_scales' must lie in (0, 100]")
        if not 0 < self.transfer_lift <= 1 or not self.transfer_ratio >= 1 or not 0 <= self.transfer_keep <= 1:
            raise UserError("auto: 'transfer_lift' must lie in (0, 1], 'transfer_ratio' be ≥ 1 and 'transfer_keep' "
                            "lie in [0, 1]")
        for key in self.confirm_by:
            if defenses.get(key).detect is None:
                raise UserError(f"auto: confirm_by {key!r} is not a detector")
        if not 0 <= self.unlearn_until <= self.unlearn_when <= 1:
            raise UserError("auto: need 0 ≤ 'unlearn_until' ≤ 'unlearn_when' ≤ 1")


def rank01(scores: torch.Tensor) -> torch.Tensor:
    """Scores as ranks scaled to [0, 1]; tied scores share their mean rank (SCAn gives most samples 0), and NaN
    counts as least suspect."""
    s = torch.nan_to_num(scores.detach().cpu().double(), nan=float("-inf"))
    _, inverse, counts = torch.unique(s, sorted=True, return_inverse=True, return_counts=True)
    first = torch.cumsum(counts, 0) - counts  # the rank of each distinct value's first sample
    mean_rank = first.double() + (counts.double() - 1) / 2
    return (mean_rank[inverse] / max(1, len(s) - 1)).float()


def detect_union(train: ImageData, ctx: DefenseContext, s: AutoSettings) -> Detection:
    flagged = torch.zeros(len(train), dtype=torch.bool)
    ranks, info = [], {}
    for key in s.detectors:
        t0 = time.perf_counter()
        det = run_detector(key, train, ctx, detector_settings(key, s))
        f = det.flagged.cpu().bool()
        flagged |= f
        ranks.append(rank01(det.scores))
        info[key] = {"n_flagged": int(f.sum()), "seconds": round(time.perf_counter() - t0, 1), **det.info}
        ctx.log(f"{key}: {int(f.sum())} flagged")
    score = torch.stack(ranks).mean(0)
    n = int(flagged.sum())
    share = float(torch.bincount(train.y.cpu()[flagged], minlength=train.num_classes).max()) / n if n else 0.0
    out = {"detectors": info, "label_share": round(share, 4)}
    if s.rank_flags > 0 and share < s.widen_below:
        extra = rank_top(score, round(s.rank_flags * n)) & ~flagged
        out["rank_flags"] = int(extra.sum())
        ctx.log(f"no label holds {s.widen_below:.0%} of the {n} flags (at most {share:.0%}): {int(extra.sum())} more "
                "flagged by rank")
        flagged = flagged | extra
    out["n_flagged"] = int(flagged.sum())
    return Detection(score, flagged, out)


def rank_top(score: torch.Tensor, k: int) -> torch.Tensor:
    """A mask of the k highest scores (ties broken by index, so the same scores always give the same mask)."""
    mask = torch.zeros(len(score), dtype=torch.bool)
    if k > 0:
        order = torch.sort(score, descending=True, stable=True).indices
        mask[order[: min(k, len(score))]] = True
    return mask


def target_label(train: ImageData, det: Detection, share: float) -> tuple[int, float]:
    """The label most common among the top-ranked `share` of the flagged samples, and the share of them it holds
    (-1, 0.0 when nothing is flagged): the most suspect samples of an all-to-one attack carry its target, whatever
    clean classes the flags also hold."""
    flagged = det.flagged.cpu().bool()
    n = int(flagged.sum())
    if n == 0:
        return -1, 0.0
    only_flagged = torch.where(flagged, det.scores.cpu().float(), float("-inf"))
    top = rank_top(only_flagged, max(1, round(share * n)))
    counts = torch.bincount(train.y.cpu()[top], minlength=train.num_classes)
    return int(counts.argmax()), float(counts.max()) / int(top.sum())


def reference_model(ctx: DefenseContext, epochs: int):
    """A model trained normally on the reserved clean set alone, which never saw the poison (trained once)."""
    model, _ = normal_fit(ctx.need_clean("auto's clean-set checks"), ctx, epochs, desc="reference", evaluate=False)
    return model


def reference_probs(train: ImageData, ctx: DefenseContext, epochs: int) -> torch.Tensor:
    """For every training sample, the class probabilities (N × classes) of `reference_model`."""
    return ctx.trainer.logits(reference_model(ctx, epochs), train).float().softmax(1).cpu()


def given_prob(probs: torch.Tensor, train: ImageData) -> torch.Tensor:
    """The probability each sample's given label gets."""
    return probs[torch.arange(len(train)), train.y.cpu()]


def far_contradicted(probs: torch.Tensor, train: ImageData, s: "AutoSettings") -> torch.Tensor:
    """The samples the clean-set model contradicts (given label < `contradict_below`) in favour of a class unrelated
    to their label: two classes are related when the model, on the training samples it agrees with, gives the other
    one at least `far_below` on average (both ways, averaged)."""
    y = train.y.cpu()
    pred = probs.argmax(1)
    agree = pred == y
    k = probs.shape[1]
    seen = torch.bincount(y[agree], minlength=k).clamp(min=1).unsqueeze(1)  # a label it never agrees with: zeros
    related = torch.zeros(k, k, dtype=probs.dtype).index_add_(0, y[agree], probs[agree]) / seen
    related = (related + related.T) / 2
    return (given_prob(probs, train) < s.contradict_below) & (related[y, pred] < s.far_below)


def far_target(probs: torch.Tensor, train: ImageData, s: "AutoSettings",
               far: torch.Tensor | None = None) -> tuple[int, list[int], list[float]]:
    """Step 2a: the label whose samples the clean-set model contradicts in favour of *unrelated* classes far more
    often than any other label's, with every label's count of such "far" contradictions and its anomaly index
    ((count - median) / (1.4826 × MAD), the MAD at least 1); -1 when no label reaches `far_index` and `far_min`.

    Related classes (`far_contradicted`): T-shirt and shirt are, T-shirt and sneaker are not. A clean
    sample the reference contradicts is a hard one, and it goes to a related class; an all-to-one attack's
    dirty-label poison is images of every other class labelled with the target, and the reference calls them by
    their own class, related or not. The bars and the numbers behind them: the module docstring, step 2a.
    `far`: `far_contradicted`'s mask when the caller has it already."""
    far = far_contradicted(probs, train, s) if far is None else far
    counts = torch.bincount(train.y.cpu()[far], minlength=probs.shape[1]).double()
    med = counts.median()
    mad = max(1.4826 * float((counts - med).abs().median()), 1.0)
    index = (counts - med) / mad
    best = int(counts.argmax())
    label = best if float(index[best]) >= s.far_index and counts[best] >= s.far_min else -1
    return label, counts.long().tolist(), [round(float(v), 2) for v in index]


def contradicted_shares(train: ImageData, flagged: torch.Tensor, contradicted: torch.Tensor,
                        s: AutoSettings) -> list[float | None]:
    """Every label's share of its flags that the reference contradicts (None: fewer than `spread_min_flags`)."""
    y = train.y.cpu()
    shares: list[float | None] = []
    for c in range(train.num_classes):
        f = flagged & (y == c)
        shares.append(round(float(contradicted[f].float().mean()), 4) if int(f.sum()) >= s.spread_min_flags else None)
    return shares


def heavy_labels(shares: list[float | None], s: AutoSettings) -> list[int]:
    """The labels whose flags the reference contradicts in at least `spread_share`: they hold dirty-label poison."""
    return [c for c, v in enumerate(shares) if v is not None and v >= s.spread_share]


def reference_target(label: int, counts: list[int], s: AutoSettings) -> int:
    """The target the reference points at, or `label` (the one the top tenth named): the label with the most
    flags the reference contradicts, when it holds at least `retarget_ratio` × as many as the named label (and at
    least `spread_min_flags`). An all-to-one attack's poison sits in its target, and the reference contradicts
    dirty-label poison; the clean samples it contradicts spread over the labels. On clean-label SIG it
    contradicted only 70 of the 600 poison images: label 0 led there because the flags crowd into the target
    (1 998 of them), and the reference contradicts the hard T-shirts among them too.
    Measured (docs/results/core.md, "auto's target from the clean-set model"): the top tenth named a clean label
    on WaNet, adaptive_patch (10 000 images) and SIG (60 000) at 1 %, where label 0, the target, held 26 / 66 /
    316 contradicted flags against the named label's 6 / 7 / 49; where it named the target, the target held the
    most."""
    best = max(range(len(counts)), key=lambda c: (counts[c], -c))
    named = counts[label] if label >= 0 else 0
    if best != label and counts[best] >= max(s.spread_min_flags, s.retarget_ratio * named):
        return best
    return label


def label_suspects(union: torch.Tensor, scores: torch.Tensor, y: torch.Tensor, label: int,
                   s: AutoSettings) -> torch.Tensor:
    """The label's flags united with its `target_widen` × as many top-ranked samples: what `auto` removes for an
    all-to-one target, and what steps 2c and 2d judge."""
    own = union & (y == label)
    in_label = torch.where(y == label, scores.cpu().float(), float("-inf"))
    return own | (rank_top(in_label, round(s.target_widen * int(own.sum()))) & (y == label))


def detect_auto(train: ImageData, ctx: DefenseContext, s: AutoSettings) -> Detection:
    """The detectors' union (`detect_union`), then, with `remove: target`, only the target label's flags united
    with that label's top-ranked samples, and what the clean-set model's checks add (step 2b): what auto removes
    before retraining, and what it reports as flagged."""
    det = detect_union(train, ctx, s)
    label, purity = target_label(train, det, s.top_share)
    info = {**det.info, "target_label": label, "target_purity": round(purity, 4)}
    union, y = det.flagged.cpu().bool(), train.y.cpu()
    contradicted, far_mask, spread = None, None, []
    if s.reference_epochs > 0 and ctx.clean is not None:
        probs = reference_probs(train, ctx, s.reference_epochs)
        contradicted = given_prob(probs, train) < s.contradict_below
        far_mask = far_contradicted(probs, train, s) if s.far_below > 0 else None
        shares = contradicted_shares(train, union, contradicted, s)
        counts = torch.bincount(y[union & contradicted], minlength=train.num_classes).tolist()
        spread = [c for c in heavy_labels(shares, s) if c != label]
        if len(spread) < s.spread_min_labels:  # one stray label is not a spread attack (SIG 1 %: 21 of 34 flags)
            spread = []
            named = reference_target(label, counts, s)
            if named != label:
                ctx.log(f"the clean-set model contradicts {counts[named]} flags of label {named} and {counts[label]} "
                        f"of label {label}: label {named} is the target")
                info.update(target_label=named, retargeted_from=label)
                label = named
            if s.far_below > 0:
                far, far_counts, far_index = far_target(probs, train, s, far_mask)
                info.update(far_contradicted=far_counts, far_index=far_index, far_target=far)
                if far >= 0 and far != label:
                    ctx.log(f"the clean-set model calls {far_counts[far]} samples of label {far} by an unrelated "
                            f"class (anomaly index {far_index[far]:.1f}): label {far} is the target")
                    info.update(target_label=far, retargeted_from=info.get("retargeted_from", label))
                    label = far
        info.update(contradicted_flag_share=shares, contradicted_flags=counts, spread_labels=spread)
    flagged = union
    # with the clean-set model's confirmation (step 2c) a top tenth under `target_purity` still names the candidate:
    # on Blend 1 % against label 6 (purity 0.42) removing every flag took 16 % of the clean data (CA -4.4 points)
    confirm = contradicted is not None and s.evidence_share > 0
    one_target = s.remove == "target" and label >= 0 and (
        purity >= s.target_purity or "retargeted_from" in info or confirm)
    if one_target:
        own = union & (y == label)
        flagged = label_suspects(union, det.scores, y, label, s)
        info["kept_other_labels"] = int((union & ~own).sum())
        info["target_widened"] = int((flagged & ~own).sum())
        why = "named by the clean-set model" if "retargeted_from" in info else f"{purity:.0%} of the most suspect flags"
        ctx.log(f"target label {label} ({why}): {info['kept_other_labels']} flags of other labels kept, "
                f"{info['target_widened']} more of label {label} flagged by rank")
    if one_target and confirm and not spread:  # judged on the label's flags, before the reference adds its own
        flagged = confirm_target(flagged, contradicted, far_mask, label, train, info, ctx, s)
    by_reference = "reference" in info.get("target_confirmed_by", []) and s.add_contradicted == "confirmed"
    if ("retargeted_from" in info or by_reference) and not info.get("no_attack_found"):
        # the reference named (or confirmed) the target: what it contradicts there is the poison
        extra = contradicted & (y == label) & ~flagged
        info["target_contradicted"] = int(extra.sum())
        ctx.log(f"the {int(extra.sum())} other samples of label {label} the clean-set model contradicts removed too")
        flagged = flagged | extra
    if spread:  # not all-to-one: the poison may sit in any label, flagged or not
        extra = contradicted & ~flagged
        info["spread_removed"] = int(extra.sum())
        ctx.log(f"labels {spread} carry poison too (the clean-set model contradicts ≥ {s.spread_share:.0%} of "
                f"their flags): the {int(extra.sum())} other samples it contradicts removed as well")
        flagged = flagged | extra
    info["n_flagged"] = int(flagged.sum())
    return Detection(det.scores, flagged, info, {"contradicted": contradicted} if contradicted is not None else {})


def confirm_target(flagged: torch.Tensor, contradicted: torch.Tensor, far: torch.Tensor | None, label: int,
                   train: ImageData, info: dict[str, Any], ctx: DefenseContext, s: AutoSettings) -> torch.Tensor:
    """Step 2c: the flags to remove if the target is confirmed (by the reference's contradiction or a class-level
    detector), else none. Hard clean samples crowd into one label's flags on clean data too; what an attack adds is
    poison the clean-set model contradicts, mostly in favour of unrelated classes (dirty-label), or a class a
    class-level test singles out (clean-label). `far`: the samples it contradicts in favour of an unrelated class
    (`far_contradicted`; None: not checked)."""
    mine = flagged & (train.y.cpu() == label)
    share = float(contradicted[mine].float().mean()) if int(mine.sum()) else 0.0
    against = mine & contradicted
    far_share = float(far[against].float().mean()) if far is not None and int(against.sum()) else None
    evidence = share >= s.evidence_share and (far_share is None or far_share >= s.far_share)
    by = (["reference"] if evidence or info.get("far_target") == label else []) + [
        k for k in s.confirm_by if class_test_confirms(info.get("detectors", {}).get(k) or {}, label, share, s)]
    if not by and s.transfer_scales:  # only then: every result confirmed otherwise stays as it was
        info["transfer"] = trigger_transfer(train, ctx, mine, label, s)
        if info["transfer"].get("confirmed"):
            by = ["transfer"]
            ctx.log(f"target label {label} confirmed: its suspects' mean residual turns clean images into it on the "
                    f"model trained on these data ({info['transfer']['best']})")
    info.update(target_contradicted_share=round(share, 4), target_confirmed_by=by)
    if far_share is not None:
        info["target_far_share"] = round(far_share, 4)
    if by:
        return flagged
    info["no_attack_found"] = True
    why = (f"{far_share:.0%} of them in favour of an unrelated class (< {s.far_share:.0%})"
           if share >= s.evidence_share else f"< {s.evidence_share:.0%}")
    ctx.log(f"target label {label} not confirmed: the clean-set model contradicts {share:.0%} of its "
            f"{int(mine.sum())} suspects ({why}), {', '.join(s.confirm_by) or 'no detector'} does not flag it"
            f"{' and no trigger transfers' if s.transfer_scales else ''}; no attack found, nothing removed")
    return torch.zeros_like(flagged)


def trigger_transfer(train: ImageData, ctx: DefenseContext, mine: torch.Tensor, label: int,
                     s: AutoSettings) -> dict[str, Any]:
    """Step 2d: whether what the label's suspects `mine` share acts as a trigger. Their mean image minus the mean of
    the label's other samples holds the trigger when they hold the poison (any additive one, and a warp's blur),
    plus what makes them hard samples. Added (`transfer_scales` ×) onto the reserved clean set's images of the other
    labels, it turns them into `label` on the model trained normally on all the data (a backdoor) far more often than
    on the one trained without the suspects, which knows the hard samples' look as well (the one `retrain_kept`
    gives when the target is confirmed: trained once). Only scales at which the second model still names at least
    `transfer_keep` of the images it named right unstamped count: further out both read noise. Clean-label poison
    (SIG) passes: its residual is the signal, whatever label the reference gives the images. Returns, per scale,
    [scale, flip rate with the suspects, without them, accuracy kept without them], and whether a scale confirms."""
    y = train.y.cpu()
    rest = (y == label) & ~mine
    clean = ctx.need_clean("auto's trigger-transfer check")
    probe_rows = (clean.y.cpu() != label).nonzero().squeeze(1)
    if int(mine.sum()) == 0 or int(rest.sum()) == 0 or len(probe_rows) == 0:
        return {"confirmed": False, "skipped": "no samples to compare"}
    x = train.x
    residual = (x[mine.to(x.device)].float().mean(0) - x[rest.to(x.device)].float().mean(0)).to(clean.x.device)
    probe = clean.subset(probe_rows.to(clean.y.device))
    truth = probe.y.cpu()
    with_them = normal_model(train, ctx)
    without, _ = normal_fit(train.subset((~mine).to(train.y.device)), ctx, desc="retrain")
    base = float((ctx.trainer.predict(without, probe).cpu() == truth).float().mean())
    rates, best = [], None
    for k in s.transfer_scales:
        stamped = replace(probe, x=(probe.x.float() + float(k) * residual).clamp(0, 255).round().to(torch.uint8))
        fw = float((ctx.trainer.predict(with_them, stamped).cpu() == label).float().mean())
        pred = ctx.trainer.predict(without, stamped).cpu()
        fo, kept = float((pred == label).float().mean()), float((pred == truth).float().mean()) / max(base, 1e-6)
        rates.append([float(k), round(fw, 4), round(fo, 4), round(kept, 4)])
        if kept >= s.transfer_keep and fw - fo >= s.transfer_lift and fw >= s.transfer_ratio * fo and (
                best is None or fw - fo > best[1] - best[2]):
            best = rates[-1]
    out: dict[str, Any] = {"confirmed": best is not None, "flip_rates": rates,
                           "residual_l2": round(float(residual.norm()) / 255, 3)}
    if best is not None:
        out["best"] = f"× {best[0]:g}: {best[1]:.1%} of clean images flipped vs {best[2]:.1%} without the suspects"
    return out


def class_test_confirms(det_info: dict[str, Any], label: int, share: float, s: AutoSettings) -> bool:
    """Whether a class-level detector's result confirms `label`: it flagged the class, strongly (an anomaly index of at
    least `confirm_index`, where it reports one) or with the clean-set model contradicting `confirm_share` of the
    label's suspects (`share`)."""
    if label not in (det_info.get("flagged_classes") or []):
        return False
    index = det_info.get("anomaly_index")
    return index is None or float(index[label]) >= s.confirm_index or share >= s.confirm_share


def dominant_suspects(train: ImageData, flagged: torch.Tensor, share: float) -> torch.Tensor:
    """The flagged samples whose label holds at least `share` of the flagged set: an all-to-one backdoor's
    poison all carries its target label, while the clean samples a detector flags spread over the labels."""
    y = train.y.cpu()
    counts = torch.bincount(y[flagged], minlength=train.num_classes)
    dominant = counts >= max(1.0, share * int(flagged.sum()))
    return flagged & dominant[y]


def suspect_fit(ctx: DefenseContext, model, suspects: ImageData) -> float:
    """Share of the suspects whose given label the model predicts (a surviving backdoor fits its poison)."""
    return float((ctx.trainer.predict(model, suspects).cpu() == suspects.y.cpu()).float().mean())


def unlearn_residual(model, suspects: ImageData, ctx: DefenseContext, s: AutoSettings) -> dict[str, Any]:
    """ABL's unlearning (`abl.unlearn`, one epoch at a time) while the model still fits the suspects."""
    fit = suspect_fit(ctx, model, suspects)
    info: dict[str, Any] = {"suspect_fit_after_retrain": fit, "unlearn_epochs_run": 0}
    if fit <= s.unlearn_when:
        ctx.log(f"retrained model fits {fit:.1%} of the suspects: no backdoor left to unlearn")
        return info
    one = ABLSettings(unlearn_epochs=1, unlearn_lr=s.unlearn_lr, unlearn_loss=s.unlearn_loss, batch_size=s.batch_size,
                      guard_tolerance=s.guard_tolerance)
    guard = ctx.clean.to(suspects.device) if ctx.clean is not None else None
    # the tolerance bounds the accuracy lost over all epochs, not per epoch (per epoch, 20 epochs of 0.2 points
    # each took WaNet 1 % from CA 91.3 to 88.1 with the guard never firing)
    before = suspect_fit(ctx, model, guard) if guard is not None else None
    for e in range(s.unlearn_epochs):
        _, u = unlearn(model, suspects, ctx, one, guard, before)
        if "guard_stopped_at" in u:
            info["guard_stopped_at"] = e + 1
            ctx.log(f"unlearning epoch {e + 1} took clean accuracy more than {s.guard_tolerance:.0%} below its "
                    "start: undone, stopped")
            break
        info["unlearn_epochs_run"] = e + 1
        fit = suspect_fit(ctx, model, suspects)
        if fit <= s.unlearn_until:
            break
    info["suspect_fit_after_unlearning"] = suspect_fit(ctx, model, suspects)
    ctx.log(f"unlearning: {info['unlearn_epochs_run']} epochs, suspect fit {info['suspect_fit_after_retrain']:.1%}"
            f" -> {info['suspect_fit_after_unlearning']:.1%}")
    return info


@register_defense("auto", settings=AutoSettings, detect=detect_auto, needs_clean=True)
def auto(train: ImageData, ctx: DefenseContext, s: AutoSettings) -> DefenseResult:
    """auto: CT and SCAn find the poison, retrain without the target label's suspects, unlearn what still fits them
    (chosen by measurement)."""
    s = s or AutoSettings()
    start = len(ctx.trainer.history)
    det = detect_auto(train, ctx, s)
    res = retrain_kept(train, ctx, det)
    info = dict(det.info)
    flagged = det.flagged.cpu().bool()
    if s.target_from == "top":
        suspects = flagged & (train.y.cpu() == info["target_label"])
    else:
        suspects = dominant_suspects(train, flagged, s.dominant_share)
    info["n_dominant_suspects"] = int(suspects.sum())
    if info.get("spread_labels"):
        # no single target: the named label's removed samples are mostly clean ones the reference contradicts, which
        # the retrained model may well fit (all-to-all BadNets 1 %: 75 %; one unlearning epoch cost 0.3 CA points and
        # no ASR)
        info["unlearn_skipped"] = "spread"
    elif info.get("no_attack_found"):
        info["unlearn_skipped"] = "no attack found"
    elif "reference" not in info.get("target_confirmed_by", ["reference"]):
        # confirmed by a class-level detector alone (clean-label poison keeps its true label): unlearning the
        # suspects' own labels never helped there (SIG: the guard undid it at 1 % and 10 %, full data)
        info["unlearn_skipped"] = "clean-label"
    elif s.unlearn_epochs > 0:
        if s.unlearn_on == "contradicted" and "contradicted" in det.masks:
            # the removed suspects the clean-set model contradicts: the dirty-label poison among them. The others are
            # mostly clean samples of the target the retrained model rightly fits (BadNets 1 %, full data: 343 of 943
            # suspects, fit 25 %, and 4 unlearning epochs cost 1.1 CA points for a backdoor that was gone)
            suspects = suspects & det.masks["contradicted"]
            info["n_unlearn_suspects"] = int(suspects.sum())
        if int(suspects.sum()) > 0:
            info.update(unlearn_residual(res.model, train.subset(suspects.to(train.y.device)), ctx, s))
    return DefenseResult(res.model, det.scores, det.flagged, ctx.trainer.history[start:], info)
