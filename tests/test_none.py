"""NONE (defenses/none.py) and the trigger-inversion scanner (evaluate/scan.py)."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from cleantrain.attacks import make_attack
from cleantrain.defenses.base import DefenseContext, run_defense
from cleantrain.defenses.none import NONESettings, jenks_two, reset_channels, sample_scores, select_channels
from cleantrain.evaluate.metrics import model_metrics
from cleantrain.evaluate.scan import ScanSettings, bounded, scan
from cleantrain.models import make_model
from cleantrain.registry import models
from cleantrain.train import Trainer, TrainSettings


# ------------------------------------------------------------------ Jenks
def _sse(v: torch.Tensor) -> float:
    return float(((v - v.mean()) ** 2).sum()) if len(v) else 0.0


@pytest.mark.parametrize("seed", range(25))
def test_jenks_split_equals_brute_force_optimum(seed):
    g = torch.Generator().manual_seed(seed)
    n = 2 + seed % 9
    v = torch.randn(n, generator=g, dtype=torch.float64) * (1 + seed % 3)
    if seed % 4 == 0:
        v[: n // 3] += 6  # a clear high group
    flagged = jenks_two(v)
    got = _sse(v[flagged]) + _sse(v[~flagged])
    best = min(  # every split into two non-empty groups, contiguous or not
        _sse(v[torch.tensor(m)]) + _sse(v[~torch.tensor(m)])
        for m in itertools.product([False, True], repeat=n) if 0 < sum(m) < n
    )
    assert got == pytest.approx(best, abs=1e-9)
    assert 0 < int(flagged.sum()) < n
    assert v[flagged].min() > v[~flagged].max()  # the flagged group is the high one


def test_jenks_degenerate_inputs_flag_nothing():
    assert not jenks_two(torch.ones(7)).any()
    assert not jenks_two(torch.tensor([3.0])).any()
    assert jenks_two(torch.tensor([0.0, 0.1, 0.2, 10.0])).tolist() == [False, False, False, True]


def test_only_channels_with_a_positive_gap_are_selected():
    scores = [torch.tensor([0.0, 2.0, 0.5, 0.0]), torch.zeros(5), torch.tensor([1.0, 3.0])]
    sel = select_channels(scores, 0.5)
    assert [s.tolist() for s in sel] == [[1, 2], [], [1]]
    acts = [torch.rand(6, 4), torch.rand(6, 5), torch.rand(6, 2)]
    assert torch.equal(sample_scores(acts, sel), acts[0][:, 1] + acts[2][:, 1])
    assert not jenks_two(sample_scores(acts, [torch.tensor([], dtype=torch.long)] * 3)).any()


# ------------------------------------------------------------------ reset
def _expected_after_reset(model, before, units, selected):
    """Zero, by state-dict name, exactly what NONE's reset must zero."""
    names = {m: n for n, m in model.named_modules()}
    want = {k: v.clone() for k, v in before.items()}
    for u, idx in zip(units, selected):
        c = names[u.conv]
        want[f"{c}.weight"][idx] = 0
        if u.conv.bias is not None:
            want[f"{c}.bias"][idx] = 0
        if u.bn is not None:
            want[f"{names[u.bn]}.weight"][idx] = 0
            want[f"{names[u.bn]}.bias"][idx] = 0
        for m in u.consumers:
            w = want[f"{names[m]}.weight"]
            if w.dim() == 4:
                w[:, idx] = 0
            else:  # linear: one column per channel, or a block of columns per channel of a flattened map
                w.view(w.shape[0], u.conv.out_channels, -1)[:, idx] = 0
    return want


