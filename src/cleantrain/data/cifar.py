"""CIFAR-10 and CIFAR-100 from the official *binary* archives (never the
pickled python version).

Format (https://www.cs.toronto.edu/~kriz/cifar.html): each record is the
label byte(s) then 3072 pixel bytes, the red, green and blue planes of a
32×32 image in row-major order. CIFAR-10: one label byte, files
`cifar-10-batches-bin/data_batch_{1..5}.bin` and `test_batch.bin` (class names
in `batches.meta.txt`). CIFAR-100: a coarse and a fine label byte (the fine,
100-class label is used), files `cifar-100-binary/train.bin` and `test.bin`
(names in `fine_label_names.txt`).

`--data-root` may name the downloaded `.tar.gz`, a folder holding it, or a
folder holding the extracted member files; without it the archive is
downloaded into the cache and its md5 checked. Members are read in memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..registry import datasets
from .archive import read_tar
from .core import ImageData
from .download import cache_dir, fetch

PIXELS = 3 * 32 * 32
MAX_MEMBER = 400_000_000


@dataclass(frozen=True)
class CifarSpec:
    key: str
    archive: str
    md5: str
    folder: str  # the archive's top folder
    train: tuple[str, ...]
    test: tuple[str, ...]
    names_file: str
    label_bytes: int  # label bytes before the pixels; the last one is the label used
    classes: tuple[str, ...]  # used when the names file is absent or does not fit


CIFAR10 = CifarSpec(
    "cifar10", "cifar-10-binary.tar.gz", "c32a1d4ab5d03f1284b67883e8d87530", "cifar-10-batches-bin",
    tuple(f"data_batch_{i}.bin" for i in range(1, 6)), ("test_batch.bin",), "batches.meta.txt", 1,
    ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
)
CIFAR100 = CifarSpec(
    "cifar100", "cifar-100-binary.tar.gz", "03b5dce01913d631647c71ecec9e9cb8", "cifar-100-binary",
    ("train.bin",), ("test.bin",), "fine_label_names.txt", 2, tuple(str(i) for i in range(100)),
)
URL = "https://www.cs.toronto.edu/~kriz/"


def _members(spec: CifarSpec, root: Path | None) -> tuple[dict[str, bytes], str]:
    """The member files' bytes by base name, and where they came from."""
    names = set(spec.train + spec.test + (spec.names_file,))
    if root is None:
        archive = fetch([URL + spec.archive], cache_dir() / spec.key / spec.archive, spec.md5)
    elif root.is_file():
        archive = root
    elif (root / spec.archive).is_file():
        archive = root / spec.archive
    else:
        for folder in (root / spec.folder, root):
            if all((folder / n).is_file() for n in spec.train + spec.test):
                got = {n: (folder / n).read_bytes() for n in names if (folder / n).is_file()}
                return got, str(folder)
        raise UserError(
            f"{spec.key}: no {spec.archive} and no {spec.folder}/ with {', '.join(spec.train + spec.test)} in {root}"
        )
    raw = read_tar(archive, lambda n: n.startswith(spec.folder + "/") and n.rsplit("/", 1)[-1] in names, MAX_MEMBER)
    got = {n.rsplit("/", 1)[-1]: b for n, b in raw.items()}
    missing = [n for n in spec.train + spec.test if n not in got]
    if missing:
        raise UserError(f"{archive}: not a {spec.archive} (missing {spec.folder}/{missing[0]})")
    return got, str(archive)


def parse_records(raw: bytes, spec: CifarSpec, num_classes: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    """uint8 N×3×32×32 images and int64 labels from binary records."""
    rec = spec.label_bytes + PIXELS
    if not raw or len(raw) % rec:
        raise UserError(f"{what}: {len(raw)} bytes is not a whole number of {rec}-byte records (truncated?)")
    arr = np.frombuffer(raw, dtype=np.uint8).reshape(-1, rec)
    y = arr[:, spec.label_bytes - 1].astype(np.int64)
    if int(y.max()) >= num_classes:
        raise UserError(f"{what}: label {int(y.max())} out of range for {num_classes} classes")
    x = arr[:, spec.label_bytes:].reshape(-1, 3, 32, 32).copy()
    return x, y


def _classes(spec: CifarSpec, data: bytes | None) -> tuple[str, ...]:
    if data is not None:
        names = tuple(line.strip() for line in data.decode("utf-8", "replace").splitlines() if line.strip())
        if len(names) == len(spec.classes):
            return names
    return spec.classes


def load_cifar(spec: CifarSpec, root: Path | None) -> tuple[ImageData, ImageData]:
    files, where = _members(spec, root)
    classes = _classes(spec, files.get(spec.names_file))

    def split(names: tuple[str, ...]) -> ImageData:
        parts = [parse_records(files[n], spec, len(classes), f"{where}: {n}") for n in names]
        x = np.concatenate([p[0] for p in parts])
        y = np.concatenate([p[1] for p in parts])
        return ImageData(torch.from_numpy(x), torch.from_numpy(y), classes, hflip=True, name=spec.key)

    return split(spec.train), split(spec.test)


@datasets.register("cifar10")
def cifar10(root: Path | None = None):
    """CIFAR-10, 50k/10k colour 32×32 images of 10 classes (official binary version, md5-checked)."""
    return load_cifar(CIFAR10, root)


@datasets.register("cifar100")
def cifar100(root: Path | None = None):
    """CIFAR-100, 50k/10k colour 32×32 images of 100 fine classes (official binary version, md5-checked)."""
    return load_cifar(CIFAR100, root)
