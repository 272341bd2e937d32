"""Each registered model on real Fashion-MNIST through the one Trainer:
training images/s (CPU threads as given) and clean accuracy after a short run.

Writes one JSON per model under bench/models/ as each finishes (rerun skips
finished ones unless --fresh), then the table docs/results/models.md.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/models.py --n 2000 --epochs 2 --threads 1
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

import torch

from cleantrain.data.io import load_dataset
from cleantrain.models import make_model
from cleantrain.registry import models
from cleantrain.train import Trainer, TrainSettings

OUT = Path("bench/models")


def run_one(key: str, train, test, epochs: int, threads: int) -> dict:
    mean, std = train.channel_stats()
    torch.manual_seed(0)
    model = make_model(key, train.shape[0], train.num_classes, train.shape[1], mean, std)
    trainer = Trainer(TrainSettings(epochs=epochs, threads=threads, eval_every=0), seed=0, progress=False)
    t0 = time.perf_counter()
    fit = trainer.fit(model, train)
    wall = time.perf_counter() - t0
    train_s = sum(r["seconds"] for r in fit.history)
    pred = trainer.predict(model, test)
    return {
        "model": key,
        "params": sum(p.numel() for p in model.parameters()),
        "train_images_per_s": round(epochs * len(train) / train_s, 1),
        "fit_wall_s": round(wall, 1),
        "clean_acc": round(float((pred.cpu() == test.y).float().mean()), 4),
        "n_train": len(train), "n_test": len(test), "epochs": epochs, "threads": threads,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--test", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--fresh", action="store_true")
    a = ap.parse_args()
    train, test = load_dataset("fashion-mnist")
    train, test = train.head(a.n, seed=0), test.head(a.test, seed=0)
    OUT.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    rows = []
    for key in models.keys():
        path = OUT / f"{key}-n{a.n}-e{a.epochs}-t{a.threads}.json"
        if path.is_file() and not a.fresh:
            rows.append(json.loads(path.read_text()))
            continue
        row = run_one(key, train, test, a.epochs, a.threads) | {"commit": commit}
        path.write_text(json.dumps(row, indent=2) + "\n")
        print(row, flush=True)
        rows.append(row)
    base = next((r["train_images_per_s"] for r in rows if r["model"] == "small-cnn"), None)
    lines = [
        "# Models: speed and accuracy on Fashion-MNIST (CPU)",
        "",
        f"`OMP_NUM_THREADS={a.threads} .venv/bin/python benchmarks/models.py --n {a.n} --epochs {a.epochs} "
        f"--threads {a.threads}` at commit {commit}: {a.n} training / {a.test} test images, {a.epochs} epochs of the "
        "default recipe (SGD, one-cycle, crop + flip), one run each, on the shared 2-core machine.",
        "",
        "| model | parameters | train images/s | × small-cnn | clean acc |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        rel = f"{r['train_images_per_s'] / base:.2f}" if base else "–"
        lines.append(f"| {r['model']} | {r['params']:,} | {r['train_images_per_s']} | {rel} | {r['clean_acc']:.3f} |")
    Path("docs/results").mkdir(parents=True, exist_ok=True)
    Path("docs/results/models.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
