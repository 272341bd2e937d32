"""Dataset loaders on small files in the official formats, written here."""

from __future__ import annotations

import csv
import io
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cleantrain.data.io import load_dataset
from cleantrain.errors import UserError

RNG = np.random.default_rng(0)


# ----------------------------------------------------------------- CIFAR
def cifar_records(n: int, label_bytes: int, num_classes: int, seed: int):
    g = np.random.default_rng(seed)
    labels = g.integers(0, num_classes, size=(n, label_bytes), dtype=np.uint8)
    pixels = g.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    raw = np.concatenate([labels, pixels], axis=1).tobytes()
    return raw, pixels.reshape(n, 3, 32, 32), labels[:, -1].astype(np.int64)


def write_tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def cifar10_members(n: int = 20, bad_label: bool = False):
    members, xs, ys = {}, [], []
    for i, name in enumerate([f"data_batch_{k}.bin" for k in range(1, 6)] + ["test_batch.bin"]):
        raw, x, y = cifar_records(n, 1, 10, seed=i)
        if bad_label and i == 2:
            raw = bytes([10]) + raw[1:]
        members[f"cifar-10-batches-bin/{name}"] = raw
        xs.append(x)
        ys.append(y)
    members["cifar-10-batches-bin/batches.meta.txt"] = "\n".join(f"class{k}" for k in range(10)).encode() + b"\n\n"
    return members, np.concatenate(xs[:5]), np.concatenate(ys[:5]), xs[5], ys[5]


def test_cifar10_binary_archive_is_read_exactly(tmp_path):
    members, xtr, ytr, xte, yte = cifar10_members()
    archive = write_tar(tmp_path / "cifar-10-binary.tar.gz", members)
    for root in (archive, tmp_path):  # the archive itself, or the folder holding it
        train, test = load_dataset("cifar10", root)
        assert train.x.shape == (100, 3, 32, 32) and test.x.shape == (20, 3, 32, 32)
        assert np.array_equal(train.x.numpy(), xtr) and np.array_equal(train.y.numpy(), ytr)
        assert np.array_equal(test.x.numpy(), xte) and np.array_equal(test.y.numpy(), yte)
        assert train.classes == tuple(f"class{k}" for k in range(10)) and train.hflip and test.hflip
    # the red plane comes first: pixel (0, 0) of channel 0 is byte 1 of the first record
    assert int(train.x[0, 0, 0, 0]) == members["cifar-10-batches-bin/data_batch_1.bin"][1]
    assert int(train.x[0, 2, 31, 31]) == members["cifar-10-batches-bin/data_batch_1.bin"][3072]


def test_cifar10_extracted_folder_and_default_names(tmp_path):
    members, xtr, ytr, _, _ = cifar10_members()
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    for name, data in members.items():
        if not name.endswith(".txt"):
            (tmp_path / name).write_bytes(data)
    train, _ = load_dataset("cifar10", tmp_path)
    assert np.array_equal(train.x.numpy(), xtr) and np.array_equal(train.y.numpy(), ytr)
    assert train.classes[0] == "airplane" and train.classes[9] == "truck"


def test_cifar100_uses_the_fine_label(tmp_path):
    raw_tr, x_tr, y_tr = cifar_records(20, 2, 100, seed=5)
    raw_te, x_te, y_te = cifar_records(20, 2, 100, seed=6)
    names = "\n".join(f"fine{k}" for k in range(100)).encode()
    write_tar(tmp_path / "cifar-100-binary.tar.gz", {
        "cifar-100-binary/train.bin": raw_tr, "cifar-100-binary/test.bin": raw_te,
        "cifar-100-binary/fine_label_names.txt": names,
        "cifar-100-binary/coarse_label_names.txt": b"c0\nc1\n",
    })
    train, test = load_dataset("cifar100", tmp_path)
    assert np.array_equal(train.y.numpy(), y_tr) and np.array_equal(test.x.numpy(), x_te)
    coarse = np.frombuffer(raw_tr, np.uint8).reshape(20, -1)[:, 0]
    assert not np.array_equal(train.y.numpy(), coarse)  # the first byte (coarse) is not the label
    assert train.num_classes == 100 and train.classes[7] == "fine7"


