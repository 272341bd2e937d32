"""Work that several defenses of one poisoned set share, computed once.

- `normal_fit` / `normal_model`: a model trained normally (the run's recipe)
  on some data. Vanilla training is one; SS, AC, SCAn and STRIP score samples
  with it; CT uses it as its frozen teacher; NONE starts from it; and every
  detector's retraining on its kept set is one too (so that two defenses that
  keep the same samples share the retrained model).
- `cached_detection`: a detector's result (scores, flags, info), so that
  `auto` reuses the CT run of the same poisoned set.

Each result is keyed by a hash of everything that determines it (the data,
the model key, the recipe, the seed, the epochs, the detector's settings and
clean set). The key also seeds the model's initial weights and the batch
order, so a cached result equals a fresh one and does not depend on which run
computed it first. Results live in memory for the life of the process and,
when the environment variable `CLEANTRAIN_CACHE_DIR` names a folder (a bench
sets it), on disk — safetensors and JSON, never pickle — so that the runs of a
grid share them across processes; a file lock makes a second process wait for
the first instead of computing the same thing twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from safetensors.torch import load_file, save_file

from ..data.core import ImageData
from ..data.io import atomic_write
from ..models.base import Net
from .base import DefenseContext, Detection

CACHE_ENV = "CLEANTRAIN_CACHE_DIR"
# recipe settings that never change a trained model (threads; how often and on what it is evaluated): not in keys
EVAL_ONLY = ("threads", "eval_every", "eval_batch_size", "eval_sample")
# settings added after keys were first written, with the value they had implicitly before: in a key only when set
# otherwise, so that every earlier key (and the initial weights and batch order it seeds) stays the same
LATER = {"cpu_amp": False}
_memory: OrderedDict[str, tuple[dict[str, torch.Tensor], Any]] = OrderedDict()
_MEMORY_ITEMS = 6  # results kept in memory (a few MB each)
_reused = [0.0, 0.0]  # wall and CPU seconds of computation this process took from the cache instead of doing it


def reused_seconds() -> float:
    """Seconds that the cached results this process used took to compute (a run's cost counts them)."""
    return _reused[0]


def reused_cpu_seconds() -> float:
    """CPU seconds of the same (entries written before CPU time was recorded count their wall time)."""
    return _reused[1]


def _hash_data(h, data: ImageData) -> None:
    h.update(data.x.detach().cpu().contiguous().numpy().tobytes())
    h.update(data.y.detach().cpu().contiguous().numpy().tobytes())


def _meta(ctx: DefenseContext) -> dict[str, Any]:
    recipe = {k: v for k, v in asdict(ctx.trainer.s).items()
              if k not in EVAL_ONLY and not (k in LATER and v == LATER[k])}
    return {"model": ctx.model_key, "train": recipe, "seed": ctx.seed, "device": ctx.trainer.device.type}


def model_key(train: ImageData, ctx: DefenseContext, epochs: int) -> str:
    """A hash of everything that determines the normally trained model."""
    h = hashlib.sha256(b"normal")
    _hash_data(h, train)
    h.update(json.dumps({**_meta(ctx), "epochs": epochs, "hflip": train.hflip}, sort_keys=True, default=str).encode())
    return h.hexdigest()[:32]


def detection_key(name: str, train: ImageData, ctx: DefenseContext, settings: Any) -> str:
    """A hash of everything that determines a detector's result."""
    h = hashlib.sha256(b"detect")
    _hash_data(h, train)
    if ctx.clean is not None:
        _hash_data(h, ctx.clean)
    opts = asdict(settings) if is_dataclass(settings) else settings
    meta = {**_meta(ctx), "detector": name, "settings": opts, "hflip": train.hflip, "rate": ctx.expected_rate}
    h.update(json.dumps(meta, sort_keys=True, default=str).encode())
    return h.hexdigest()[:32]


def _root() -> Path | None:
    root = os.environ.get(CACHE_ENV)
    return Path(root) if root else None


@contextmanager
def _locked(name: str) -> Iterator[None]:
    """Hold an exclusive lock on `name` in the disk cache (nothing without one)."""
    root = _root()
    if root is None:
        yield
        return
    import fcntl

    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{name}.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _load(name: str) -> tuple[dict[str, torch.Tensor], Any] | None:
    if name in _memory:
        _memory.move_to_end(name)
        return _memory[name]
    root = _root()
    if root is None or not (root / f"{name}.safetensors").is_file() or not (root / f"{name}.json").is_file():
        return None
    item = (load_file(str(root / f"{name}.safetensors")), json.loads((root / f"{name}.json").read_text()))
    _remember(name, item)
    return item


def _remember(name: str, item: tuple[dict[str, torch.Tensor], Any]) -> None:
    _memory[name] = item
    _memory.move_to_end(name)
    while len(_memory) > _MEMORY_ITEMS:
        _memory.popitem(last=False)


def _keep(name: str, tensors: dict[str, torch.Tensor], meta: Any) -> None:
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    _remember(name, (tensors, meta))
    root = _root()
    if root is not None:  # tensors first: the JSON's presence marks a complete entry
        atomic_write(root / f"{name}.safetensors", lambda tmp: save_file(tensors, tmp))
        text = json.dumps(meta, default=str)
        atomic_write(root / f"{name}.json", lambda tmp: Path(tmp).write_text(text))


@contextmanager
def _own_generator(ctx: DefenseContext, seed: int) -> Iterator[None]:
    """Run the Trainer with a generator of its own (seeded by the key), leaving the run's untouched."""
    tr = ctx.trainer
    saved = tr.gen
    tr.gen = torch.Generator(device="cpu").manual_seed(seed)
    try:
        yield
    finally:
        tr.gen = saved


def _once(name: str, compute: Callable[[], tuple[dict[str, torch.Tensor], dict[str, Any]]]
          ) -> tuple[dict[str, torch.Tensor], dict[str, Any], bool]:
    """(tensors, meta, hit): the cache entry `name`, or `compute()`'s, kept with what it cost (wall and CPU
    seconds, counting the cached work it used in turn). A hit adds that cost to `reused_seconds`."""
    with _locked(name):
        hit = _load(name)
        if hit is not None:
            tensors, meta = hit
            if isinstance(meta, list):  # a normal model's entry written before costs were recorded
                meta = {"history": meta, "seconds": sum(float(r.get("seconds", 0)) for r in meta)}
            seconds = float(meta.get("seconds", (meta.get("info") or {}).get("seconds", 0)))
            _reused[0] += seconds
            _reused[1] += float(meta.get("cpu_seconds", seconds))  # older entries: wall time (one thread)
            return tensors, meta, True
        t0, c0, r0 = time.perf_counter(), time.process_time(), list(_reused)
        tensors, meta = compute()
        meta = {**meta, "seconds": round(time.perf_counter() - t0 + _reused[0] - r0[0], 3),
                "cpu_seconds": round(time.process_time() - c0 + _reused[1] - r0[1], 3)}
        _keep(name, tensors, meta)
        return tensors, meta, False


def normal_fit(train: ImageData, ctx: DefenseContext, epochs: int | None = None,
               desc: str = "normal", evaluate: bool = True) -> tuple[Net, list[dict[str, Any]]]:
    """A model trained normally (the recipe, with augmentation) on `train`, and its per-epoch history.

    Trained once per key; its initial weights and batch order come from the key. `evaluate=False` skips the
    per-epoch CA/ASR (it does not change the model, so it is not in the key)."""
    epochs = ctx.trainer.s.epochs if epochs is None else epochs
    key = model_key(train, ctx, epochs)
    seed = int(key[:12], 16)
    model = ctx.new_model(init_seed=seed)

    def compute():
        ctx.log(f"{desc}: training {epochs} epochs")
        with _own_generator(ctx, seed):
            history = ctx.trainer.fit(model, train, epochs=epochs, desc=desc, evaluate=evaluate).history
        return model.state_dict(), {"history": history}

    state, meta, hit = _once(f"normal-{key}", compute)
    if not hit:
        return model, meta["history"]
    # a zero-epoch fit keeps the Trainer's stage numbering (and so its resume) the same as on a miss
    ctx.trainer.fit(model, train, epochs=0, evaluate=False, desc=f"{desc} (cached)")
    model.load_state_dict({k: v.to(ctx.trainer.device) for k, v in state.items()})
    history = [dict(row, cached=True) for row in meta["history"]]  # marked: trained elsewhere, not again
    ctx.trainer.history.extend(history)
    ctx.log(f"{desc}: normally trained model cached ({key[:8]})")
    return model, history


def normal_model(train: ImageData, ctx: DefenseContext, epochs: int | None = None) -> Net:
    """`normal_fit`'s model, in eval mode."""
    model, _ = normal_fit(train, ctx, epochs)
    model.eval()
    return model


def cached_tensors(kind: str, name: str, train: ImageData, ctx: DefenseContext, settings: Any,
                   compute: Callable[[], tuple[dict[str, torch.Tensor], dict[str, Any]]]
                   ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """`compute()` -> (tensors, info), computed once per key (`kind`, `name`, the data, the clean set, the
    recipe, `settings`). A hit advances the Trainer's stage counter (and the context's model counter) by what the
    computation used, so that what follows (and its resume) is numbered as on a miss."""
    key = f"{kind}-{name}-{detection_key(name, train, ctx, settings)}"

    def counted():
        stage0, models0 = ctx.trainer.stage, ctx._models_made
        tensors, info = compute()
        # info as a hit reads it back (JSON types), so that a miss returns exactly what a hit would
        return tensors, {"stages": ctx.trainer.stage - stage0, "models": ctx._models_made - models0,
                         "info": json.loads(json.dumps(info, default=str))}

    tensors, meta, hit = _once(key, counted)
    if not hit:
        return tensors, dict(meta["info"])
    ctx.trainer.stage += int(meta["stages"])
    ctx._models_made += int(meta["models"])
    ctx.log(f"{name}: {kind} cached ({key[-32:-24]})")
    return {k: v.clone() for k, v in tensors.items()}, dict(meta["info"])


def cached_detection(name: str, train: ImageData, ctx: DefenseContext, settings: Any,
                     detect: Callable[[ImageData, DefenseContext, Any], Detection]) -> Detection:
    """`detect(train, ctx, settings)`, computed once per key (`cached_tensors`)."""

    def compute():
        det = detect(train, ctx, settings)
        return {"scores": det.scores.float(), "flagged": det.flagged.bool()}, det.info

    tensors, info = cached_tensors("detect", name, train, ctx, settings, compute)
    return Detection(tensors["scores"], tensors["flagged"].bool(), info)


def per_class(labels: torch.Tensor, num_classes: int):
    """Yield (class, row indices) for every class that has samples (indices on the CPU)."""
    labels = labels.cpu()
    for c in range(num_classes):
        idx = torch.nonzero(labels == c).flatten()
        if len(idx):
            yield c, idx
