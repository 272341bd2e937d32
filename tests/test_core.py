"""The foundation: data types, config, registry, batches, Trainer, store."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest
import torch

from cleantrain.attacks import make_attack
from cleantrain.config import build, parse_assignments
from cleantrain.data.batches import Augment, augment_batch, batches
from cleantrain.data.core import POISON, ImageData
from cleantrain.data.io import load_npz, save_npz
from cleantrain.errors import UserError
from cleantrain.models import make_model
from cleantrain.registry import attacks, defenses
from cleantrain.train import Trainer, TrainSettings


def test_registry_lists_valid_keys_on_unknown():
    with pytest.raises(UserError, match="valid: .*badnets"):
        attacks.get("nope")
    assert "vanilla" in defenses.keys()


def test_settings_reject_unknown_key_and_wrong_type():
    with pytest.raises(UserError, match="unknown setting 'lrr'"):
        build(TrainSettings, {"lrr": 1})
    with pytest.raises(UserError, match="'epochs'"):
        build(TrainSettings, {"epochs": "ten"})
    with pytest.raises(UserError, match="'schedule'"):
        build(TrainSettings, {"schedule": "zigzag"})
    assert build(TrainSettings, parse_assignments(["lr=0.2", "epochs=3"])).lr == 0.2


def test_fashion_mnist_is_real(fmnist):
    train, test = fmnist
    assert train.x.shape == (60000, 1, 28, 28) and test.x.shape == (10000, 1, 28, 28)
    assert torch.bincount(train.y).tolist() == [6000] * 10
    assert train.classes[9] == "Ankle boot"


def test_npz_roundtrip_keeps_provenance(tmp_path, small):
    train, _ = small
    att = make_attack("badnets", {}, train.shape, train.num_classes)
    pd = att.poison(train, 0.1, 0, seed=3)
    path = save_npz(pd, tmp_path / "p.npz")
    back = load_npz(path)
    assert torch.equal(back.data.x, pd.data.x) and torch.equal(back.data.y, pd.data.y)
    assert torch.equal(back.kind, pd.kind) and torch.equal(back.original, pd.original)
    assert back.attack == pd.attack and back.data.classes == train.classes
    with np.load(path, allow_pickle=False) as z:  # nothing in it needs pickle
        assert set(z.files) >= {"x", "y", "kind", "original_label", "schema_version"}


def test_badnets_poison_is_deterministic_and_counted(small):
    train, test = small
    att = make_attack("badnets", {}, train.shape, train.num_classes)
    a, b = att.poison(train, 0.1, 2, seed=5), att.poison(train, 0.1, 2, seed=5)
    assert torch.equal(a.kind, b.kind) and torch.equal(a.data.x, b.data.x)
    p = a.kind == POISON
    assert int(p.sum()) == 400
    assert (a.data.y[p] == 2).all() and (a.original[p] != 2).all()
    assert (a.data.x[p][:, :, -3:, -3:] == att.apply(train.x[:1])[0, :, -3:, -3:]).all()
    assert torch.equal(a.data.x[~p], train.x[~p])
    with pytest.raises(UserError, match="zero"):
        att.poison(train.head(10), 0.01, 0, seed=0)
    with pytest.raises(UserError, match="out of range"):
        att.poison(train, 0.1, 10, seed=0)


def test_batched_augmentation_crops_and_flips():
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).view(2, 1, 6, 6)
    g = torch.Generator().manual_seed(0)
    y = augment_batch(x, Augment(crop_pad=2, hflip=True), True, g)
    assert y.shape == x.shape
    # every output row is a (possibly flipped) shifted window of the zero-padded input
    pad = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for n in range(2):
        ok = False
        for dy in range(5):
            for dx in range(5):
                win = pad[n, :, dy:dy + 6, dx:dx + 6]
                ok |= torch.equal(win, y[n]) or torch.equal(win.flip(2), y[n])
        assert ok


def test_batches_cover_every_sample_once(small):
    train, _ = small
    g = torch.Generator().manual_seed(0)
    seen = torch.cat([idx for _, _, idx in batches(train, 512, shuffle=True, generator=g)])
    assert torch.equal(seen.sort().values, torch.arange(len(train)))


def _tiny_fit(train, seed, **kw):
    torch.manual_seed(seed)
    mean, std = train.channel_stats()
    model = make_model("small-cnn", 1, 10, 28, mean, std)
    t = Trainer(TrainSettings(epochs=1, batch_size=128), seed=seed, progress=False, **kw)
    t.fit(model, train.head(1000))
    return model, t


def test_trainer_same_seed_same_weights(small):
    train, _ = small
    a, _ = _tiny_fit(train, 0)
    b, _ = _tiny_fit(train, 0)
    c, _ = _tiny_fit(train, 1)
    wa, wb, wc = (torch.cat([p.flatten() for p in m.parameters()]) for m in (a, b, c))
    assert torch.equal(wa, wb)
    assert not torch.equal(wa, wc)


def test_trainer_resume_skips_finished_stage(tmp_path, small):
    train, _ = small
    data = train.head(600)
    mean, std = data.channel_stats()

    def run(resume):
        torch.manual_seed(0)
        m = make_model("small-cnn", 1, 10, 28, mean, std)
        t = Trainer(TrainSettings(epochs=2), seed=0, progress=False, checkpoint_dir=tmp_path, resume=resume)
        f = t.fit(m, data)
        return m, f

    m1, f1 = run(False)
    m2, f2 = run(True)  # the stage is complete on disk: loaded, not retrained
    assert all(torch.equal(p, q) for p, q in zip(m1.state_dict().values(), m2.state_dict().values()))
    assert f2.history == f1.history


def test_bn_frozen_mode_keeps_running_stats(small):
    train, _ = small
    model, t = _tiny_fit(train, 0)
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    t.fit(model, train.head(300), epochs=1, bn="frozen", lr=1e-3, schedule="constant")
    t.fit(model, train.head(300), epochs=1, bn="eval", lr=1e-3, schedule="constant")
    after = {k: v for k, v in model.state_dict().items() if "running" in k}
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_per_sample_loss_matches_manual(small):
    train, _ = small
    model, t = _tiny_fit(train, 0)
    data = train.head(300)
    losses = t.per_sample_loss(model, data)
    model.eval()
    with torch.no_grad():
        ref = torch.nn.functional.cross_entropy(model(data.x.float() / 255), data.y, reduction="none")
    assert losses.shape == (300,)
    assert torch.allclose(losses, ref, atol=1e-5)


def test_cpu_amp_runs_convolutions_in_bfloat16(small):
    train, _ = small
    data = train.head(300)
    torch.manual_seed(0)
    mean, std = data.channel_stats()
    model = make_model("small-cnn", 1, 10, 28, mean, std)
    seen = []
    model.b2[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    t = Trainer(TrainSettings(epochs=1, cpu_amp=True), seed=0, progress=False)
    t.fit(model, data)
    assert seen and set(seen) == {torch.bfloat16}  # every training step's convolution ran in bf16
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the weights stay fp32
    seen.clear()
    amp = t.per_sample_loss(model, data)
    assert set(seen) == {torch.bfloat16} and amp.dtype == torch.float32
    seen.clear()
    fp32 = Trainer(TrainSettings(), progress=False).per_sample_loss(model, data)
    assert set(seen) == {torch.float32}  # off by default
    assert torch.allclose(amp, fp32, rtol=0.05, atol=0.05) and not torch.equal(amp, fp32)


def test_cli_train_end_to_end(tmp_path, run_cli):
    out = tmp_path / "runs" / "v"
    code, stdout, _ = run_cli("train", "--attack", "badnets", "--rate", "0.1", "--train-size", "2000",
                              "--test-size", "500", "--epochs", "6", "--set", "train.eval_sample=200",
                              "--out", out, "--quiet")
    assert code == 0, stdout
    assert "vanilla: CA" in stdout
    r = json.loads((out / "result.json").read_text())
    # per-epoch numbers on the fixed 200-image subset, the result on all 500
    assert [row["eval_n"] for row in r["history"]] == [200] * 6 and r["n_test"] == 500
    for k in ("clean_acc", "asr", "robust_acc", "detection", "wall_seconds", "peak_rss_mb", "config", "history"):
        assert k in r
    assert 0.5 < r["clean_acc"] <= 1 and r["asr"] > 0.5
    assert (out / "model.safetensors").is_file()
    rows = sqlite3.connect(tmp_path / "runs" / "runs.db").execute("select status, metrics from runs").fetchall()
    assert rows[0][0] == "done" and json.loads(rows[0][1])["clean_acc"] == r["clean_acc"]
    # evaluate the saved model: same CA as the run recorded
    code, stdout, _ = run_cli("evaluate", "--model", out / "model.safetensors", "--attack", "badnets",
                              "--test-size", "500")
    assert code == 0
    m = json.loads(stdout)
    assert abs(m["clean_acc"] - r["clean_acc"]) < 1e-6 and abs(m["asr"] - r["asr"]) < 1e-6


def test_eval_subset_is_fixed_and_paired(small):
    from cleantrain.evaluate.metrics import eval_subset

    _, test = small
    xt = test.x.clone()
    triggered = (xt, torch.zeros(len(test), dtype=torch.long), test.y.clone())
    a, ta = eval_subset(test, triggered, 300)
    b, tb = eval_subset(test, triggered, 300)
    assert len(a) == 300 and len(ta[0]) == 300 and torch.equal(a.x, b.x) and torch.equal(ta[2], tb[2])
    # the triggered rows keep their own true labels; rows are a real subset of the split
    rows = [int(torch.nonzero((test.x == img).flatten(1).all(1))[0]) for img in ta[0][:20]]
    assert torch.equal(ta[2][:20], test.y[rows])
    whole, t_whole = eval_subset(test, triggered, 0)
    assert whole is test and t_whole is triggered
    assert eval_subset(test, None, 5000)[0] is test  # more than there are: all
