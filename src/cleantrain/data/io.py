"""Load datasets by key, and save / load data as `.npz` (never with pickle)."""

from __future__ import annotations

import json
import math
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import UserError
from ..registry import datasets
from .core import CLEAN, ImageData, PoisonedData

SCHEMA_VERSION = 1
MAX_CLASSES = 100_000


def load_dataset(key: str, root: str | Path | None = None) -> tuple[ImageData, ImageData]:
    """(train, test) of a registered dataset."""
    loader = datasets.get(key)
    train, test = loader(Path(root) if root is not None else None)
    return train, test


def images_to_nchw(x: np.ndarray, what: str) -> np.ndarray:
    """Accept N×H×W, N×H×W×C or N×C×H×W (C in 1, 3) and return uint8 N×C×H×W."""
    if x.dtype.kind == "f":
        if not np.isfinite(x).all():
            raise UserError(f"{what}: images contain NaN or inf")
        if x.size and (x.min() < 0 or x.max() > 255):
            raise UserError(f"{what}: float images must lie in [0, 1] or [0, 255]")
        x = x * 255.0 if x.size and x.max() <= 1.0 else x
        x = np.rint(x).astype(np.uint8)
    elif x.dtype != np.uint8:
        if x.dtype.kind not in "iu":
            raise UserError(f"{what}: images must be uint8 (or float in [0, 1]), got {x.dtype}")
        if x.size and (x.min() < 0 or x.max() > 255):
            raise UserError(f"{what}: integer images must lie in [0, 255]")
        x = x.astype(np.uint8)
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4:
        if x.shape[1] not in (1, 3) and x.shape[3] in (1, 3):
            x = x.transpose(0, 3, 1, 2)
        if x.shape[1] not in (1, 3):
            raise UserError(f"{what}: images must have 1 or 3 channels, shape {x.shape}")
    else:
        raise UserError(f"{what}: images must be N×H×W, N×H×W×C or N×C×H×W, got shape {x.shape}")
    if x.shape[0] == 0:
        raise UserError(f"{what}: the dataset is empty")
    if x.shape[2] < 4 or x.shape[3] < 4:
        raise UserError(f"{what}: images of {x.shape[2]}×{x.shape[3]} pixels are too small (min 4×4)")
    return np.ascontiguousarray(x)


def max_data_bytes() -> int:
    """The most bytes a data file may expand to: half the machine's memory
    (override with CLEANTRAIN_MAX_DATA_BYTES)."""
    env = os.environ.get("CLEANTRAIN_MAX_DATA_BYTES")
    if env:
        return int(env)
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def _check_npz_members(path: Path) -> None:
    """Read every member's .npy header (not its data) and refuse pickled arrays and
    headers that claim more bytes than the member holds or than memory allows, so that
    a crafted file cannot make `np.load` allocate a vast array."""
    total = 0
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            if not info.filename.endswith(".npy"):
                continue
            with zf.open(info) as f:
                version = np.lib.format.read_magic(f)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, _, dtype = read(f)
            name = info.filename[:-4]
            if dtype.hasobject:
                raise UserError(f"{path}: array {name!r} holds pickled objects, which are refused")
            nbytes = math.prod(shape) * dtype.itemsize
            if nbytes > info.file_size:
                raise UserError(f"{path}: array {name!r} claims shape {shape} ({nbytes:,} bytes) but the file "
                                f"holds {info.file_size:,} (corrupt or truncated)")
            total += nbytes
    if total > max_data_bytes():
        raise UserError(f"{path}: arrays would take {total / 2**30:.1f} GiB, more than the "
                        f"{max_data_bytes() / 2**30:.1f} GiB allowed (CLEANTRAIN_MAX_DATA_BYTES)")


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise UserError(f"data file {str(path)!r} not found (or not a file)")
    if not zipfile.is_zipfile(path):
        raise UserError(f"{path}: not a valid .npz file (not a zip archive of .npy arrays)")
    try:
        _check_npz_members(path)
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except UserError:
        raise
    except ValueError as e:
        if "pickle" in str(e).lower():
            raise UserError(f"{path}: holds pickled objects, which are refused")
        raise UserError(f"{path}: not a valid .npz file ({_first_line(e)})")
    except Exception as e:  # any parser failure on a user's file is bad input, not a bug
        raise UserError(f"{path}: not a valid .npz file (truncated or corrupt: {type(e).__name__}: {_first_line(e)})")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _labels(arr: np.ndarray, n: int, k: int | None, what: str) -> np.ndarray:
    if arr.ndim != 1 or len(arr) != n:
        raise UserError(f"{what}: expected {n} labels, got shape {arr.shape}")
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise UserError(f"{what}: labels contain NaN or inf")
        if not np.all(arr == np.round(arr)):
            raise UserError(f"{what}: labels must be integers")
    elif arr.dtype.kind not in "iu":
        raise UserError(f"{what}: labels must be integers, got {arr.dtype}")
    arr = arr.astype(np.int64)
    if n and arr.min() < 0:
        raise UserError(f"{what}: negative labels")
    if k is not None and n and arr.max() >= k:
        raise UserError(f"{what}: label {int(arr.max())} out of range for {k} classes")
    return arr