@pytest.mark.parametrize("key", models.keys())
def test_reset_zeroes_exactly_the_chosen_channels(key):
    torch.manual_seed(0)
    model = make_model(key, 3, 7, 32)
    for m in model.modules():  # make every BN parameter and statistic non-zero so a wrong reset shows
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, 0.1, 1.0)
            m.running_mean.uniform_(0.1, 1.0)
            m.running_var.uniform_(0.5, 2.0)
    units = model.conv_units()
    assert units, f"{key} declares no conv units"
    g = torch.Generator().manual_seed(1)
    selected = [torch.randperm(u.conv.out_channels, generator=g)[: 1 + i % 3] for i, u in enumerate(units)]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    reset_channels(units, selected)
    after = model.state_dict()
    want = _expected_after_reset(model, before, units, selected)
    changed = [k for k in after if not torch.equal(after[k], before[k])]
    wrong = [k for k in after if not torch.equal(after[k], want[k])]
    assert not wrong, f"{key}: unexpected values in {wrong[:5]}"
    assert changed, "the reset changed nothing"
    assert not any("running" in k for k in changed)  # BN statistics are kept
    # a reset channel of a unit with a BN is silent on any input
    acts = []
    u0 = next(u for u in units if u.bn is not None)
    h = u0.bn.register_forward_hook(lambda m, i, o: acts.append(o))
    model.eval()(torch.rand(2, 3, 32, 32))
    h.remove()
    assert acts[0][:, selected[units.index(u0)]].abs().max() == 0


# ------------------------------------------------------------------ end to end
EPOCHS = 4


@pytest.fixture(scope="module")
def backdoored(small):
    """BadNets 10 % on 4000 real Fashion-MNIST images; a context whose trainer evaluates CA/ASR."""
    train, test = small
    att = make_attack("badnets", {}, train.shape, train.num_classes)
    pd = att.poison(train, 0.1, 0, seed=0)
    triggered = att.test_set(test, 0)
    trainer = Trainer(TrainSettings(epochs=EPOCHS, threads=1), progress=False,
                      evaluator=lambda m: model_metrics(trainer, m, test, att, 0, triggered))
    mean, std = pd.data.channel_stats()
    ctx = DefenseContext(trainer, "small-cnn", pd.data.shape, 10, mean, std, seed=0)
    return pd, test, att, trainer, ctx


@pytest.fixture(scope="module")
def vanilla_model(backdoored):
    pd, _, _, _, ctx = backdoored
    return run_defense("vanilla", pd.data, ctx, None)


def test_none_flags_poison_and_lowers_asr(backdoored, vanilla_model):
    pd, _, _, trainer, ctx = backdoored
    vanilla_asr = vanilla_model.history[-1]["asr"]
    assert vanilla_asr > 0.9  # the backdoor was learned
    res = run_defense("none", pd.data, ctx, NONESettings(finetune_epochs=1))
    poison = pd.is_poison
    tpr = float(res.flagged[poison].float().mean())
    fpr = float(res.flagged[~poison].float().mean())
    assert tpr >= 0.8 and fpr <= 0.05
    final = res.history[-1]
    assert final["desc"].startswith("none: fine-tune")
    assert final["asr"] < 0.5 * vanilla_asr
    assert final["clean_acc"] > 0.5  # still a working classifier (chance is 0.1); the CA cost is benchmarked
    assert res.info["rounds"][0]["n_flagged"] == int(res.flagged.sum())
    assert res.info["rounds"][0]["flagged_index"] == torch.nonzero(res.flagged).flatten().tolist()


def test_scanner_recovers_planted_backdoor_target(backdoored, vanilla_model):
    pd, test, _, trainer, _ = backdoored
    res = scan(vanilla_model.model, test, ScanSettings(bounds=(0.02, 0.04), images=100, steps=40), progress=False)
    assert [b["label"] for b in res.best] == [0, 0]
    assert res.best[0]["reasr"] > 0.8
    assert (res.masks.mean(dim=(2, 3, 4)) <= torch.tensor([[0.02], [0.04]]) + 1e-6).all()  # bounds hold


def test_bounded_masks_respect_their_bound():
    m = torch.rand(4, 1, 8, 8)
    b = torch.tensor([0.01, 0.1, 0.5, 0.9])
    out = bounded(m, b)
    assert (out.mean(dim=(1, 2, 3)) <= b + 1e-6).all()
    small = m * 0.01  # a mask already inside its bound is left as it is
    assert torch.allclose(bounded(small, torch.full((4,), 0.5)), small)
