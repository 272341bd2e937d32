"""The shared-work cache (defenses/shared.py): a hit equals a fresh computation, across processes too."""

from __future__ import annotations

import json

import torch

from cleantrain.defenses import shared
from cleantrain.defenses.base import DefenseContext, Detection, retrain_kept, run_detector
from cleantrain.train.settings import TrainSettings
from cleantrain.train.trainer import Trainer


def _ctx(data, seed=0):
    mean, std = data.channel_stats()
    trainer = Trainer(TrainSettings(epochs=1, batch_size=128), seed=seed, progress=False)
    return DefenseContext(trainer, "small-cnn", data.shape, data.num_classes, mean, std, seed)


def _weights(m):
    return torch.cat([p.detach().flatten() for p in m.state_dict().values() if p.is_floating_point()])


def test_normal_fit_hit_equals_miss_across_processes(small, tmp_path, monkeypatch):
    data = small[0].head(600)
    monkeypatch.setenv(shared.CACHE_ENV, str(tmp_path))
    shared._memory.clear()
    ctx_a = _ctx(data)
    a, hist_a = shared.normal_fit(data, ctx_a)
    assert len(list(tmp_path.glob("normal-*.safetensors"))) == 1
    shared._memory.clear()  # as if another process: only the disk cache is left
    ctx_b = _ctx(data)
    b, hist_b = shared.normal_fit(data, ctx_b)
    assert torch.equal(_weights(a), _weights(b))
    assert [r["loss"] for r in hist_a] == [r["loss"] for r in hist_b]
    assert ctx_a.trainer.stage == ctx_b.trainer.stage == 1  # numbering the same on a hit
    # without a cache, the same key still gives the same model (weights and batch order come from the key)
    monkeypatch.delenv(shared.CACHE_ENV)
    shared._memory.clear()
    c, _ = shared.normal_fit(data, _ctx(data))
    assert torch.equal(_weights(a), _weights(c))
    # other data, or another seed: another model
    d, _ = shared.normal_fit(data.head(500), _ctx(data))
    e, _ = shared.normal_fit(data, _ctx(data, seed=1))
    assert not torch.equal(_weights(a), _weights(d)) and not torch.equal(_weights(a), _weights(e))


def test_detection_cached_once_and_numbering_kept(small, tmp_path, monkeypatch):
    from cleantrain.defenses.ss import SSSettings

    data = small[0].head(600)
    monkeypatch.setenv(shared.CACHE_ENV, str(tmp_path))
    shared._memory.clear()
    calls = []

    def detect(train, ctx, s):
        calls.append(1)
        m = shared.normal_model(train, ctx)
        scores = ctx.trainer.logits(m, train).max(1).values.cpu()
        return Detection(scores, scores > scores.median(), {"note": "x"})

    ctx_a = _ctx(data)
    a = shared.cached_detection("probe", data, ctx_a, SSSettings(), detect)
    shared._memory.clear()
    ctx_b = _ctx(data)
    b = shared.cached_detection("probe", data, ctx_b, SSSettings(), detect)
    assert len(calls) == 1
    assert torch.equal(a.scores.float(), b.scores) and torch.equal(a.flagged, b.flagged)
    assert b.info == {"note": "x"}
    assert ctx_a.trainer.stage == ctx_b.trainer.stage and ctx_a._models_made == ctx_b._models_made
    # other settings: computed again
    shared.cached_detection("probe", data, _ctx(data), SSSettings(factor=3.0), detect)
    assert len(calls) == 2
    # retraining on what two detectors both keep is one model
    r1 = retrain_kept(data, _ctx(data), a)
    shared._memory.clear()
    r2 = retrain_kept(data, _ctx(data), Detection(-a.scores, a.flagged.clone()))
    assert torch.equal(_weights(r1.model), _weights(r2.model))
    assert len(list(tmp_path.glob("normal-*.json"))) == 2  # the full set's model and the kept set's


def test_run_detector_goes_through_the_cache(small, tmp_path, monkeypatch):
    data = small[0].head(600)
    monkeypatch.setenv(shared.CACHE_ENV, str(tmp_path))
    shared._memory.clear()
    from cleantrain.defenses.base import defense_settings

    s = defense_settings("ss", None)
    d1 = run_detector("ss", data, _ctx(data), s)
    assert len(list(tmp_path.glob("detect-ss-*.json"))) == 1
    d2 = run_detector("ss", data, _ctx(data), s)
    assert torch.equal(d1.scores.float(), d2.scores) and torch.equal(d1.flagged.cpu(), d2.flagged.cpu())


def test_a_hit_counts_the_reused_work(small, tmp_path, monkeypatch):
    data = small[0].head(600)
    monkeypatch.setenv(shared.CACHE_ENV, str(tmp_path))
    shared._memory.clear()
    before, before_cpu = shared.reused_seconds(), shared.reused_cpu_seconds()
    shared.normal_fit(data, _ctx(data))
    assert (shared.reused_seconds(), shared.reused_cpu_seconds()) == (before, before_cpu)  # a miss reuses nothing
    meta = json.loads(next(tmp_path.glob("normal-*.json")).read_text())
    assert meta["seconds"] > 0 and meta["cpu_seconds"] > 0 and len(meta["history"]) == 1
    shared.normal_fit(data, _ctx(data))
    assert shared.reused_seconds() == before + meta["seconds"]
    assert shared.reused_cpu_seconds() == before_cpu + meta["cpu_seconds"]


def test_a_later_setting_at_its_old_value_keeps_the_key(small):
    data = small[0].head(200)
    ctx = _ctx(data)
    before = shared.model_key(data, ctx, 1)
    # the key of the recipe without `cpu_amp`, as it was computed before the setting existed
    recipe = {k: v for k, v in shared.asdict(ctx.trainer.s).items() if k not in shared.EVAL_ONLY and k != "cpu_amp"}
    assert shared._meta(ctx)["train"] == recipe
    ctx.trainer.s = TrainSettings(epochs=1, batch_size=128, cpu_amp=True)
    assert shared._meta(ctx)["train"]["cpu_amp"] is True and shared.model_key(data, ctx, 1) != before
