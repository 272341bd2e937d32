"""What the per-epoch evaluation costs a run, with and without `eval_sample`.

A run evaluates CA and ASR after every epoch (the curves of the report) and
once more at its end (result.json). This measures, in one process and in CPU
seconds of it (steady when other processes share the cores), on full
Fashion-MNIST with small-cnn, BadNets 10 % and one thread:

- E: one training epoch over the 60 000 training images;
- F: one evaluation on the whole test split (10 000 clean + the triggered
  non-target images);
- S: one evaluation on the `eval_sample` subset (2 000 + 2 000).

The evaluations are repeated `--reps` times in alternation and their medians
taken. A vanilla run of `--epochs` epochs then costs epochs·E + (epochs + 1)·F
before (every epoch on the whole split) and epochs·E + epochs·S + F now; the
ratio of the two is printed (docs/results/trainer.md quotes it).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/eval_cost.py
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time
from pathlib import Path

import torch

from cleantrain.api import make_config, prepare
from cleantrain.defenses.base import DefenseContext
from cleantrain.evaluate.metrics import eval_subset, model_metrics
from cleantrain.train import Trainer, TrainSettings

ROOT = Path(__file__).resolve().parents[1]


def cpu(fn) -> float:
    t = time.process_time()
    fn()
    return time.process_time() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=6, help="epochs of the vanilla run the costs are summed for")
    ap.add_argument("--reps", type=int, default=5, help="repetitions of each evaluation")
    ap.add_argument("--sample", type=int, default=TrainSettings().eval_sample)
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = make_config(None, {"attack": "badnets", "rate": 0.1, "target": 0, "seed": 0})
    prep = prepare(cfg)
    train = prep.poisoned.data
    trainer = Trainer(TrainSettings(epochs=1, threads=1), "cpu", 0, progress=False)
    mean, std = train.channel_stats()
    ctx = DefenseContext(trainer, "small-cnn", train.shape, train.num_classes, mean, std, 0)
    model = ctx.new_model()
    triggered = prep.attack.test_set(prep.test, prep.target)
    sub, sub_trig = eval_subset(prep.test, triggered, args.sample)
    epoch = cpu(lambda: trainer.fit(model, train, epochs=1, evaluate=False))
    full, part = [], []
    for _ in range(args.reps):
        full.append(cpu(lambda: model_metrics(trainer, model, prep.test, prep.attack, prep.target, triggered)))
        part.append(cpu(lambda: model_metrics(trainer, model, sub, prep.attack, prep.target, sub_trig)))
    f, s, n = statistics.median(full), statistics.median(part), args.epochs
    before, after = n * epoch + (n + 1) * f, n * epoch + n * s + f
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    print(f"commit {commit}; one thread; CPU seconds of this process")
    print(f"training epoch (60 000 images) E = {epoch:.1f} s")
    print(f"evaluation, whole test split ({len(prep.test)} + {len(triggered[0])}) F = {f:.2f} s "
          f"(min {min(full):.2f}, max {max(full):.2f})")
    print(f"evaluation, eval_sample ({len(sub)} + {len(sub_trig[0])}) S = {s:.2f} s "
          f"(min {min(part):.2f}, max {max(part):.2f})")
    print(f"{n}-epoch vanilla run: {before:.0f} s before, {after:.0f} s now; evaluation share "
          f"{(n + 1) * f / before:.1%} -> {(n * s + f) / after:.1%}; now / before = {after / before:.3f}")


if __name__ == "__main__":
    main()
