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
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
        meta = header.get("__metadata__") or {}
        if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
            raise ValueError("metadata is not a mapping of strings")
        return meta
    except (ValueError, UnicodeDecodeError, json.JSONDecodeError, RecursionError, OSError) as e:
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


def _check_info(path: Path, info: Any) -> None:
    """The architecture a model file claims must be one we can build."""
    ok = (isinstance(info, dict) and isinstance(info.get("model"), str)
          and info.get("in_channels") in (1, 3)
          and isinstance(info.get("num_classes"), int) and 2 <= info["num_classes"] <= 100_000
          and isinstance(info.get("image_size"), int) and 1 <= info["image_size"] <= 100_000
          and isinstance(info.get("classes"), list) and len(info["classes"]) == info["num_classes"])
    if not ok:
        raise UserError(f"{path}: corrupt model file (architecture description {info!r:.200} is invalid)")


def _build(path: Path, info: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Net:
    _check_info(path, info)
    if not isinstance(tensors, dict) or not all(isinstance(v, torch.Tensor) for v in tensors.values()):
        raise UserError(f"{path}: corrupt model file (weights are not a mapping of tensors)")
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
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"{path}: refused by torch.load(weights_only=True): {first}")
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
