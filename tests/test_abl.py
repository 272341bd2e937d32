"""ABL on a real Fashion-MNIST subset (BadNets 10 %): isolation, unlearning, provenance."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cleantrain.attacks import make_attack
from cleantrain.config import build
from cleantrain.data.core import POISON, PoisonedData
from cleantrain.defenses.abl import (ABLSettings, abl_detect, gap_count, refit, retain_pool, unlearn,
                                    unlearn_retaining)
from cleantrain.defenses.base import DefenseContext, run_defense, run_detector
from cleantrain.errors import UserError
from cleantrain.evaluate.metrics import detection, model_metrics
from cleantrain.train import Trainer, TrainSettings

# A short budget that still isolates on 4000 samples (the recipe's lr; the paper's 0.1 is tuned for CIFAR).
FAST = dict(rule="class", isolation_epochs=8, isolation_lr=0.05, finetune_epochs=1, finetune_lr=0.05,
            unlearn_loss="unlikelihood", unlearn_epochs=10, unlearn_lr=3e-4, batch_size=128)


def make_ctx(data, seed=0, evaluator=None, epochs=2):
    trainer = Trainer(TrainSettings(epochs=epochs, eval_every=0), "cpu", seed, progress=False, evaluator=evaluator)
    mean, std = data.channel_stats()
    return DefenseContext(trainer, "small-cnn", data.shape, data.num_classes, mean, std, seed)


@pytest.fixture(scope="module")
def badnets(small):
    train, test = small
    att = make_attack("badnets", {}, train.shape, train.num_classes)
    return att.poison(train, 0.1, 0, seed=0), test, att


@pytest.fixture(scope="module")
def defended(badnets):
    pd, test, att = badnets
    triggered = att.test_set(test, 0)
    ctx = make_ctx(pd.data)
    ctx.trainer.evaluator = lambda m: model_metrics(ctx.trainer, m, test, att, 0, triggered)
    res = run_defense("abl", pd.data, ctx, ABLSettings(**FAST))
    return pd, res, ctx


def test_isolation_precision_and_unlearning_lowers_asr(defended):
    pd, res, ctx = defended
    det = detection(res.flagged, res.scores, pd)
    assert det["n_flagged"] == 40  # 1 % of 4000
    assert det["precision"] >= 0.9, det
    stages = [h["desc"] for h in res.history]
    assert stages[0] == "isolation" and "finetune" in stages and stages[-1].startswith("unlearn")
    before = [h for h in res.history if h["desc"] == "finetune"][-1]
    after = res.history[-1]
    assert before["asr"] > 0.5  # fine-tuning on D_rest (still 9 % poison) keeps the backdoor
    assert after["asr"] < before["asr"] - 0.2, (before, after)
    assert res.info["n_isolated"] == 40 and res.info["unlearn_epochs_run"] == FAST["unlearn_epochs"]


@pytest.mark.parametrize("bn", ["eval", "frozen"])
def test_unlearning_leaves_bn_running_stats_unchanged(badnets, bn):
    pd, _, _ = badnets
    data = pd.data.head(600, seed=2)
    ctx = make_ctx(data)
    model = ctx.new_model()
    ctx.trainer.fit(model, data, epochs=1, evaluate=False)  # running stats away from their init
    bn_before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    w_before = [p.detach().clone() for p in model.parameters()]
    s = ABLSettings(unlearn_epochs=2, unlearn_lr=1e-2, unlearn_bn=bn, unlearn_loss="unlikelihood")
    unlearn(model, data.head(200), ctx, s)
    bn_after = {k: v for k, v in model.state_dict().items() if "running" in k}
    assert bn_before and all(torch.equal(bn_before[k], bn_after[k]) for k in bn_before)
    assert any(not torch.equal(a, b) for a, b in zip(w_before, model.parameters()))  # it did train
    assert all(m.training for m in model.modules() if isinstance(m, nn.BatchNorm2d))  # modes restored


def test_defense_cannot_read_provenance(badnets):
    pd, _, _ = badnets
    n = 500
    data = pd.data.head(n, seed=3)
    s = ABLSettings(isolation_epochs=1, isolation_lr=0.05, finetune_epochs=1, unlearn_epochs=1, rule="class")
    with pytest.raises(TypeError):  # a PoisonedData, or any subclass of ImageData, is refused
        run_defense("abl", pd.subset(torch.arange(n)), make_ctx(data), s)
    # two provenance records for the very same images: the true one and a shuffled one
    real = pd.subset(torch.arange(n))
    fake = PoisonedData(real.data, real.original, real.kind[torch.randperm(n)], real.attack)
    assert not torch.equal(fake.kind, real.kind)
    outs = []
    for p in (real, fake):
        ctx = make_ctx(p.data)
        res = run_defense("abl", p.data, ctx, s)
        outs.append((res.scores, res.flagged, [t.detach().clone() for t in res.model.state_dict().values()]))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
    assert all(torch.equal(a, b) for a, b in zip(outs[0][2], outs[1][2]))


def test_detector_scores_are_negative_loss_and_flag_the_lowest(badnets):
    pd, _, _ = badnets
    data = pd.data.head(500, seed=4)
    det = run_detector("abl", data, make_ctx(data), ABLSettings(isolation_epochs=1, isolation_lr=0.05,
                                                                isolation_ratio=0.02))
    assert int(det.flagged.sum()) == 10
    assert float(det.scores[det.flagged].min()) >= float(det.scores[~det.flagged].max())


def test_guard_undoes_the_epoch_that_costs_accuracy(badnets):
    pd, _, _ = badnets
    data = pd.data.head(600, seed=5)
    ctx = make_ctx(data)
    model = ctx.new_model()
    ctx.trainer.fit(model, data, epochs=2, evaluate=False)
    guard = data.head(200, seed=6)
    # a huge ascent lr wrecks the model in one epoch: the guard must undo it and stop
    s = ABLSettings(unlearn_epochs=5, unlearn_lr=5.0, guard_tolerance=0.02)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    hist, info = unlearn(model, data, ctx, s, guard)
    assert info["guard_stopped_at"] == 1 and len(hist) == 1
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_retention_keeps_what_plain_unlearning_destroys_and_refit_drops_what_it_lost(badnets):
    """Unlikelihood unlearning of the poison at a high lr: alone it drags the other samples down with it;
    with the retention term (CE on D_rest minus the target label's suspicious members) the kept samples stay
    fitted. Refit then drops only samples that were fitted before unlearning."""
    pd, _, _ = badnets
    sub = pd.subset(torch.arange(600))
    data, poison = sub.data, sub.kind == POISON
    ctx = make_ctx(data)
    model = ctx.new_model()
    ctx.trainer.fit(model, data, epochs=6, evaluate=False)
    y = data.y.cpu()
    fitted = ctx.trainer.predict(model, data).cpu() == y
    state = {k: v.clone() for k, v in model.state_dict().items()}
    isolated, scores, held = poison.clone(), poison.float(), torch.zeros(len(data), dtype=torch.bool)  # oracle
    s = ABLSettings(unlearn_loss="unlikelihood", unlearn_lr=0.01, unlearn_epochs=10, retain_weight=1.0,
                    retain_dominant_share=0.5, refit_epochs=1, refit_lr=0.01)
    keep = retain_pool(data, isolated, held, scores, s)
    assert not (keep & isolated).any() and bool(keep[y != 0].all())  # no poison here; other labels all kept
    target_rest = int(((y == 0) & ~isolated).sum())
    assert int((keep & (y == 0)).sum()) == round(0.5 * target_rest)
    assert int(retain_pool(data, isolated, held, scores, ABLSettings()).__and__(y == 0).sum()) == 0  # share 0

    def acc(mask):
        return float((ctx.trainer.predict(model, data).cpu()[mask] == y[mask]).float().mean())

    before_forget = acc(isolated)
    unlearn(model, data.subset(isolated), ctx, s)
    plain_keep, plain_forget = acc(keep), acc(isolated)
    model.load_state_dict(state)
    hist, info = unlearn_retaining(model, data, isolated, keep, ctx, s)
    kept_keep, kept_forget = acc(keep), acc(isolated)
    assert info["unlearn_steps"] == 10 and hist[-1]["steps"] == 10 and info["n_retain_dominant"] > 0
    assert plain_forget < before_forget  # plain unlearning does unlearn (this small model has no backdoor yet,
    # so whether the retaining variant also removes one is measured in docs/results/abl.md, not here)
    assert kept_keep > plain_keep + 0.1, (plain_keep, kept_keep, plain_forget)
    lost, rinfo = refit(model, data, isolated, held, fitted, ctx, s)
    assert not (lost & isolated).any() and not (lost & ~fitted).any() and rinfo["n_refit_dropped"] == int(lost.sum())


def test_gap_count_finds_a_low_mode_and_not_one_that_is_absent():
    g = torch.Generator().manual_seed(0)
    clean = torch.exp(torch.randn(2000, generator=g) * 0.3 - 0.7)  # around γ
    poison = torch.exp(torch.randn(100, generator=g) * 0.5 - 7)  # ~1e-3
    assert abs(gap_count(torch.cat([clean, poison]), 2, 400) - 100) <= 3
    assert gap_count(clean, 2, 400) == 2  # one mode: fall back to the floor


def test_settings_are_validated():
    with pytest.raises(UserError, match="gamma"):
        build(ABLSettings, {"gamma": -1})
    with pytest.raises(UserError, match="'loss'"):
        build(ABLSettings, {"loss": "hinge"})
    with pytest.raises(UserError, match="unknown setting"):
        build(ABLSettings, {"gama": 0.5})
    assert build(ABLSettings, {"guard_tolerance": None}).guard_tolerance is None
    with pytest.raises(UserError, match="retain_weight"):
        build(ABLSettings, {"retain_weight": -1})
    with pytest.raises(UserError, match="refit_epochs"):
        build(ABLSettings, {"refit_epochs": -1})