def load_npz(path: str | Path, need_labels: bool = True) -> PoisonedData:
    """Read a `.npz` written by `save_npz`, or a plain one with `x`, `y`
    (and optionally `kind`, `original_label`, `classes`). With `need_labels=False`
    a file of images only is accepted (labels all 0)."""
    path = Path(path)
    z = _read_npz(path)
    what = str(path)
    if not need_labels and "y" not in z and "x" in z:
        z["y"] = np.zeros(len(z["x"]) if z["x"].ndim else 0, dtype=np.int64)
    for key in ("x", "y"):
        if key not in z:
            raise UserError(f"{what}: missing array {key!r} (has: {', '.join(sorted(z)) or 'none'})")
    if "schema_version" in z and int(z["schema_version"]) != SCHEMA_VERSION:
        raise UserError(f"{what}: schema version {int(z['schema_version'])} unsupported (want {SCHEMA_VERSION})")
    x = images_to_nchw(z["x"], what)
    n = len(x)
    classes: tuple[str, ...] | None = None
    if "classes" in z:
        if z["classes"].dtype.kind != "U" or z["classes"].ndim != 1:
            raise UserError(f"{what}: 'classes' must be an array of strings")
        classes = tuple(str(c) for c in z["classes"])
    y = _labels(z["y"], n, len(classes) if classes else None, what)
    if classes is None:
        if int(y.max()) + 1 > MAX_CLASSES:
            raise UserError(f"{what}: label {int(y.max())} implies too many classes (max {MAX_CLASSES}); "
                            "add a 'classes' array naming them")
        classes = tuple(str(i) for i in range(max(int(y.max()) + 1, 2)))
    k = len(classes)
    original = _labels(z["original_label"], n, k, what + " original_label") if "original_label" in z else y.copy()
    if "kind" in z:
        kind = _labels(z["kind"], n, 3, what + " kind").astype(np.int8)
    else:
        kind = np.full(n, CLEAN, dtype=np.int8)
    attack: dict[str, Any] = {}
    if "attack_json" in z:
        try:
            attack = json.loads(str(z["attack_json"]))
        except json.JSONDecodeError:
            raise UserError(f"{what}: attack description is not valid JSON")
        if not isinstance(attack, dict):
            raise UserError(f"{what}: attack description must be a JSON object")
    hflip = bool(z["hflip"]) if "hflip" in z else False
    name = str(z["dataset"]) if "dataset" in z else path.stem
    data = ImageData(torch.from_numpy(x), torch.from_numpy(y), classes, hflip=hflip, name=name)
    return PoisonedData(data, torch.from_numpy(original), torch.from_numpy(kind), attack)


def atomic_write(path: str | Path, write) -> Path:
    """Call write(tmp_path) and rename the result into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="." + path.name, suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def save_npz(pd: PoisonedData, path: str | Path) -> Path:
    d = pd.data

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez_compressed(
                f,
                schema_version=np.array(SCHEMA_VERSION),
                x=d.x.cpu().numpy(),
                y=d.y.cpu().numpy(),
                original_label=pd.original.cpu().numpy(),
                kind=pd.kind.cpu().numpy(),
                classes=np.array(d.classes, dtype=str),
                hflip=np.array(d.hflip),
                dataset=np.array(d.name),
                attack_json=np.array(json.dumps(pd.attack)),
            )

    return atomic_write(path, write)


@datasets.register("npz")
def npz_dataset(root: Path | None = None):
    """An .npz file with `x` (uint8) and `y`; give it with --data-root FILE (whole file = train)."""
    if root is None:
        raise UserError("dataset 'npz' needs a file: pass --data FILE.npz")
    pd = load_npz(root)
    return pd.data, pd.data
