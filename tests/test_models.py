"""Every registered architecture: shapes, conv-unit wiring, save/load, one step."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cleantrain.models import make_model
from cleantrain.registry import models
from cleantrain.store.artifacts import load_model, save_model
from cleantrain.train import Trainer, TrainSettings
from cleantrain.train.trainer import cross_entropy

KEYS = models.keys()
SHAPES = [(1, 28, 10), (3, 32, 43)]  # (channels, pixels, classes)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny batches gain nothing from more threads; on a busy machine extra
    threads only wait on each other. The previous count is restored."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _model(key: str, c: int, px: int, k: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return make_model(key, c, k, px).eval()


def _in_channels(m: nn.Module) -> int:
    return m.in_features if isinstance(m, nn.Linear) else m.in_channels


def test_the_issue_models_are_registered():
    assert {"small-cnn", "preact-resnet18", "resnet18", "wrn-16-1", "vgg11-bn"} <= set(KEYS)


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("c,px,k", SHAPES)
def test_shapes_features_and_units(key, c, px, k):
    m = _model(key, c, px, k)
    x = torch.rand(2, c, px, px)
    with torch.no_grad():
        out, f = m(x), m.features(x)
    assert out.shape == (2, k) and torch.isfinite(out).all()
    assert isinstance(m.head, nn.Linear) and f.shape == (2, m.head.in_features)
    assert torch.allclose(m.head(f), out, atol=1e-5)
    units = m.conv_units()
    assert units and len({u.name for u in units}) == len(units)
    modules = set(m.modules())
    for u in units:
        assert isinstance(u.conv, nn.Conv2d) and u.conv in modules
        if u.bn is not None:
            assert u.bn.num_features == u.conv.out_channels and u.bn in modules
        for nxt in u.consumers:
            assert nxt in modules and _in_channels(nxt) == u.conv.out_channels


def _capture(module: nn.Module, store: dict, key: str, inputs: bool):
    if inputs:
        return module.register_forward_pre_hook(lambda mod, inp: store.__setitem__(key, inp[0].detach().clone()))
    return module.register_forward_hook(lambda mod, inp, out: store.__setitem__(key, out.detach().clone()))


@pytest.mark.parametrize("key", KEYS)
def test_unit_bn_and_consumers_read_that_conv(key):
    """`bn` normalises exactly the conv's output, and a change in the conv's
    channel c reaches each consumer's input in channel c and nowhere else."""
    m = _model(key, 3, 8, 5)
    x = torch.rand(1, 3, 8, 8)
    for u in m.conv_units():
        c = u.conv.out_channels // 2
        seen: dict = {}
        hooks = [_capture(u.conv, seen, "conv", False)]
        if u.bn is not None:
            hooks.append(_capture(u.bn, seen, "bn", True))
        hooks += [_capture(n, seen, f"in{i}", True) for i, n in enumerate(u.consumers)]
        with torch.no_grad():
            m(x)
            base = dict(seen)
            if u.bn is not None:
                assert torch.equal(base["bn"], base["conv"]), u.name

            def bump(mod, inp, out):
                out = out.clone()
                out[:, c] += 5.0 + out[:, c].abs()
                return out

            h = u.conv.register_forward_hook(bump)
            m(x)
            h.remove()
        for h in hooks:
            h.remove()
        for i in range(len(u.consumers)):
            before, after = base[f"in{i}"], seen[f"in{i}"]
            changed = (before != after).flatten(2).any(2).any(0) if before.dim() == 4 else (before != after).any(0)
            assert changed.nonzero().flatten().tolist() == [c], u.name


@pytest.mark.parametrize("key", KEYS)
def test_reset_of_a_unit_with_bn_cuts_the_channel(key):
    """NONE's reset (filter, BN γ/β, consumers' input slice → 0) makes the
    output independent of that conv channel (eval mode, running stats kept).
    Units without a BN of their own (pre-activation residual convs) are reset by
    their zeroed filter alone; they are left out here."""
    m = _model(key, 3, 8, 5)
    x = torch.rand(1, 3, 8, 8)
    units = [u for u in m.conv_units() if u.bn is not None]
    assert units or key in ("preact-resnet18", "wrn-16-1")
    for u in units:
        c = 0
        with torch.no_grad():
            u.conv.weight[c] = 0
            u.bn.weight[c] = 0
            u.bn.bias[c] = 0
            for n in u.consumers:
                n.weight[:, c] = 0
            ref = m(x)
            h = u.conv.register_forward_hook(lambda mod, inp, out: out.index_add(1, torch.tensor([c]), torch.full_like(out[:, :1], 3.0)))
            moved = m(x)
            h.remove()
        assert torch.allclose(ref, moved, atol=1e-5), u.name


@pytest.mark.parametrize("key", KEYS)
def test_state_dict_roundtrips_through_the_store(tmp_path, key):
    torch.manual_seed(1)
    mean, std = [0.4, 0.45, 0.5], [0.2, 0.25, 0.3]
    m = make_model(key, 3, 43, 32, mean, std).eval()
    path = save_model(m, tmp_path / "m.safetensors", key, 32, tuple(str(i) for i in range(43)))
    back, info = load_model(path)
    assert info["model"] == key and info["num_classes"] == 43 and info["image_size"] == 32
    a, b = m.state_dict(), back.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(m(x), back(x))


@pytest.mark.parametrize("key", KEYS)
def test_one_training_step_lowers_the_loss(key):
    m = _model(key, 1, 28, 10, seed=2)
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(8, 1, 28, 28, generator=g), torch.randint(0, 10, (8,), generator=g)
    loss = cross_entropy()

    def batch_loss() -> float:
        m.train()
        with torch.no_grad():
            return float(loss(m(x), y, None))

    before = batch_loss()
    trainer = Trainer(TrainSettings(lr=0.01, weight_decay=0.0, threads=1, channels_last=False), progress=False)
    trainer.fit_steps(m, iter([(x, y, torch.arange(8))]), 1, loss=loss)
    after = batch_loss()
    assert after < before


def test_any_size_from_8_px_and_large_inputs_are_reduced():
    for key in KEYS:
        for px in (8, 100):
            m = _model(key, 3, px, 4)
            with torch.no_grad():
                assert m(torch.rand(1, 3, px, px)).shape == (1, 4)
    big = _model("resnet18", 3, 256, 4)
    seen: dict = {}
    h = _capture(big.layer1, seen, "l1", True)
    with torch.no_grad():
        big(torch.rand(1, 3, 256, 256))
    h.remove()
    assert seen["l1"].shape[-1] == 64  # stem reduced 256 px to 64 px
