"""Helpers shared by the attack files: code-made patterns, image files, blending."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import UserError

MIN_SIDE = 8  # smallest image side an attack accepts
MAX_FILE_SIDE = 4096  # refuse bigger trigger files before decoding them


def check_size(key: str, h: int, w: int) -> None:
    if min(h, w) < MIN_SIDE:
        raise UserError(f"{key}: images must be at least {MIN_SIDE}×{MIN_SIDE} px, got {h}×{w}")


def check_share(key: str, name: str, v: float, low_open: bool = True) -> None:
    """v must lie in (0, 1] (or [0, 1] when low_open is False)."""
    ok = (0 < v <= 1) if low_open else (0 <= v <= 1)
    if not ok:
        raise UserError(f"{key}: {name!r} must lie in {'(0' if low_open else '[0'}, 1], got {v}")


def random_pattern(seed: int, c: int, h: int, w: int, binary: bool = False) -> torch.Tensor:
    """A fixed C×H×W pattern in [0, 1] from `seed` (uniform, or 0/1 when `binary`)."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 2, (c, h, w)) if binary else rng.random((c, h, w))
    return torch.from_numpy(a.astype(np.float32))


def rings(size: int) -> torch.Tensor:
    """size×size concentric square rings, white on the outermost ring (a TrojanNN-like square)."""
    i = torch.arange(size)
    ring = torch.minimum(torch.minimum(i[:, None], i[None, :]), torch.minimum(size - 1 - i[:, None], size - 1 - i[None, :]))
    return (ring % 2 == 0).float()


def checkerboard(size: int) -> torch.Tensor:
    i = torch.arange(size)
    return ((i[:, None] + i[None, :]) % 2 == 0).float()


def blend(x: torch.Tensor, pattern: torch.Tensor, alpha: float | torch.Tensor) -> torch.Tensor:
    """(1 − α)·x + α·pattern; α a number or a tensor broadcastable to x."""
    return (1 - alpha) * x + alpha * pattern.to(x.device)


def paste(x: torch.Tensor, patch: torch.Tensor, top: int, left: int, opacity: float | torch.Tensor = 1.0,
          mask: torch.Tensor | None = None) -> torch.Tensor:
    """Blend a C×h×w patch into x (N×C×H×W) at (top, left) with an opacity and an optional h×w mask."""
    x = x.clone()
    ph, pw = patch.shape[-2:]
    a = torch.as_tensor(opacity, dtype=x.dtype, device=x.device)
    if mask is not None:
        a = a * mask.to(x.device, x.dtype)
    region = x[..., top:top + ph, left:left + pw]
    x[..., top:top + ph, left:left + pw] = (1 - a) * region + a * patch.to(x.device, x.dtype)
    return x


def match_channels(t: torch.Tensor, c: int, where: str) -> torch.Tensor:
    """A C'×h×w pattern converted to c channels (grey = luma of RGB, RGB = repeated grey)."""
    if t.shape[0] == c:
        return t
    if t.shape[0] == 1:
        return t.expand(c, -1, -1).clone()
    if t.shape[0] == 3 and c == 1:
        w = torch.tensor([0.299, 0.587, 0.114], dtype=t.dtype)[:, None, None]
        return (t * w).sum(0, keepdim=True)
    raise UserError(f"{where}: cannot use a {t.shape[0]}-channel image for {c}-channel data")


def load_image(path: str, where: str, max_hw: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Read a PNG/JPEG (Pillow) or .npy (no pickle) file as (C×h×w float in [0, 1], alpha h×w or None).

    `max_hw` rejects a file larger than that, read from the header before decoding."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{where}: file {path!r} not found")
    limit = max_hw or (MAX_FILE_SIDE, MAX_FILE_SIDE)
    if p.suffix.lower() == ".npy":
        a = _load_npy(p, where, limit)
    else:
        a = _load_picture(p, where, limit)
    alpha = None
    if a.shape[0] in (2, 4):  # grey+alpha or RGBA
        a, alpha = a[:-1], a[-1]
    return a, alpha


def _too_big(where: str, path: Path, h: int, w: int, limit: tuple[int, int]) -> None:
    if h > limit[0] or w > limit[1]:
        raise UserError(f"{where}: {path.name} is {h}×{w} px, larger than the {limit[0]}×{limit[1]} allowed")


def _load_picture(p: Path, where: str, limit) -> torch.Tensor:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(p) as im:
            _too_big(where, p, im.height, im.width, limit)
            if im.mode not in ("L", "LA", "RGB", "RGBA"):
                im = im.convert("RGBA" if "A" in im.getbands() or "transparency" in im.info else "RGB")
            a = np.asarray(im)
    except UserError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise UserError(f"{where}: cannot read image {p.name!r}: {e}")
    a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
    return torch.from_numpy(a.astype(np.float32) / 255.0)


def _load_npy(p: Path, where: str, limit) -> torch.Tensor:
    try:
        a = np.load(p, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise UserError(f"{where}: cannot read {p.name!r} as a .npy array (no pickles): {e}")
    if a.ndim == 2:
        a = a[None]
    elif a.ndim == 3 and a.shape[-1] in (1, 2, 3, 4) and a.shape[0] not in (1, 2, 3, 4):
        a = a.transpose(2, 0, 1)
    elif not (a.ndim == 3 and a.shape[0] in (1, 2, 3, 4)):
        raise UserError(f"{where}: {p.name} must be H×W, H×W×C or C×H×W (C ≤ 4), got shape {a.shape}")
    _too_big(where, p, a.shape[1], a.shape[2], limit)
    if a.dtype == np.uint8:
        a = a.astype(np.float32) / 255.0
    elif a.dtype.kind in "fiu" and a.dtype != np.bool_:
        a = a.astype(np.float32)
        if not np.isfinite(a).all() or a.min() < 0 or a.max() > 1:
            raise UserError(f"{where}: {p.name} must hold uint8 or finite values in [0, 1]")
    elif a.dtype == np.bool_:
        a = a.astype(np.float32)
    else:
        raise UserError(f"{where}: {p.name} has unsupported dtype {a.dtype}")
    return torch.from_numpy(np.ascontiguousarray(a))


def resize(t: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """C×h'×w' → C×h×w (bilinear with antialiasing), values kept in [0, 1]."""
    if t.shape[-2:] == (h, w):
        return t
    out = torch.nn.functional.interpolate(t[None], size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    return out[0].clamp(0, 1)


def split_groups(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """A random group id in 0..k−1 for each of n samples, groups as equal as possible."""
    g = np.arange(n) % k
    rng.shuffle(g)
    return g


class WholeClassCap:
    """Mixin for attacks that may poison one class only (clean-label, source-specific).

    When the rate asks for more samples than the candidates hold, all of them are
    poisoned; the description records the rate asked for and the rate used."""

    def poison(self, data, rate, target, seed):
        used = rate
        if isinstance(rate, (int, float)) and 0 < rate < 1 and len(data):
            pool = int(self.candidates(data.y.cpu(), target).sum())
            if pool and round(rate * len(data)) > pool:
                used = pool / len(data)
        pd = super().poison(data, used, target, seed)
        pd.attack["requested_rate"] = rate
        return pd
