"""The Trainer: every epoch of every method runs through `Trainer.fit`.

Methods differ by arguments, not by loops of their own:
- `loss(logits, labels, index) -> scalar` replaces cross-entropy (ABL's LGA,
  gradient ascent, CT's weighted loss);
- a subset is just another `ImageData`;
- `lr`, `schedule`, `optimizer` (to continue with earlier momentum buffers),
  `augment`, and `bn` ("train", "eval" = use and keep running statistics,
  "frozen" = normalise with batch statistics but leave the running ones
  unchanged) are arguments.
`fit_steps` runs a fixed number of steps over any stream of batches (CT's
mixed clean/poisoned batches). The passes over a whole set that defenses use
to rank samples (`logits`, `per_sample_loss`, `features`, `activations`) are
here too, batched and without augmentation.

With a checkpoint folder every fit call is a numbered stage; after each
epoch the model, the optimiser and the random state are saved (safetensors +
JSON), and a rerun with `resume=True` skips finished stages and continues a
partial one.
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from ..data.batches import Augment, batches, to_float
from ..data.core import ImageData
from ..data.io import atomic_write
from . import dist
from .settings import TrainSettings, lr_factor

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
Evaluator = Callable[[nn.Module], dict[str, float]]


def cross_entropy(label_smoothing: float = 0.0) -> LossFn:
    def loss(logits: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, y, label_smoothing=label_smoothing)

    return loss


@dataclass
class Fit:
    """What a fit call leaves: the optimiser (to continue with) and per-epoch history."""

    optimizer: torch.optim.Optimizer
    history: list[dict[str, Any]] = field(default_factory=list)


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512_BF16 or AMX), where `cpu_amp` pays off."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # a torch without these probes: assume not
        return False


class Trainer:
    def __init__(
        self,
        settings: TrainSettings | None = None,
        device: torch.device | str = "cpu",
        seed: int = 0,
        *,
        progress: bool | None = None,
        evaluator: Evaluator | None = None,
        checkpoint_dir: str | Path | None = None,
        resume: bool = False,
    ):
        self.s = settings or TrainSettings()
        self.device = torch.device(device)
        self.seed = seed
        self.gen = torch.Generator(device="cpu").manual_seed(seed)
        self.progress = sys.stderr.isatty() if progress is None else progress
        self.evaluator = evaluator
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        self.resume = resume
        self.stage = 0
        self.history: list[dict[str, Any]] = []  # every epoch of every stage, in order
        # wall time spent by earlier processes on the stages a resumed run skips (see `elapsed`)
        self.clock0, self.cpu0 = time.perf_counter(), time.process_time()
        self.carried_seconds = self.carried_cpu_seconds = 0.0
        torch.set_num_threads(self.s.threads or dist.cpu_threads())
        if self.s.cpu_amp and self.device.type == "cpu" and not cpu_has_bf16():
            warnings.warn("cpu_amp: this CPU has no native bfloat16 (AVX512_BF16 / AMX); training will be slower, "
                          "not faster", stacklevel=2)
        if dist.init():  # under torchrun: this rank's GPU; progress bars on rank 0 only
            self.device = dist.local_device(self.device)
            self.progress = self.progress and dist.is_main()

    # ------------------------------------------------------------------ setup
    def prepare(self, model: nn.Module) -> nn.Module:
        model.to(self.device)
        if self.s.channels_last:
            model.to(memory_format=torch.channels_last)
        return model

    def new_optimizer(self, model: nn.Module, lr: float | None = None) -> torch.optim.Optimizer:
        lr = lr if lr is not None else self.s.lr
        params = [p for p in model.parameters() if p.requires_grad]
        if self.s.optimizer == "adamw":
            return torch.optim.AdamW(params, lr=lr, weight_decay=self.s.weight_decay)
        return torch.optim.SGD(params, lr=lr, momentum=self.s.momentum,
                               nesterov=self.s.nesterov and self.s.momentum > 0,
                               weight_decay=self.s.weight_decay)

    def _autocast(self):
        if self.s.amp and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        if self.s.cpu_amp and self.device.type == "cpu":
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return nullcontext()

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        if self.s.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    @contextmanager
    def _bn_mode(self, model: nn.Module, bn: str):
        """Set BatchNorm layers for a training stage and restore them after."""
        bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        saved = [(m.training, m.momentum) for m in bns]
        for m in bns:
            if bn == "eval":
                m.eval()
            elif bn == "frozen":
                m.train()
                m.momentum = 0.0  # running = (1 - 0) * running + 0 * batch
        try:
            yield
        finally:
            for m, (tr, mom) in zip(bns, saved):
                m.train(tr)
                m.momentum = mom

    # -------------------------------------------------------------- training
    def fit(
        self,
        model: nn.Module,
        data: ImageData,
        *,
        epochs: int | None = None,
        loss: LossFn | None = None,
        lr: float | None = None,
        schedule: str | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        augment: bool = True,
        bn: str = "train",
        batch_size: int | None = None,
        desc: str = "train",
        evaluate: bool = True,
        on_epoch: Callable[[int, nn.Module], dict[str, float] | None] | None = None,
    ) -> Fit:
        """Train `model` on `data` for `epochs` epochs (the recipe's by default)."""
        s = self.s
        epochs = s.epochs if epochs is None else epochs
        bs = batch_size or s.batch_size
        loss = loss or cross_entropy(s.label_smoothing)
        schedule = schedule or s.schedule
        self.prepare(model)
        data = data.to(self.device)
        opt = optimizer if optimizer is not None else self.new_optimizer(model, lr)
        base_lr = lr if lr is not None else (opt.param_groups[0].get("initial_lr") or s.lr)
        for g in opt.param_groups:
            g["initial_lr"] = base_lr
        aug = Augment(s.crop_pad, s.hflip, s.cutout) if augment else None
        steps_per_epoch = max(1, -(-len(data) // bs))
        if dist.active():  # each rank: ceil(N / world) samples in batches of ceil(bs / world)
            steps_per_epoch = max(1, -(-len(dist.shard_epoch(torch.arange(len(data)))) // dist.local_batch(bs)))
        net = dist.wrap(model, self.device, s.sync_bn)  # DDP for forward/backward; `model` is what others see
        total = max(1, epochs * steps_per_epoch)
        stage = self._next_stage()
        fit = Fit(opt)
        start_epoch = self._restore(stage, model, opt, fit)
        for epoch in range(start_epoch, epochs):
            t0 = time.perf_counter()
            model.train()
            sum_loss = torch.zeros((), device=self.device)
            seen = 0
            stream = batches(data, bs, shuffle=True, augment=aug, generator=self.gen)
            if dist.active():
                stream = self._rank_batches(data, bs, aug)
            with self._bn_mode(model, bn):
                bar = tqdm(stream, total=steps_per_epoch, desc=f"{desc} {epoch + 1}/{epochs}",
                           disable=not self.progress, leave=False, unit="batch")
                for i, (x, y, idx) in enumerate(bar):
                    t = (epoch * steps_per_epoch + i) / total
                    for g in opt.param_groups:
                        g["lr"] = base_lr * lr_factor(schedule, t, s)
                    value = self._step(net, opt, loss, x, y, idx)
                    sum_loss += value.detach() * len(y)
                    seen += len(y)
            if dist.active():  # every rank holds rank 0's model; the loss is over all ranks' samples
                dist.broadcast_module(model)
                sum_loss, seen = dist.sum_(sum_loss), int(dist.sum_(torch.tensor(seen)))
            row = {"stage": stage, "desc": desc, "epoch": epoch + 1, "loss": float(sum_loss) / max(1, seen),
                   "lr": opt.param_groups[0]["lr"], "seconds": round(time.perf_counter() - t0, 3)}
            last = epoch + 1 == epochs
            if evaluate and self.evaluator is not None and (last or (s.eval_every and (epoch + 1) % s.eval_every == 0)):
                row.update(self.evaluator(model))
            if on_epoch is not None:
                row.update(on_epoch(epoch, model) or {})
            fit.history.append(row)
            self.history.append(row)
            self._save(stage, model, opt, fit, epoch + 1)
        return fit

    def fit_steps(
        self,
        model: nn.Module,
        stream: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
        steps: int,
        *,
        loss: LossFn,
        lr: float | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        bn: str = "train",
        desc: str = "steps",
    ) -> Fit:
        """Run `steps` optimiser steps over batches (x in [0,1], y, idx) from `stream`, constant lr."""
        self.prepare(model)
        opt = optimizer if optimizer is not None else self.new_optimizer(model, lr)
        if lr is not None:
            for g in opt.param_groups:
                g["lr"] = lr
        stage = self._next_stage()
        fit = Fit(opt)
        if self._restore(stage, model, opt, fit) >= 1:
            return fit
        net = dist.wrap(model, self.device, self.s.sync_bn)  # DDP: each rank takes its rows of every batch
        t0 = time.perf_counter()
        model.train()
        sum_loss = torch.zeros((), device=self.device)
        it: Iterator = iter(stream)
        with self._bn_mode(model, bn):
            for _ in tqdm(range(steps), desc=desc, disable=not self.progress, leave=False, unit="step"):
                x, y, idx = next(it)
                if dist.active():
                    x, y, idx = dist.split_batch(x, y, idx)
                sum_loss += self._step(net, opt, loss, x.to(self.device), y.to(self.device), idx).detach()
        if dist.active():
            dist.broadcast_module(model)
            sum_loss = dist.sum_(sum_loss) / dist.world_size()
        row = {"stage": stage, "desc": desc, "epoch": 1, "steps": steps, "loss": float(sum_loss) / max(1, steps),
               "lr": opt.param_groups[0]["lr"], "seconds": round(time.perf_counter() - t0, 3)}
        fit.history.append(row)
        self.history.append(row)
        self._save(stage, model, opt, fit, 1)
        return fit

    def _rank_batches(self, data: ImageData, bs: int, aug: Augment | None):
        """This rank's batches of one epoch: the epoch's permutation from the shared generator (the
        same on every rank), every world-th sample of it, in batches of ceil(bs / world), augmented
        with a generator of this rank's own; `idx` are rows of `data`."""
        order = torch.randperm(len(data), generator=self.gen)
        seed = int(torch.randint(0, 2**62, (1,), generator=self.gen))
        aug_gen = torch.Generator().manual_seed(seed + dist.rank())
        mine = dist.shard_epoch(order).to(data.device)
        for x, y, i in batches(data.subset(mine), dist.local_batch(bs), shuffle=False, augment=aug,
                               generator=aug_gen):
            yield x, y, mine[i]

    def _step(self, model, opt, loss: LossFn, x, y, idx) -> torch.Tensor:
        with self._autocast():
            out = model(self._input(x))
            value = loss(out.float(), y, idx)
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()
        return value

    # ------------------------------------------------------- whole-set passes
    @torch.no_grad()
    def _pass(self, model: nn.Module, data: ImageData, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
              batch_size: int | None = None) -> torch.Tensor:
        self.prepare(model)
        was = model.training
        model.eval()
        outs = []
        data = data.to(self.device)
        n = len(data)
        if dist.active():  # this rank's block of rows; gathered back in dataset order below
            data = data.subset(dist.shard_rows(n).to(data.device))
        try:
            for x, y, _ in batches(data, batch_size or self.s.eval_batch_size, shuffle=False):
                with self._autocast():
                    outs.append(fn(self._input(x), y).float())
        finally:
            model.train(was)
        return self._gathered(torch.cat(outs) if outs else torch.empty(0), n)

    @staticmethod
    def _gathered(t: torch.Tensor, n: int) -> torch.Tensor:
        """All ranks' blocks of a sharded pass in rank (= dataset) order, padding trimmed: N rows."""
        return dist.all_gather_rows(t)[:n] if dist.active() else t

    def logits(self, model: nn.Module, data: ImageData) -> torch.Tensor:
        """N×K logits in dataset order, eval mode, no augmentation."""
        return self._pass(model, data, lambda x, y: model(x))

    def predict(self, model: nn.Module, data: ImageData) -> torch.Tensor:
        return self._pass(model, data, lambda x, y: model(x).argmax(1)).long()

    def per_sample_loss(self, model: nn.Module, data: ImageData) -> torch.Tensor:
        """Cross-entropy of every sample against its given label, in one batched pass."""
        return self._pass(model, data, lambda x, y: F.cross_entropy(model(x).float(), y, reduction="none"))

    def features(self, model: nn.Module, data: ImageData) -> torch.Tensor:
        """N×D penultimate features (the model's `features`)."""
        return self._pass(model, data, lambda x, y: model.features(x))

    def activations(self, model: nn.Module, data: ImageData, modules: list[nn.Module],
                    reduce: Callable[[torch.Tensor], torch.Tensor]) -> list[torch.Tensor]:
        """For each module, `reduce(output)` over the whole set (eval mode), in order."""
        store: list[list[torch.Tensor]] = [[] for _ in modules]
        hooks = [m.register_forward_hook(lambda mod, inp, out, i=i: store[i].append(reduce(out).float()))
                 for i, m in enumerate(modules)]
        try:
            self._pass(model, data, lambda x, y: model(x))
        finally:
            for h in hooks:
                h.remove()
        return [self._gathered(torch.cat(s), len(data)) for s in store]

    # ------------------------------------------------------------ checkpoints
    def elapsed(self) -> float:
        """Seconds this trainer's work has taken, counting the earlier processes of a resumed run: each checkpoint
        records it, and restoring one carries the time that led to it (a resumed run's wall time is then what it
        would have been uninterrupted, give or take the redone part of the stage that was cut)."""
        return time.perf_counter() - self.clock0 + self.carried_seconds

    def cpu_elapsed(self) -> float:
        """CPU seconds of this process since the trainer started (all threads), plus those carried by a resume:
        unlike wall time it hardly moves when other processes share the cores, so cost ratios measured under load
        use it."""
        return time.process_time() - self.cpu0 + self.carried_cpu_seconds

    def _next_stage(self) -> int:
        self.stage += 1
        return self.stage

    def _paths(self, stage: int) -> tuple[Path, Path]:
        assert self.checkpoint_dir is not None
        return (self.checkpoint_dir / f"stage{stage:03d}.safetensors",
                self.checkpoint_dir / f"stage{stage:03d}.json")

    def _save(self, stage: int, model: nn.Module, opt: torch.optim.Optimizer, fit: Fit, epochs_done: int) -> None:
        if self.checkpoint_dir is None or not dist.is_main():  # rank 0 writes
            return
        tensors: dict[str, torch.Tensor] = {f"model.{k}": v.detach().contiguous().cpu()
                                            for k, v in model.state_dict().items()}
        state = opt.state_dict()
        scalars: dict[str, Any] = {}
        for pid, st in state["state"].items():
            for k, v in st.items():
                if torch.is_tensor(v):
                    tensors[f"opt.{pid}.{k}"] = v.detach().contiguous().cpu()
                else:
                    scalars[f"{pid}.{k}"] = v
        tensors["rng"] = self.gen.get_state()
        st_path, js_path = self._paths(stage)
        atomic_write(st_path, lambda tmp: save_file(tensors, tmp))
        meta = {"epochs_done": epochs_done, "elapsed": self.elapsed(), "cpu_elapsed": self.cpu_elapsed(),
                "history": fit.history, "opt_scalars": scalars,
                "param_groups": [{k: v for k, v in g.items() if k != "params"} for g in state["param_groups"]]}
        atomic_write(js_path, lambda tmp: Path(tmp).write_text(json.dumps(meta)))

    def _restore(self, stage: int, model: nn.Module, opt: torch.optim.Optimizer, fit: Fit) -> int:
        """Load a saved stage when resuming; return how many epochs it had done."""
        if self.checkpoint_dir is None or not self.resume:
            return 0
        st_path, js_path = self._paths(stage)
        if not (st_path.is_file() and js_path.is_file()):
            return 0
        meta = json.loads(js_path.read_text())
        tensors = load_file(str(st_path))
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        opt_state: dict[int, dict[str, Any]] = {}
        for k, v in tensors.items():
            if k.startswith("opt."):
                _, pid, name = k.split(".", 2)
                opt_state.setdefault(int(pid), {})[name] = v.to(self.device)
        for k, v in meta["opt_scalars"].items():
            pid, name = k.split(".", 1)
            opt_state.setdefault(int(pid), {})[name] = v
        groups = opt.state_dict()["param_groups"]
        saved_groups = meta["param_groups"]
        opt.load_state_dict({"state": opt_state,
                             "param_groups": [dict(sg, params=g["params"]) for g, sg in zip(groups, saved_groups)]})
        self.gen.set_state(tensors["rng"])
        if isinstance(meta.get("elapsed"), (int, float)):  # older checkpoints lack it
            self.carried_seconds = max(self.carried_seconds, float(meta["elapsed"]) - (time.perf_counter() - self.clock0))
        if isinstance(meta.get("cpu_elapsed"), (int, float)):
            self.carried_cpu_seconds = max(self.carried_cpu_seconds,
                                           float(meta["cpu_elapsed"]) - (time.process_time() - self.cpu0))
        fit.history.extend(meta["history"])
        self.history.extend(meta["history"])
        return int(meta["epochs_done"])
