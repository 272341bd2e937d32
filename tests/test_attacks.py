"""Attacks: determinism, counts, labels, image ranges, odd shapes, and the example gallery."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cleantrain.attacks import make_attack
from cleantrain.attacks.base import attack_from_description
from cleantrain.data.core import CLEAN, COVER, POISON, ImageData
from cleantrain.errors import UserError
from cleantrain.registry import attacks

SHAPES = [(3, 32, 32), (1, 20, 20), (3, 9, 11)]
COVERS_PER_POISON = {"wanet": 2, "adaptive_patch": 2, "adaptive_blend": 1, "tact": 1}  # published ratios
CLASSES = tuple(f"c{i}" for i in range(10))


def synthetic(shape, n=200, seed=0) -> ImageData:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(20, 236, (n, *shape), dtype=torch.uint8, generator=g)  # away from 0/255 so clamps don't hide changes
    return ImageData(x, torch.arange(n) % 10, CLASSES)


@pytest.fixture(scope="module")
def trigger_png(tmp_path_factory):
    from PIL import Image

    path = tmp_path_factory.mktemp("trig") / "t.png"
    a = np.zeros((4, 5), np.uint8)
    a[::2] = 255
    Image.fromarray(a, mode="L").save(path)
    return str(path)


def opts_for(key, trigger_png):
    return {"trigger": trigger_png} if key == "custom" else {}


def build(key, shape, trigger_png, **extra):
    return make_attack(key, {**opts_for(key, trigger_png), **extra}, shape, 10)


def test_every_issue_attack_is_registered():
    assert set(attacks.keys()) >= {"badnets", "blend", "trojan", "sig", "wanet", "adaptive_blend",
                                    "adaptive_patch", "tact", "custom"}


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("key", attacks.keys())
def test_poison_counts_labels_range_and_determinism(key, shape, trigger_png):
    data = synthetic(shape)
    rate, target = 0.05, 0
    att = build(key, shape, trigger_png)
    pd = att.poison(data, rate, target, seed=7)
    again = build(key, shape, trigger_png).poison(data, rate, target, seed=7)
    assert torch.equal(pd.data.x, again.data.x) and torch.equal(pd.data.y, again.data.y)
    assert torch.equal(pd.kind, again.kind)
    other = att.poison(data, rate, target, seed=8)
    assert not torch.equal(other.kind, pd.kind)

    x, y = pd.data.x, pd.data.y
    assert x.dtype == torch.uint8 and x.shape == data.x.shape
    poison, cover, clean = pd.kind == POISON, pd.kind == COVER, pd.kind == CLEAN
    n_poison = round(rate * len(data))
    assert int(poison.sum()) == n_poison
    assert int(cover.sum()) == COVERS_PER_POISON.get(key, 0) * n_poison
    assert torch.equal(pd.original, data.y)
    assert (y[poison] == target).all()  # all-to-one (sig: already target-class samples)
    assert torch.equal(y[cover], data.y[cover]) and torch.equal(y[clean], data.y[clean])
    assert torch.equal(x[clean], data.x[clean])
    changed = (x != data.x).flatten(1).any(1)
    assert changed[poison].all() and changed[cover].all()

    xt, y_att, y_true = att.test_set(data, target)
    assert xt.dtype == torch.uint8 and xt.shape[1:] == data.x.shape[1:]
    assert (y_att == target).all() and (y_true != target).all()
    assert (xt != data.x[att.test_mask(data.y, target)]).flatten(1).any(1).all()
    twin = build(key, shape, trigger_png)
    assert torch.equal(twin.apply(data.x[:8]), att.apply(data.x[:8]))  # patterns come from settings only

    rebuilt, t = attack_from_description(json.loads(json.dumps(pd.attack)), shape, 10)
    assert t == target and torch.equal(rebuilt.apply(data.x[:8]), att.apply(data.x[:8]))


@pytest.mark.parametrize("key", attacks.keys())
def test_too_small_images_and_bad_options_are_user_errors(key, trigger_png):
    if key != "badnets":
        with pytest.raises(UserError):
            build(key, (1, 7, 7), trigger_png)
    with pytest.raises(UserError, match="unknown setting"):
        build(key, (1, 28, 28), trigger_png, bogus=1)


@pytest.mark.parametrize("key,opts", [
    ("blend", {"alpha": 0}), ("blend", {"alpha": 1.5}), ("sig", {"delta": -3}), ("wanet", {"k": 1}),
    ("wanet", {"k": 40}), ("adaptive_blend", {"keep": 17}), ("adaptive_patch", {"opacities": [0.5, 0.2]}),
    ("adaptive_patch", {"opacities": [0.5, 0.2, 0.5, 1.3]}), ("tact", {"source": 12}),
    ("tact", {"cover_classes": [1]}), ("trojan", {"size": 40}), ("custom", {}),
])
def test_invalid_options_rejected(key, opts):
    with pytest.raises(UserError):
        make_attack(key, opts, (1, 28, 28), 10)


def test_tact_poisons_only_the_source_class_and_covers_keep_labels():
    data = synthetic((1, 28, 28), n=1000)
    att = make_attack("tact", {}, data.shape, 10)
    pd = att.poison(data, 0.05, 0, seed=1)
    assert (pd.original[pd.is_poison] == 1).all() and (pd.data.y[pd.is_poison] == 0).all()
    assert set(pd.original[pd.is_cover].tolist()) <= {5, 7}
    assert torch.equal(pd.data.y[pd.is_cover], pd.original[pd.is_cover])
    xt, y_att, y_true = att.test_set(data, 0)
    assert (y_true == 1).all() and len(y_true) == int((data.y == 1).sum())
    with pytest.raises(UserError, match="source"):
        att.poison(data, 0.05, 1, seed=1)


def test_tact_and_sig_poison_at_most_their_whole_class():
    data = synthetic((1, 28, 28), n=1000)  # 100 samples per class
    for key, cls in (("tact", 1), ("sig", 0)):
        pd = make_attack(key, {}, data.shape, 10).poison(data, 0.3, 0, seed=1)
        assert int(pd.is_poison.sum()) == 100 and (pd.original[pd.is_poison] == cls).all()
        assert pd.attack["requested_rate"] == 0.3 and pd.attack["rate"] == pytest.approx(0.1)


def test_sig_keeps_every_label_and_adds_the_sinusoid():
    data = synthetic((3, 20, 20), n=500)
    att = make_attack("sig", {}, data.shape, 10)
    pd = att.poison(data, 0.05, 3, seed=2)
    assert torch.equal(pd.data.y, data.y)
    assert (data.y[pd.is_poison] == 3).all()
    zero = torch.full((1, 3, 20, 20), 128, dtype=torch.uint8)
    d = att.apply(zero).float() - 128
    assert torch.allclose(d[0, :, 0], d[0, :, 7])  # same in every row: a horizontal sinusoid
    assert 25 <= d.abs().max() <= 31  # Δ = 30/255
    j = torch.arange(20.0)
    expected = 30 * torch.sin(2 * torch.pi * j * 6 / 20)  # f = 6 periods across the width
    assert (d[0, 0, 0] - expected).abs().max() <= 0.51


def test_wanet_is_a_subtle_warp_and_covers_use_another_grid(small):
    train, _ = small
    att = make_attack("wanet", {}, train.shape, train.num_classes)
    x = train.x[:200]
    warped = att.apply(x).float()
    diff = (warped - x.float()).abs().mean() / 255
    assert 0.002 < diff < 0.05  # moved, but only a little (mean |Δ| in [0, 1] units)
    cover = to_uint8_cover(att, x)
    assert not torch.equal(cover, att.apply(x))
    assert not torch.equal(att.grid, make_attack("wanet", {"pattern_seed": 1}, train.shape, 10).grid)


def to_uint8_cover(att, x):
    from cleantrain.attacks.base import to_uint8, to_unit

    return to_uint8(att.stamp_cover(to_unit(x), np.random.default_rng(0)))


def test_adaptive_blend_keeps_half_the_tiles_per_sample():
    att = make_attack("adaptive_blend", {}, (1, 28, 28), 10)
    x = torch.zeros(50, 1, 28, 28)
    out = att.stamp(x, np.random.default_rng(0))
    tiles = out[:, 0].reshape(50, 4, 7, 4, 7).abs().sum((2, 4)) > 0  # 4×4 tiles of 7×7 px
    assert (tiles.flatten(1).sum(1) == 8).all()
    assert len({tuple(t.flatten().tolist()) for t in tiles}) > 10  # a fresh mask per sample
    assert float(out.max()) <= 0.15 + 1e-6 and float(att.trigger(x).max()) > 0.15  # α 0.15 train, 0.2 test
    assert torch.allclose(att.trigger(x), 0.2 * att.pattern.expand(50, -1, -1, -1))


def test_adaptive_patch_spreads_four_patches_over_quarters():
    att = make_attack("adaptive_patch", {}, (1, 28, 28), 10)
    x = torch.zeros(40, 1, 28, 28)
    out = att.stamp(x, np.random.default_rng(0))
    corners = torch.stack([out[:, 0, :5, :5].sum((1, 2)), out[:, 0, :5, -5:].sum((1, 2)),
                           out[:, 0, -4:, :4].sum((1, 2)), out[:, 0, -7:, -7:].sum((1, 2))], 1) > 0
    assert (corners.sum(1) == 1).all() and corners.sum(0).tolist() == [10, 10, 10, 10]
    assert float(out.max()) <= 0.5 + 1e-6  # low opacities
    test = att.trigger(x)
    assert float(test.max()) == 1.0 and (test[:, 0, :8, :8].sum((1, 2)) > out[:, 0, :8, :8].sum((1, 2))).all()


def test_blend_formula_and_pattern_file(tmp_path):
    from PIL import Image

    att = make_attack("blend", {}, (3, 16, 16), 10)
    x = torch.rand(4, 3, 16, 16)
    assert torch.allclose(att.trigger(x), 0.8 * x + 0.2 * att.pattern)
    Image.fromarray(np.full((40, 40, 3), 255, np.uint8)).save(tmp_path / "white.png")
    white = make_attack("blend", {"pattern": str(tmp_path / "white.png")}, (1, 16, 16), 10)
    assert torch.allclose(white.trigger(torch.zeros(1, 1, 16, 16)), torch.full((1, 1, 16, 16), 0.2))
    with pytest.raises(UserError, match="not found"):
        make_attack("blend", {"pattern": str(tmp_path / "none.png")}, (1, 16, 16), 10)


def test_custom_trigger_files(tmp_path, trigger_png):
    att = make_attack("custom", {"trigger": trigger_png, "row": 2, "col": 3}, (1, 12, 12), 10)
    out = att.apply(torch.zeros(1, 1, 12, 12, dtype=torch.uint8))[0, 0]
    assert out[2:6, 3:8].max() == 255 and out.sum() == out[2:6, 3:8].sum()  # pasted at (2, 3) only
    trig = np.full((3, 3, 3), 200, np.uint8)
    np.save(tmp_path / "t.npy", trig)
    np.save(tmp_path / "m.npy", np.eye(3, dtype=np.float32))
    att = make_attack("custom", {"trigger": str(tmp_path / "t.npy"), "mask": str(tmp_path / "m.npy"),
                                 "opacity": 0.5}, (3, 9, 9), 10)
    out = att.apply(torch.zeros(1, 3, 9, 9, dtype=torch.uint8))[0]
    assert out[:, -3:, -3:].sum(0).diagonal().tolist() == [300, 300, 300] and int(out.sum()) == 900
    from PIL import Image

    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., :3] = 255
    rgba[0, 0, 3] = 255  # only the top-left pixel is opaque: the alpha channel is the mask
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    out = make_attack("custom", {"trigger": str(tmp_path / "a.png")}, (1, 8, 8), 10).apply(
        torch.zeros(1, 1, 8, 8, dtype=torch.uint8))[0, 0]
    assert out[6, 6] == 255 and int(out.sum()) == 255


@pytest.mark.parametrize("case", ["oversized", "missing", "garbage", "pickled", "mask-shape", "outside"])
def test_custom_rejects_bad_trigger_files(tmp_path, case, trigger_png):
    from PIL import Image

    opts = {"trigger": trigger_png}
    if case == "oversized":
        Image.fromarray(np.zeros((30, 30), np.uint8)).save(tmp_path / "big.png")
        opts["trigger"] = str(tmp_path / "big.png")
    elif case == "missing":
        opts["trigger"] = str(tmp_path / "nope.png")
    elif case == "garbage":
        (tmp_path / "g.png").write_bytes(b"\x89PNG not really")
        opts["trigger"] = str(tmp_path / "g.png")
    elif case == "pickled":
        np.save(tmp_path / "o.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
        opts["trigger"] = str(tmp_path / "o.npy")
    elif case == "mask-shape":
        np.save(tmp_path / "m.npy", np.ones((2, 2), np.float32))
        opts["mask"] = str(tmp_path / "m.npy")
    else:
        opts["row"] = 25
    with pytest.raises(UserError):
        make_attack("custom", opts, (1, 28, 28), 10)


def test_cli_attack_opt_validation_and_examples(tmp_path, run_cli):
    from PIL import Image

    code, _, err = run_cli("poison", "--attack", "blend", "--attack-opt", "alpha=3", "--train-size", "500",
                           "--out", tmp_path / "bad.npz")
    assert code == 2 and "alpha" in err and not (tmp_path / "bad.npz").exists()
    ex = tmp_path / "ex"
    code, out, _ = run_cli("poison", "--attack", "adaptive_patch", "--attack-opt", "pattern_seed=3",
                           "--rate", "0.1", "--train-size", "500", "--out", tmp_path / "p.npz", "--examples", ex)
    assert code == 0, out
    pngs = sorted(ex.glob("*.png"))
    assert len(pngs) == 10 and not list(ex.glob(".*tmp"))
    index = json.loads((ex / "examples.json").read_text())
    assert index["attack"] == "adaptive_patch" and len(index["columns"]) == 5  # clean, poison, cover, test, diff
    with Image.open(pngs[0]) as im:
        w, h = im.size
    assert w > 5 * 28 and h > 3 * 28  # five columns, three rows


def test_cli_poison_without_an_attack_writes_the_clean_set(tmp_path, run_cli):
    """`poison --attack none` saves the (subsampled) clean set in the same format, which `train --data` and a bench
    grid's `attacks: [none]` read; --examples has nothing to show then and is refused before any work."""
    from cleantrain.data.io import load_npz

    code, out, _ = run_cli("poison", "--attack", "none", "--train-size", "300", "--out", tmp_path / "c.npz")
    assert code == 0, out
    pd = load_npz(tmp_path / "c.npz")
    assert len(pd) == 300 and int(pd.is_poison.sum()) == 0 and pd.attack == {"attack": None}
    assert torch.equal(pd.data.y, pd.original) and int(pd.kind.max()) == 0
    code, _, err = run_cli("poison", "--attack", "none", "--train-size", "300", "--out", tmp_path / "d.npz",
                           "--examples", tmp_path / "ex")
    assert code == 2 and "--examples needs --attack" in err and not (tmp_path / "d.npz").exists()
