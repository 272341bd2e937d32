"""Fashion-MNIST (the default) and MNIST, from IDX files."""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..registry import datasets
from .core import ImageData
from .download import cache_dir, fetch

FASHION_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {
    "train_x": "train-images-idx3-ubyte.gz",
    "train_y": "train-labels-idx1-ubyte.gz",
    "test_x": "t10k-images-idx3-ubyte.gz",
    "test_y": "t10k-labels-idx1-ubyte.gz",
}
# md5 of the official .gz files
FASHION_MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
FASHION_URLS = ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"]
MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
MNIST_URLS = [
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
]


def read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file (optionally gzipped) of unsigned bytes."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise UserError(f"{path}: cannot read IDX file ({e})")
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise UserError(f"{path}: not an IDX file of unsigned bytes")
    ndim = raw[3]
    head = 4 + 4 * ndim
    if len(raw) < head:
        raise UserError(f"{path}: truncated IDX header")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    size = int(np.prod(dims)) if dims else 0
    if len(raw) - head != size:
        raise UserError(f"{path}: IDX body has {len(raw) - head} bytes, header says {size}")
    return np.frombuffer(raw, dtype=np.uint8, offset=head).reshape(dims)


def load_idx_split(folder: Path, classes: tuple[str, ...], hflip: bool, name: str):
    def one(xk: str, yk: str) -> ImageData:
        x = read_idx(folder / FILES[xk])
        y = read_idx(folder / FILES[yk])
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise UserError(f"{folder}: IDX images/labels do not match")
        return ImageData(
            torch.from_numpy(x.copy()).unsqueeze(1),
            torch.from_numpy(y.astype(np.int64)),
            classes,
            hflip=hflip,
            name=name,
        )

    return one("train_x", "train_y"), one("test_x", "test_y")


def _has_all(folder: Path) -> bool:
    return all((folder / f).is_file() for f in FILES.values())


def _apt_install() -> bool:
    if os.environ.get("CLEANTRAIN_NO_APT") or not hasattr(os, "geteuid") or os.geteuid() != 0:
        return False
    if shutil.which("apt-get") is None:
        return False
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "dataset-fashion-mnist"]):
        if subprocess.run(cmd, env=env, capture_output=True).returncode != 0:
            return False
    return _has_all(DEBIAN_DIR)


def _download(folder: Path, urls: list[str], md5: dict[str, str]) -> Path:
    for fname, digest in md5.items():
        fetch([u + fname for u in urls], folder / fname, digest)
    return folder


def fashion_mnist_folder(root: Path | None = None) -> Path:
    """Where the Fashion-MNIST files are: Debian's package, else apt, else the cache."""
    if root is not None:
        if not _has_all(root):
            raise UserError(f"{root}: Fashion-MNIST IDX files not found there")
        return root
    if _has_all(DEBIAN_DIR):
        return DEBIAN_DIR
    if _apt_install():
        return DEBIAN_DIR
    try:
        return _download(cache_dir() / "fashion-mnist", FASHION_URLS, FASHION_MD5)
    except UserError as e:
        raise UserError(
            "Fashion-MNIST not found: run `apt-get install dataset-fashion-mnist` "
            f"(as root) or give internet access for the download ({e})"
        )


@datasets.register("fashion-mnist")
def fashion_mnist(root: Path | None = None):
    """Fashion-MNIST, 60k/10k grey 28×28 images of 10 clothing classes (the default)."""
    return load_idx_split(fashion_mnist_folder(root), FASHION_CLASSES, True, "fashion-mnist")


@datasets.register("mnist")
def mnist(root: Path | None = None):
    """MNIST handwritten digits, 60k/10k grey 28×28 (downloaded with checksums; no flips)."""
    folder = root if root is not None else _download(cache_dir() / "mnist", MNIST_URLS, MNIST_MD5)
    if not _has_all(folder):
        raise UserError(f"{folder}: MNIST IDX files not found there")
    return load_idx_split(folder, tuple(str(i) for i in range(10)), False, "mnist")
