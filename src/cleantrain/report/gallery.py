"""Example images of an attack: clean next to triggered, a few per class, as PNGs.

One PNG per class, one row per example. Columns: the clean image, the
training-time poison (`stamp`), the training-time cover sample where the
attack has covers (`stamp_cover`, label kept), the test-time trigger
(`apply`), and |test-time − clean| amplified ×5 so subtle triggers (warps,
low-opacity blends) can be seen. `examples.json` lists the files and columns.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from ..attacks.base import Attack, to_uint8, to_unit
from ..data.core import ImageData
from ..data.io import atomic_write
from ..errors import UserError
from ..store.artifacts import write_json

DIFF_GAIN = 5.0  # amplification of the |triggered − clean| column


def _columns(attack: Attack, x: torch.Tensor, rng: np.random.Generator) -> list[tuple[str, torch.Tensor]]:
    u = to_unit(x)
    cols = [("clean", x), ("poison (training)", to_uint8(attack.stamp(u, rng)))]
    if attack.cover_count(1000) > 0:
        cols.append(("cover (training, label kept)", to_uint8(attack.stamp_cover(u, rng))))
    test = attack.apply(x)
    cols.append(("triggered (test)", test))
    cols.append((f"|test - clean| x{DIFF_GAIN:g}", to_uint8((to_unit(test) - u).abs() * DIFF_GAIN)))
    return cols


def _grid(cols: list[torch.Tensor], scale: int, gap: int = 2) -> np.ndarray:
    """Rows = examples, columns = variants; uint8 H×W(×3) with grey gaps."""
    n, c, h, w = cols[0].shape
    H, W = h * scale, w * scale
    out = np.full((n * (H + gap) + gap, len(cols) * (W + gap) + gap, c), 128, np.uint8)
    for j, col in enumerate(cols):
        big = col.repeat_interleave(scale, 2).repeat_interleave(scale, 3).permute(0, 2, 3, 1).numpy()
        for i in range(n):
            top, left = gap + i * (H + gap), gap + j * (W + gap)
            out[top:top + H, left:left + W] = big[i]
    return out[..., 0] if c == 1 else out


def _save_png(path: Path, a: np.ndarray) -> Path:
    from PIL import Image

    return atomic_write(path, lambda tmp: Image.fromarray(a).save(tmp, format="PNG"))


def write_examples(clean: ImageData, attack: Attack, out: str | Path, *, target: int = 0, per_class: int = 3,
                   seed: int = 0, scale: int | None = None) -> list[Path]:
    """Write `class<k>_<name>.png` (clean vs triggered, `per_class` rows) for each class into `out`."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"examples folder {str(out)!r} exists and is not a folder")
    if per_class < 1:
        raise UserError("examples: need at least one image per class")
    data = clean.to("cpu")
    scale = scale or max(1, 96 // max(data.shape[1:]))
    rng = np.random.default_rng(seed)
    poisoned_classes = attack.candidates(torch.arange(data.num_classes), target)
    files, index = [], []
    for k, name in enumerate(data.classes):
        idx = torch.nonzero(data.y == k).flatten().numpy()
        if len(idx) == 0:
            continue
        pick = torch.from_numpy(np.sort(rng.choice(idx, min(per_class, len(idx)), replace=False)))
        cols = _columns(attack, data.x[pick], rng)
        safe = re.sub(r"[^A-Za-z0-9_-]+", "_", str(name)).strip("_")[:40] or "class"
        path = _save_png(out / f"class{k}_{safe}.png", _grid([c for _, c in cols], scale))
        files.append(path)
        index.append({"file": path.name, "class": k, "name": str(name), "n": len(pick),
                      "poisoned_in_training": bool(poisoned_classes[k])})
    write_json(out / "examples.json", {"attack": attack.key, "target": target, "scale": scale,
                                       "columns": [c for c, _ in _columns(attack, data.x[:1], rng)],
                                       "classes": index})
    return files
