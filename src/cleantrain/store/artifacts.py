"""Model files (safetensors with the architecture in the metadata), JSON and CSV, written atomically."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..data.io import atomic_write
from ..errors import UserError
from ..models.base import Net, make_model

PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".bin", ".ckpt")


def save_model(model: Net, path: str | Path, model_key: str, image_size: int, classes: tuple[str, ...]) -> Path:
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    meta = {
        "format": "cleantrain-model",
        "model": model_key,
        "in_channels": str(model.in_channels),
        "num_classes": str(model.num_classes),
        "image_size": str(image_size),
        "classes": json.dumps(list(classes)),
    }
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def _read_meta(path: Path) -> dict[str, str]:
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ValueError("file too short")
            n = int.from_bytes(head, "little")
            if n <= 0 or n > 100_000_000:
                raise ValueError("bad header length")
            header = json.loads(f.read(n))
        return header.get("__metadata__") or {}
    except (ValueError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: not a safetensors model file ({e})")


def load_model(path: str | Path, allow_pickle_weights: bool = False) -> tuple[Net, dict[str, Any]]:
    """Load a model written by cleantrain. Pickle-based files are refused unless
    `allow_pickle_weights`, and even then read with `torch.load(weights_only=True)`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"model file {str(path)!r} not found")
    if path.suffix.lower() in PICKLE_SUFFIXES:
        if not allow_pickle_weights:
            raise UserError(
                f"{path}: pickle-based model files can run code when loaded and are refused; "
                "convert to safetensors, or pass --allow-pickle-weights to read it with torch.load(weights_only=True)"
            )
        return _load_pickled(path)
    meta = _read_meta(path)
    if meta.get("format") != "cleantrain-model":
        raise UserError(f"{path}: safetensors file without cleantrain model metadata")
    try:
        info = {
            "model": meta["model"],
            "in_channels": int(meta["in_channels"]),
            "num_classes": int(meta["num_classes"]),
            "image_size": int(meta["image_size"]),
            "classes": json.loads(meta["classes"]),
        }
        tensors = load_file(str(path))
    except (KeyError, ValueError, SafetensorError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: corrupt model file ({e})")
    return _build(path, info, tensors), info


def _build(path: Path, info: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Net:
    c = info["in_channels"]
    model = make_model(info["model"], c, info["num_classes"], info["image_size"], [0.5] * c, [0.5] * c)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise UserError(f"{path}: weights do not fit model {info['model']!r} ({first[1].strip() if len(first) > 1 else first[0]})")
    model.eval()
    return model


def _load_pickled(path: Path) -> tuple[Net, dict[str, Any]]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # weights_only raises UnpicklingError and others
        raise UserError(f"{path}: refused by torch.load(weights_only=True): {str(e).splitlines()[0]}")
    if not isinstance(obj, dict) or "state_dict" not in obj or "info" not in obj:
        raise UserError(f"{path}: expected a dict with 'state_dict' and 'info' (as cleantrain would export)")
    info = obj["info"]
    return _build(path, info, obj["state_dict"]), info


def write_json(path: str | Path, obj: Any) -> Path:
    text = json.dumps(obj, indent=2, sort_keys=False, default=_jsonable)
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text + "\n"))


def _jsonable(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return v.tolist()
    if hasattr(v, "item"):
        return v.item()
    if isinstance(v, Path):
        return str(v)
    raise TypeError(f"not JSON serialisable: {type(v).__name__}")


def write_csv(path: str | Path, header: list[str], rows: list[list[Any]]) -> Path:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    return atomic_write(path, lambda tmp: Path(tmp).write_text(buf.getvalue()))
