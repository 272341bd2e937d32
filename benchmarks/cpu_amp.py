"""What `train.cpu_amp` (bfloat16 autocast on the CPU) buys, and what it changes.

In one process, one thread, on Fashion-MNIST poisoned with BadNets 10 %, small-cnn:

- a training epoch over `--n` images with fp32 and with `cpu_amp`, alternated `--reps` times from the same
  starting weights (each rep starts over), CPU seconds of this process and images per CPU-second;
- a whole-set pass (`per_sample_loss` over `--n` images) both ways on one trained model, timed the same way,
  and how far the bf16 losses are from the fp32 ones (largest difference; Spearman correlation of the two
  rankings, which is what a loss-ranking defense such as ABL reads).

Whether the CPU computes bf16 natively is printed; without it expect a slowdown. The full-scale effect on a
run (CA, ASR, wall time) is measured with two `cleantrain train` runs, quoted in docs/results/trainer.md.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/cpu_amp.py
"""

from __future__ import annotations

import argparse
import copy
import statistics
import subprocess
import time
from pathlib import Path

import torch

from cleantrain.api import make_config, prepare
from cleantrain.defenses.base import DefenseContext
from cleantrain.train import Trainer, TrainSettings
from cleantrain.train.trainer import cpu_has_bf16

ROOT = Path(__file__).resolve().parents[1]


def cpu(fn) -> float:
    t = time.process_time()
    fn()
    return time.process_time() - t


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra, rb = a.argsort().argsort().double(), b.argsort().argsort().double()
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=12000, help="training images per timed epoch and pass")
    ap.add_argument("--reps", type=int, default=4, help="alternations of the fp32 and bf16 epochs")
    args = ap.parse_args()
    if args.n < 128 or args.reps < 1:
        raise SystemExit("--n must be ≥ 128 and --reps ≥ 1")
    torch.set_num_threads(1)
    prep = prepare(make_config(None, {"attack": "badnets", "rate": 0.1, "target": 0, "seed": 0}))
    data = prep.poisoned.data.head(args.n, seed=0)
    mean, std = data.channel_stats()
    trainers = {amp: Trainer(TrainSettings(epochs=1, threads=1, cpu_amp=amp), "cpu", 0, progress=False)
                for amp in (False, True)}
    ctx = DefenseContext(trainers[False], "small-cnn", data.shape, data.num_classes, mean, std, 0)
    start = ctx.new_model()
    fit: dict[bool, list[float]] = {False: [], True: []}
    for r in range(args.reps):
        for amp in ((False, True) if r % 2 == 0 else (True, False)):
            model = copy.deepcopy(start)
            fit[amp].append(cpu(lambda: trainers[amp].fit(model, data, epochs=1, evaluate=False)))
    trained = copy.deepcopy(start)
    trainers[False].fit(trained, data, epochs=1, evaluate=False)
    passes: dict[bool, list[float]] = {False: [], True: []}
    losses = {}
    for _ in range(args.reps):
        for amp in (False, True):
            passes[amp].append(cpu(lambda: losses.__setitem__(amp, trainers[amp].per_sample_loss(trained, data))))
    e32, e16 = statistics.median(fit[False]), statistics.median(fit[True])
    p32, p16 = statistics.median(passes[False]), statistics.median(passes[True])
    diff = (losses[True] - losses[False]).abs()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    print(f"commit {commit}; one thread; CPU seconds of this process; native bf16: {cpu_has_bf16()}")
    print(f"training epoch, {args.n} images: fp32 {e32:.1f} s ({args.n / e32:.0f} img/s), "
          f"cpu_amp {e16:.1f} s ({args.n / e16:.0f} img/s); speed-up {e32 / e16:.2f}x "
          f"(fp32 {min(fit[False]):.1f}-{max(fit[False]):.1f}, bf16 {min(fit[True]):.1f}-{max(fit[True]):.1f})")
    print(f"per_sample_loss pass: fp32 {p32:.2f} s, cpu_amp {p16:.2f} s; speed-up {p32 / p16:.2f}x")
    print(f"losses, bf16 vs fp32: largest difference {float(diff.max()):.4f}, median {float(diff.median()):.5f}; "
          f"Spearman {spearman(losses[False], losses[True]):.5f}")


if __name__ == "__main__":
    main()
