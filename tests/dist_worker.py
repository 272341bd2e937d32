"""What tests/test_distributed.py runs under torchrun, one copy per rank.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/dist_worker.py LOGDIR MODE ARGS...

MODE `cli N ARGS [-- ARGS ...]`: `python -m cleantrain ARGS` (the real `__main__`) for each `--`
separated command in turn, in one process group, logging every file this rank writes (atomic writes
and run-store rows) to LOGDIR/writes-<i>-rank<R>.txt for the i-th command; then, when N > 0 and once
rank 0 has written the first run's model, the whole-set passes of that model on N samples and one
DDP epoch, rank 0 saving them to LOGDIR/passes.safetensors.
MODE `fail ARGS`: `cleantrain ARGS` where rank 1 raises while preparing its data.
"""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path

import torch

RANK = int(os.environ.get("RANK", "0"))
_log: list = [None]


def spy_writes() -> None:
    """Log the name of every file written through atomic_write, and every run-store write, to `_log[0]`."""
    from cleantrain.data import io
    from cleantrain.store import artifacts, runs
    from cleantrain.train import trainer

    def note(line: str) -> None:
        _log[0].write(line + "\n")
        _log[0].flush()

    def spy(fn):
        def wrapped(path, *a, **k):
            note(Path(path).name)
            return fn(path, *a, **k)

        return wrapped

    for mod in (io, artifacts, trainer):
        mod.atomic_write = spy(mod.atomic_write)
    store_write = runs.RunStore._write

    def logged(self, sql, args):
        note(f"store {sql.split()[0]}")
        return store_write(self, sql, args)

    runs.RunStore._write = logged


def run_cli(args: list[str]) -> None:
    """`python -m cleantrain ARGS` in this process; returns when it exits 0."""
    sys.argv = ["cleantrain", *args]
    try:
        runpy.run_module("cleantrain", run_name="__main__")
    except SystemExit as e:
        if e.code not in (0, None):
            raise


def fresh_model(seed: int = 0):
    from cleantrain.models.base import make_model

    torch.manual_seed(seed)
    return make_model("small-cnn", 1, 10, 28)


def passes(model_path: Path, n: int) -> dict[str, torch.Tensor]:
    """per_sample_loss / logits / predict / features / activations of a trained model on n samples, then
    one epoch of DDP training (`fit`) and 4 steps of `fit_steps` from fixed inits (no augmentation, BN in
    eval mode: gradients then do not depend on how a batch is split, so two ranks must match one process)."""
    from cleantrain.data.io import load_dataset
    from cleantrain.store.artifacts import load_model
    from cleantrain.train import dist
    from cleantrain.train.settings import TrainSettings
    from cleantrain.data.batches import batches
    from cleantrain.train.trainer import Trainer, cross_entropy

    train, _ = load_dataset("fashion-mnist")
    data = train.head(n, seed=3)
    t = Trainer(TrainSettings(threads=1, eval_batch_size=256), "cpu", seed=5, progress=False)
    model, _ = load_model(model_path)
    out = {"world": torch.tensor(dist.world_size()),
           "loss": t.per_sample_loss(model, data), "logits": t.logits(model, data),
           "pred": t.predict(model, data), "features": t.features(model, data)}
    acts = t.activations(model, data, [u.conv for u in model.conv_units()], lambda o: o.amax(dim=(2, 3)))
    out.update({f"act{i}": a for i, a in enumerate(acts)})
    fresh = fresh_model()
    fit = t.fit(fresh, train.head(1024, seed=4), epochs=1, augment=False, bn="eval", schedule="constant",
                lr=0.05, batch_size=128, evaluate=False)
    out["fit_loss"] = torch.tensor(fit.history[-1]["loss"])
    out.update({f"w.{k}": v for k, v in fresh.state_dict().items()})
    stepped = fresh_model(1)  # fit_steps: every rank draws the same batch and takes its rows of it
    stream = batches(train.head(512, seed=6), 128, shuffle=True, generator=torch.Generator().manual_seed(2))
    t.fit_steps(stepped, stream, 4, loss=cross_entropy(), lr=0.05, bn="eval")
    out.update({f"s.{k}": v for k, v in stepped.state_dict().items()})
    return out


def commands(args: list[str]) -> list[list[str]]:
    out: list[list[str]] = [[]]
    for a in args:
        if a == "--":
            out.append([])
        else:
            out[-1].append(a)
    return out


def main() -> None:
    log_dir, mode, args = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
    if mode == "cli":
        from safetensors.torch import save_file

        from cleantrain.train import dist

        n, cmds = int(args[0]), commands(args[1:])
        spy_writes()
        shutdown, dist.shutdown = dist.shutdown, lambda: None  # keep one process group for all commands
        for i, cmd in enumerate(cmds):
            _log[0] = open(log_dir / f"writes-{i}-rank{RANK}.txt", "a")
            run_cli(cmd)
        dist.shutdown = shutdown
        if n > 0:
            dist.barrier()  # rank 0 has written the models
            out = passes(Path(cmds[0][cmds[0].index("--out") + 1]) / "model.safetensors", n)
            if dist.is_main():
                save_file({k: v.contiguous() for k, v in out.items()}, str(log_dir / "passes.safetensors"))
        dist.shutdown()
    elif mode == "fail":
        from cleantrain import api

        prepare = api.prepare

        def failing(*a, **k):
            if RANK == 1:
                raise RuntimeError("injected failure on rank 1")
            return prepare(*a, **k)

        api.prepare = failing
        run_cli(args)


if __name__ == "__main__":
    main()
