"""One normally trained model per poisoned set, shared by the detectors that need one.

SS, AC, SCAn and STRIP score samples with a model trained normally on D, and
CT needs one as its frozen teacher. `normal_model` trains it once through the
context's Trainer and keeps its weights, keyed by a hash of the training data,
the model key, the training recipe, the seed and the epoch count: in memory
for the life of the process and, when the environment variable
`CLEANTRAIN_CACHE_DIR` names a folder, on disk as safetensors, so that the
detectors of a benchmark grid share one model across processes too.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..data.core import ImageData
from ..data.io import atomic_write
from ..models.base import Net
from .base import DefenseContext

CACHE_ENV = "CLEANTRAIN_CACHE_DIR"
_memory: OrderedDict[str, dict[str, torch.Tensor]] = OrderedDict()
_MEMORY_ITEMS = 4  # models kept in memory (a few MB each)


def model_key(train: ImageData, ctx: DefenseContext, epochs: int) -> str:
    """A hash of everything that determines the normally trained model."""
    h = hashlib.sha256()
    h.update(train.x.detach().cpu().contiguous().numpy().tobytes())
    h.update(train.y.detach().cpu().contiguous().numpy().tobytes())
    recipe = {k: v for k, v in asdict(ctx.trainer.s).items() if k not in ("threads", "eval_every", "eval_batch_size")}
    meta = {"model": ctx.model_key, "train": recipe, "seed": ctx.seed, "epochs": epochs,
            "device": ctx.trainer.device.type, "hflip": train.hflip}
    h.update(json.dumps(meta, sort_keys=True, default=str).encode())
    return h.hexdigest()[:32]


def _disk_path(key: str) -> Path | None:
    root = os.environ.get(CACHE_ENV)
    return Path(root) / f"normal-{key}.safetensors" if root else None


def normal_model(train: ImageData, ctx: DefenseContext, epochs: int | None = None) -> Net:
    """A model trained normally (the recipe, with augmentation) on `train`; trained once per key."""
    epochs = ctx.trainer.s.epochs if epochs is None else epochs
    key = model_key(train, ctx, epochs)
    model = ctx.new_model()
    state = _memory.get(key)
    path = _disk_path(key)
    if state is None and path is not None and path.is_file():
        state = load_file(str(path))
    if state is not None:
        # a zero-epoch fit keeps the Trainer's stage numbering (and so its resume) the same as on a miss
        ctx.trainer.fit(model, train, epochs=0, evaluate=False, desc="normal (cached)")
        model.load_state_dict({k: v.to(ctx.trainer.device) for k, v in state.items()})
        ctx.log(f"normally trained model: cached ({key[:8]})")
    else:
        ctx.log(f"normally trained model: training {epochs} epochs")
        ctx.trainer.fit(model, train, epochs=epochs, evaluate=False, desc="normal")
        state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, lambda tmp: save_file(state, tmp))
    _memory[key] = state
    _memory.move_to_end(key)
    while len(_memory) > _MEMORY_ITEMS:
        _memory.popitem(last=False)
    model.eval()
    return model


def per_class(labels: torch.Tensor, num_classes: int):
    """Yield (class, row indices) for every class that has samples (indices on the CPU)."""
    labels = labels.cpu()
    for c in range(num_classes):
        idx = torch.nonzero(labels == c).flatten()
        if len(idx):
            yield c, idx
