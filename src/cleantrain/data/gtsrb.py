"""GTSRB (German Traffic Sign Recognition Benchmark) from the official zips.

- `GTSRB_Final_Training_Images.zip`: `GTSRB/Final_Training/Images/<class>/`
  with `.ppm` images and a `GT-<class>.csv` annotation per class folder;
- `GTSRB_Final_Test_Images.zip`: `GTSRB/Final_Test/Images/*.ppm`;
- `GTSRB_Final_Test_GT.zip`: `GT-final_test.csv` with the test labels.
The CSVs are `;`-separated with a header naming `Filename` and `ClassId`.

Labels come from the CSVs. Each whole image is resized to 32×32 with Pillow
(bilinear, antialiased), as in the backdoor literature; the annotated ROI is
not cropped. Traffic signs must not be mirrored, so `hflip=False`.

`--data-root DIR` names a folder holding the three zips (no download);
without it they are downloaded into the cache with their md5 checked, and
the decoded arrays are cached beside them as an `.npz` (no pickle).
Members are read in memory, never extracted.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..registry import datasets
from .archive import read_zip
from .core import ImageData
from .download import cache_dir, fetch
from .images import open_image, to_array
from .io import atomic_write

SIZE = 32
URL = "https://sid.erda.dk/public/archives/daaeac0d7ce1152aea9b61d9f1e19370/"
TRAIN_ZIP, TEST_ZIP, GT_ZIP = "GTSRB_Final_Training_Images.zip", "GTSRB_Final_Test_Images.zip", "GTSRB_Final_Test_GT.zip"
MD5 = {
    TRAIN_ZIP: "f33fd80ac59bff73c82d25ab499e03a3",
    TEST_ZIP: "c7e4e6327067d32654124b0fe9e82185",
    GT_ZIP: "fe31e9c9270bbcd7b84b7f21a9d9d9e5",
}
MAX_MEMBER = 20_000_000
CACHE_VERSION = 1
CLASSES = (
    "Speed limit (20km/h)", "Speed limit (30km/h)", "Speed limit (50km/h)", "Speed limit (60km/h)",
    "Speed limit (70km/h)", "Speed limit (80km/h)", "End of speed limit (80km/h)", "Speed limit (100km/h)",
    "Speed limit (120km/h)", "No passing", "No passing for vehicles over 3.5 t", "Right-of-way at the next intersection",
    "Priority road", "Yield", "Stop", "No vehicles", "Vehicles over 3.5 t prohibited", "No entry",
    "General caution", "Dangerous curve to the left", "Dangerous curve to the right", "Double curve",
    "Bumpy road", "Slippery road", "Road narrows on the right", "Road work", "Traffic signals", "Pedestrians",
    "Children crossing", "Bicycles crossing", "Beware of ice/snow", "Wild animals crossing",
    "End of all speed and passing limits", "Turn right ahead", "Turn left ahead", "Ahead only",
    "Go straight or right", "Go straight or left", "Keep right", "Keep left", "Roundabout mandatory",
    "End of no passing", "End of no passing by vehicles over 3.5 t",
)


def read_gt_csv(data: bytes, what: str) -> list[tuple[str, int]]:
    """(Filename, ClassId) rows of a GTSRB annotation file."""
    try:
        rows = list(csv.DictReader(io.StringIO(data.decode("utf-8-sig")), delimiter=";"))
    except (UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"{what}: not a GTSRB annotation CSV ({e})")
    out = []
    for i, row in enumerate(rows, start=2):
        try:
            name, label = row["Filename"].strip(), int(row["ClassId"])
        except (KeyError, TypeError, ValueError, AttributeError):
            raise UserError(f"{what}: line {i} lacks a Filename and an integer ClassId")
        if not 0 <= label < len(CLASSES):
            raise UserError(f"{what}: line {i}: ClassId {label} out of range 0..{len(CLASSES) - 1}")
        out.append((name, label))
    return out


def _decode(items: list[tuple[str, int]], images: dict[str, bytes], what: str):
    """Decode the annotated (member, label) pairs into 3×32×32 uint8 images."""
    x = np.empty((len(items), 3, SIZE, SIZE), dtype=np.uint8)
    y = np.empty(len(items), dtype=np.int64)
    for i, (key, label) in enumerate(items):
        if key not in images:
            raise UserError(f"{what}: annotated image {key} is missing")
        x[i] = to_array(open_image(images[key], f"{what}: {key}"), (SIZE, SIZE), rgb=True)
        y[i] = label
    return x, y


def _train(path: Path) -> tuple[np.ndarray, np.ndarray]:
    files = read_zip(path, lambda n: n.lower().endswith((".ppm", ".csv")), MAX_MEMBER)
    csvs = sorted(n for n in files if n.rsplit("/", 1)[-1].startswith("GT-") and n.endswith(".csv"))
    if not csvs:
        raise UserError(f"{path}: no GT-*.csv annotation files (is it {TRAIN_ZIP}?)")
    items = []
    for name in csvs:  # each class folder's CSV names the images beside it
        folder = name.rsplit("/", 1)[0] + "/" if "/" in name else ""
        items += [(folder + fname, label) for fname, label in read_gt_csv(files[name], f"{path}: {name}")]
    return _decode(items, files, str(path))


def _test(images_zip: Path, gt_zip: Path) -> tuple[np.ndarray, np.ndarray]:
    gt = read_zip(gt_zip, lambda n: n.lower().endswith(".csv"), MAX_MEMBER)
    if len(gt) != 1:
        raise UserError(f"{gt_zip}: expected one annotation CSV (GT-final_test.csv), found {len(gt)}")
    (gt_name, gt_bytes), = gt.items()
    rows = read_gt_csv(gt_bytes, f"{gt_zip}: {gt_name}")
    files = read_zip(images_zip, lambda n: n.lower().endswith(".ppm"), MAX_MEMBER)
    by_base = {n.rsplit("/", 1)[-1]: b for n, b in files.items()}
    return _decode(rows, by_base, str(images_zip))


def _cached(zips: dict[str, Path], cache: Path | None):
    if cache is not None and cache.is_file():
        try:
            with np.load(cache, allow_pickle=False) as z:
                if int(z["version"]) == CACHE_VERSION:
                    return z["x_train"], z["y_train"], z["x_test"], z["y_test"]
        except (OSError, ValueError, KeyError, EOFError):
            pass  # rebuilt below
    x_tr, y_tr = _train(zips[TRAIN_ZIP])
    x_te, y_te = _test(zips[TEST_ZIP], zips[GT_ZIP])
    if cache is not None:
        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:
                np.savez(f, version=np.array(CACHE_VERSION), x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te)

        atomic_write(cache, write)
    return x_tr, y_tr, x_te, y_te


@datasets.register("gtsrb")
def gtsrb(root: Path | None = None):
    """GTSRB traffic signs, 39,209/12,630 colour images of 43 classes resized to 32×32 (no flips)."""
    if root is None:
        folder = cache_dir() / "gtsrb"
        zips = {n: fetch([URL + n], folder / n, md5) for n, md5 in MD5.items()}
        cache = folder / f"gtsrb-{SIZE}px-v{CACHE_VERSION}.npz"
    else:
        missing = [n for n in MD5 if not (root / n).is_file()]
        if missing:
            raise UserError(f"gtsrb: {root} lacks {', '.join(missing)} (the official zips)")
        zips, cache = {n: root / n for n in MD5}, None
    x_tr, y_tr, x_te, y_te = _cached(zips, cache)
    train = ImageData(torch.from_numpy(x_tr), torch.from_numpy(y_tr), CLASSES, hflip=False, name="gtsrb")
    test = ImageData(torch.from_numpy(x_te), torch.from_numpy(y_te), CLASSES, hflip=False, name="gtsrb")
    return train, test
