"""Any image folder: one subfolder per class holding PNG / JPEG files.

`--data-root DIR` where DIR is either
- `DIR/<class>/...` — all images, split into train / test per class with a
  fixed seed (20 % test, at least one train image per class), or
- `DIR/train/<class>/...` and `DIR/test/<class>/...` — the given split (the
  classes are the train folder's; a test class must also be a train class).
Class names are the folder names in sorted order; images in nested folders
of a class count too; hidden files and other extensions are ignored.

All images are resized (Pillow, bilinear, antialiased) to the size most of
them already have — ties go to the larger area — so a dataset of equal-sized
images is read unchanged. They are kept grey (1 channel) only when every file
is in a grey mode, else converted to RGB. An unreadable or corrupt image is a
UserError naming the file. Horizontal flips are allowed (turn them off with
`--set train.hflip=false` for data where a mirror changes the class).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..registry import datasets
from .core import ImageData
from .images import PIL_ERRORS, open_image, to_array

EXTENSIONS = (".png", ".jpg", ".jpeg")
GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")
TEST_FRACTION = 0.2
SPLIT_SEED = 0
MAX_FILE_BYTES = 100_000_000


def _class_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in EXTENSIONS
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def scan(root: Path, classes: list[str] | None = None) -> tuple[list[str], list[tuple[Path, int]]]:
    """(class names, [(file, label)]) of a class-per-subfolder tree."""
    dirs = _class_dirs(root)
    names = [d.name for d in dirs] if classes is None else classes
    index = {n: i for i, n in enumerate(names)}
    files: list[tuple[Path, int]] = []
    for d in dirs:
        if d.name not in index:
            raise UserError(f"{d}: class {d.name!r} is not among the training classes ({', '.join(names)})")
        found = _images(d)
        if not found:
            raise UserError(f"{d}: class folder holds no PNG or JPEG images")
        files += [(f, index[d.name]) for f in found]
    return names, files


def split(files: list[tuple[Path, int]], num_classes: int) -> tuple[list, list]:
    """Per-class seeded split: round(20 %) of each class to test, ≥ 1 image kept for training."""
    rng = np.random.default_rng(SPLIT_SEED)
    by_class: list[list[tuple[Path, int]]] = [[] for _ in range(num_classes)]
    for f in files:
        by_class[f[1]].append(f)
    train, test = [], []
    for mine in by_class:
        order = rng.permutation(len(mine))
        n_test = min(len(mine) - 1, max(1 if len(mine) > 1 else 0, round(TEST_FRACTION * len(mine))))
        chosen = set(order[:n_test].tolist())
        for i, f in enumerate(mine):
            (test if i in chosen else train).append(f)
    return train, test


def _header(path: Path) -> tuple[tuple[int, int], str]:
    from PIL import Image

    if path.stat().st_size > MAX_FILE_BYTES:
        raise UserError(f"{path}: file larger than {MAX_FILE_BYTES} bytes")
    try:
        with Image.open(path) as img:
            return img.size, img.mode
    except PIL_ERRORS as e:
        raise UserError(f"{path}: unreadable or corrupt image ({e})")


def common_size(sizes: list[tuple[int, int]]) -> tuple[int, int]:
    """The most frequent (width, height); ties go to the larger area, then the wider."""
    counts = Counter(sizes)
    return max(counts, key=lambda s: (counts[s], s[0] * s[1], s))


def decode(files: list[tuple[Path, int]], size: tuple[int, int], rgb: bool) -> tuple[torch.Tensor, torch.Tensor]:
    w, h = size
    x = np.empty((len(files), 3 if rgb else 1, h, w), dtype=np.uint8)
    for i, (path, _) in enumerate(files):
        x[i] = to_array(open_image(path.read_bytes(), str(path)), size, rgb)
    y = np.array([label for _, label in files], dtype=np.int64)
    return torch.from_numpy(x), torch.from_numpy(y)


@datasets.register("folder")
def folder(root: Path | None = None):
    """A class-per-subfolder tree of PNG/JPEG images (--data-root DIR; optional train/ and test/)."""
    if root is None:
        raise UserError("dataset 'folder' needs a folder: pass --data-root DIR (one subfolder per class)")
    if not root.is_dir():
        raise UserError(f"{root}: not a folder")
    has_train, has_test = (root / "train").is_dir(), (root / "test").is_dir()
    if has_train != has_test:
        raise UserError(f"{root}: found {'train/' if has_train else 'test/'} but not "
                        f"{'test/' if has_train else 'train/'}; give both, or class folders only")
    if has_train:
        classes, train_files = scan(root / "train")
        _, test_files = scan(root / "test", classes)
    else:
        classes, files = scan(root)
        train_files, test_files = split(files, len(classes))
    if len(classes) < 2:
        raise UserError(f"{root}: need at least 2 class folders, found {len(classes)}")
    if not test_files:
        raise UserError(f"{root}: too few images to hold out a test set")
    headers = [_header(p) for p, _ in train_files + test_files]
    size = common_size([s for s, _ in headers])
    rgb = not all(mode in GREY_MODES for _, mode in headers)
    out = []
    for files in (train_files, test_files):
        x, y = decode(files, size, rgb)
        out.append(ImageData(x, y, tuple(classes), hflip=True, name="folder"))
    return out[0], out[1]
