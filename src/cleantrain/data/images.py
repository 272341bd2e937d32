"""Decode image files with Pillow into uint8 arrays, with errors that name the file."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import UserError

MAX_PIXELS = 50_000_000  # per image; larger files are refused before decoding
PIL_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def open_image(data: bytes, name: str) -> Image.Image:
    """Open and fully decode one image (a truncated or corrupt file is a UserError)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w < 1 or h < 1 or w * h > MAX_PIXELS:
                raise UserError(f"{name}: image of {w}×{h} pixels refused (limit {MAX_PIXELS} pixels)")
            img.load()
    except UserError:
        raise
    except (*PIL_ERRORS, Image.DecompressionBombWarning) as e:
        raise UserError(f"{name}: unreadable or corrupt image ({e})")
    return img


def image_size(data: bytes, name: str) -> tuple[int, int]:
    """(width, height) from the header only."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.size
    except PIL_ERRORS as e:
        raise UserError(f"{name}: unreadable or corrupt image ({e})")


def to_array(img: Image.Image, size: tuple[int, int] | None, rgb: bool) -> np.ndarray:
    """uint8 C×H×W (C = 3 if rgb else 1), resized to `size` = (width, height)
    with Pillow's antialiased bilinear filter when it differs."""
    img = img.convert("RGB" if rgb else "L")
    if size is not None and img.size != size:
        img = img.resize(size, Image.Resampling.BILINEAR)
    a = np.asarray(img, dtype=np.uint8)
    return a.transpose(2, 0, 1) if rgb else a[None]