def test_cifar_rejects_broken_archives(tmp_path):
    members, *_ = cifar10_members()
    cut = dict(members)
    cut["cifar-10-batches-bin/data_batch_3.bin"] = cut["cifar-10-batches-bin/data_batch_3.bin"][:-7]
    cases = {
        "truncated records": write_tar(tmp_path / "a.tar.gz", cut),
        "label out of range": write_tar(tmp_path / "b.tar.gz", cifar10_members(bad_label=True)[0]),
        "missing member": write_tar(tmp_path / "c.tar.gz", {k: v for k, v in members.items() if "test" not in k}),
        "path traversal": write_tar(tmp_path / "d.tar.gz", {"../evil.bin": b"x", **members}),
    }
    whole = (tmp_path / "e.tar.gz")
    write_tar(whole, members)
    (tmp_path / "f.tar.gz").write_bytes(whole.read_bytes()[: len(whole.read_bytes()) // 2])
    cases["truncated gzip"] = tmp_path / "f.tar.gz"
    (tmp_path / "g.tar.gz").write_bytes(b"not an archive at all")
    cases["not a tar"] = tmp_path / "g.tar.gz"
    expect = {"truncated records": "whole number", "label out of range": "out of range",
              "missing member": "missing", "path traversal": "unsafe", "truncated gzip": "corrupt",
              "not a tar": "corrupt"}
    for what, path in cases.items():
        with pytest.raises(UserError, match=expect[what]):
            load_dataset("cifar10", path)
    (tmp_path / "nothing-here").mkdir()
    with pytest.raises(UserError, match="no cifar-10-binary.tar.gz"):
        load_dataset("cifar10", tmp_path / "nothing-here")


# ----------------------------------------------------------------- GTSRB
def ppm(w: int, h: int, colour=None, left_right=None) -> bytes:
    a = np.zeros((h, w, 3), np.uint8)
    if colour is not None:
        a[:] = colour
    if left_right is not None:
        a[:, : w // 2], a[:, w // 2:] = left_right
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PPM")
    return buf.getvalue()


def gt_csv(rows: list[tuple[str, int, int, int]]) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, delimiter=";", lineterminator="\r\n")
    w.writerow(["Filename", "Width", "Height", "Roi.X1", "Roi.Y1", "Roi.X2", "Roi.Y2", "ClassId"])
    for name, width, height, label in rows:
        w.writerow([name, width, height, 1, 1, width - 1, height - 1, label])
    return buf.getvalue().encode()


def write_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


COLOURS = {0: (255, 0, 0), 5: (0, 255, 0), 42: (0, 0, 255)}


def write_gtsrb(root: Path, train_extra: dict[str, bytes] | None = None, test_rows=None) -> Path:
    train: dict[str, bytes] = {}
    for label, colour in COLOURS.items():
        folder = f"GTSRB/Final_Training/Images/{label:05d}/"
        rows = []
        for j, (w, h) in enumerate([(31, 35), (48, 50)]):
            name = f"00000_{j:05d}.ppm"
            train[folder + name] = ppm(w, h, colour)
            rows.append((name, w, h, label))
        train[folder + f"GT-{label:05d}.csv"] = gt_csv(rows)
    train.update(train_extra or {})
    write_zip(root / "GTSRB_Final_Training_Images.zip", train)
    test = {"GTSRB/Final_Test/Images/00000.ppm": ppm(64, 32, left_right=((255, 0, 0), (0, 0, 255))),
            "GTSRB/Final_Test/Images/00001.ppm": ppm(40, 40, (0, 255, 0)),
            "GTSRB/Final_Test/Images/GT-final_test.test.csv": b"Filename;Width;Height\r\n"}
    write_zip(root / "GTSRB_Final_Test_Images.zip", test)
    rows = test_rows or [("00000.ppm", 64, 32, 42), ("00001.ppm", 40, 40, 5)]
    write_zip(root / "GTSRB_Final_Test_GT.zip", {"GT-final_test.csv": gt_csv(rows)})
    return root


def test_gtsrb_official_zips_are_read_and_resized(tmp_path):
    train, test = load_dataset("gtsrb", write_gtsrb(tmp_path))
    assert train.x.shape == (6, 3, 32, 32) and test.x.shape == (2, 3, 32, 32)
    assert sorted(train.y.tolist()) == [0, 0, 5, 5, 42, 42] and test.y.tolist() == [42, 5]
    assert train.num_classes == 43 and not train.hflip and not test.hflip
    for img, label in zip(train.x, train.y.tolist()):  # solid colours survive the resize exactly
        assert (img.permute(1, 2, 0) == torch.tensor(COLOURS[label], dtype=torch.uint8)).all()
    split = test.x[0]  # red left half, blue right half, squeezed from 64×32 to 32×32
    assert split[0, :, :15].eq(255).all() and split[2, :, :15].eq(0).all()
    assert split[2, :, 17:].eq(255).all() and split[0, :, 17:].eq(0).all()


def test_gtsrb_rejects_corrupt_or_inconsistent_files(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    broken = ppm(30, 30, (1, 2, 3))[:-100]
    write_gtsrb(bad, {"GTSRB/Final_Training/Images/00005/00000_00000.ppm": broken})
    with pytest.raises(UserError, match="00005/00000_00000.ppm.*corrupt"):
        load_dataset("gtsrb", bad)
    missing = tmp_path / "missing"
    missing.mkdir()
    write_gtsrb(missing, test_rows=[("00000.ppm", 64, 32, 1), ("00009.ppm", 40, 40, 5)])
    with pytest.raises(UserError, match="00009.ppm is missing"):
        load_dataset("gtsrb", missing)
    label = tmp_path / "label"
    label.mkdir()
    write_gtsrb(label, test_rows=[("00000.ppm", 64, 32, 43)])
    with pytest.raises(UserError, match="ClassId 43 out of range"):
        load_dataset("gtsrb", label)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="lacks GTSRB_Final_Training_Images.zip"):
        load_dataset("gtsrb", tmp_path / "empty")


# ----------------------------------------------------------------- folder
def save(path: Path, a: np.ndarray, fmt: str) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path, format=fmt)
    return a


def test_folder_with_train_and_test_reads_png_and_jpeg(tmp_path):
    a0 = save(tmp_path / "train/cat/x.png", RNG.integers(0, 256, (10, 12, 3), dtype=np.uint8), "PNG")
    save(tmp_path / "train/cat/deep/y.png", RNG.integers(0, 256, (10, 12, 3), dtype=np.uint8), "PNG")
    save(tmp_path / "train/dog/z.jpg", np.full((10, 12, 3), 200, np.uint8), "JPEG")
    save(tmp_path / "train/dog/big.jpeg", np.full((20, 24, 3), 100, np.uint8), "JPEG")  # resized to 12×10
    save(tmp_path / "test/dog/t.png", np.full((10, 12, 3), 7, np.uint8), "PNG")
    (tmp_path / "train/dog/notes.txt").write_text("ignored")
    (tmp_path / "train/dog/.hidden.png").write_bytes(b"ignored too")
    train, test = load_dataset("folder", tmp_path)
    assert train.classes == ("cat", "dog") and train.x.shape == (4, 3, 10, 12) and test.x.shape == (1, 3, 10, 12)
    assert train.y.tolist() == [0, 0, 1, 1] and test.y.tolist() == [1]
    assert np.array_equal(train.x[1].numpy(), a0.transpose(2, 0, 1))  # sorted paths: deep/y.png, x.png; PNG lossless
    assert (train.x[2].int() - 100).abs().max() <= 3 and (train.x[3].int() - 200).abs().max() <= 3  # JPEG ≈
    assert (test.x == 7).all() and train.hflip


def test_folder_split_is_seeded_per_class_and_grey_stays_grey(tmp_path):
    for k, n in (("a", 10), ("b", 5), ("c", 2)):
        for i in range(n):
            save(tmp_path / k / f"{i}.png", np.full((9, 9), 10 * i, np.uint8), "PNG")
    train, test = load_dataset("folder", tmp_path)
    again, again_test = load_dataset("folder", tmp_path)
    assert train.x.shape[1:] == (1, 9, 9)
    assert torch.bincount(test.y, minlength=3).tolist() == [2, 1, 1]
    assert torch.bincount(train.y, minlength=3).tolist() == [8, 4, 1]
    assert torch.equal(train.x, again.x) and torch.equal(test.x, again_test.x)
    # every image is in exactly one part
    seen = sorted((int(y), int(x[0, 0, 0])) for x, y in zip(torch.cat([train.x, test.x]), torch.cat([train.y, test.y])))
    assert seen == sorted([(0, 10 * i) for i in range(10)] + [(1, 10 * i) for i in range(5)] + [(2, 0), (2, 10)])
    save(tmp_path / "c" / "colour.png", np.zeros((9, 9, 3), np.uint8), "PNG")
    assert load_dataset("folder", tmp_path)[0].x.shape[1] == 3  # one RGB file makes the set RGB


def test_folder_most_common_size_wins(tmp_path):
    for i in range(3):
        save(tmp_path / "a" / f"{i}.png", np.zeros((16, 16), np.uint8), "PNG")
    save(tmp_path / "b/0.png", np.zeros((8, 8), np.uint8), "PNG")
    save(tmp_path / "b/1.png", np.zeros((30, 20), np.uint8), "PNG")
    train, test = load_dataset("folder", tmp_path)
    assert train.x.shape[2:] == (16, 16) and test.x.shape[2:] == (16, 16)


def test_folder_rejects_corrupt_images_and_bad_trees(tmp_path):
    for k in ("a", "b"):
        for i in range(3):
            save(tmp_path / k / f"{i}.png", np.zeros((8, 8, 3), np.uint8), "PNG")
    good = (tmp_path / "a/0.png").read_bytes()
    (tmp_path / "b/broken.png").write_bytes(b"\x89PNG\r\n\x1a\n definitely not a png")
    with pytest.raises(UserError, match="broken.png"):
        load_dataset("folder", tmp_path)
    (tmp_path / "b/broken.png").write_bytes(good[: len(good) // 2])  # valid header, truncated data
    with pytest.raises(UserError, match="broken.png"):
        load_dataset("folder", tmp_path)
    (tmp_path / "b/broken.png").unlink()
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no PNG or JPEG"):
        load_dataset("folder", tmp_path)
    with pytest.raises(UserError, match="needs a folder"):
        load_dataset("folder", None)
    one = tmp_path / "one"
    save(one / "train/a/0.png", np.zeros((8, 8, 3), np.uint8), "PNG")
    with pytest.raises(UserError, match="not 'test/'|but not test/"):
        load_dataset("folder", one)


# ----------------------------------------------------------------- npz
@pytest.mark.parametrize("layout", ["NHW", "NHWC", "NCHW", "NHWC1"])
def test_npz_image_layouts(tmp_path, layout):
    x = RNG.integers(0, 256, (6, 3, 10, 12), dtype=np.uint8)
    arr = {"NHW": x[:, 0], "NHWC": x.transpose(0, 2, 3, 1), "NCHW": x, "NHWC1": x[:, :1].transpose(0, 2, 3, 1)}[layout]
    y = np.array([0, 1, 2, 0, 1, 2])
    np.savez(tmp_path / "d.npz", x=arr, y=y)
    train, _ = load_dataset("npz", tmp_path / "d.npz")
    want = x[:, :1] if layout in ("NHW", "NHWC1") else x
    assert np.array_equal(train.x.numpy(), want) and train.y.tolist() == y.tolist()


def test_npz_rejects_nan_and_out_of_range_labels(tmp_path):
    x = np.zeros((4, 8, 8), np.float32)
    x[1, 2, 3] = np.nan
    np.savez(tmp_path / "nan.npz", x=x, y=np.array([0, 1, 0, 1]))
    with pytest.raises(UserError, match="NaN"):
        load_dataset("npz", tmp_path / "nan.npz")
    np.savez(tmp_path / "lab.npz", x=np.zeros((4, 8, 8), np.uint8), y=np.array([0, 1, 2, 1]), classes=np.array(["a", "b"]))
    with pytest.raises(UserError, match="out of range"):
        load_dataset("npz", tmp_path / "lab.npz")
    np.savez(tmp_path / "neg.npz", x=np.zeros((4, 8, 8), np.uint8), y=np.array([0, -1, 0, 1]))
    with pytest.raises(UserError, match="negative"):
        load_dataset("npz", tmp_path / "neg.npz")
    np.savez(tmp_path / "fl.npz", x=np.zeros((4, 8, 8), np.uint8), y=np.array([0.0, 1.5, 0.0, 1.0]))
    with pytest.raises(UserError, match="integers"):
        load_dataset("npz", tmp_path / "fl.npz")
    ok = np.full((4, 8, 8), 0.5, np.float32)
    np.savez(tmp_path / "ok.npz", x=ok, y=np.array([0, 1, 0, 1]))
    assert (load_dataset("npz", tmp_path / "ok.npz")[0].x == 128).all()  # floats in [0, 1] are scaled


# ----------------------------------------------------------------- downloads (file:// URLs, no network)
def test_cifar_download_checks_md5_into_the_cache(tmp_path, monkeypatch):
    from dataclasses import replace

    from cleantrain.data import cifar
    from cleantrain.data.download import file_hash

    members, xtr, *_ = cifar10_members()
    served = tmp_path / "served"
    served.mkdir()
    archive = write_tar(served / "cifar-10-binary.tar.gz", members)
    monkeypatch.setenv("CLEANTRAIN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cifar, "URL", served.as_uri() + "/")
    monkeypatch.setattr(cifar, "CIFAR10", replace(cifar.CIFAR10, md5="0" * 32))
    with pytest.raises(UserError, match="checksum mismatch"):
        load_dataset("cifar10")
    assert not (tmp_path / "cache/cifar10/cifar-10-binary.tar.gz").exists()  # nothing half-written kept
    monkeypatch.setattr(cifar, "CIFAR10", replace(cifar.CIFAR10, md5=file_hash(archive)))
    train, _ = load_dataset("cifar10")
    assert np.array_equal(train.x.numpy(), xtr)
    assert (tmp_path / "cache/cifar10/cifar-10-binary.tar.gz").is_file()


def test_gtsrb_download_and_decoded_cache(tmp_path, monkeypatch):
    from cleantrain.data import gtsrb
    from cleantrain.data.download import file_hash

    served = write_gtsrb(tmp_path)
    monkeypatch.setenv("CLEANTRAIN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(gtsrb, "URL", served.as_uri() + "/")
    monkeypatch.setattr(gtsrb, "MD5", {n: file_hash(served / n) for n in gtsrb.MD5})
    train, test = load_dataset("gtsrb")
    assert sorted(train.y.tolist()) == [0, 0, 5, 5, 42, 42] and test.y.tolist() == [42, 5]
    assert list((tmp_path / "cache/gtsrb").glob("*.npz"))

    def no_decoding(*a):
        raise AssertionError("decoded again instead of using the cache")

    monkeypatch.setattr(gtsrb, "_train", no_decoding)
    again, again_test = load_dataset("gtsrb")
    assert torch.equal(again.x, train.x) and torch.equal(again_test.y, test.y) and not again.hflip
