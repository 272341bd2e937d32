"""Scaling of the Trainer under torchrun: images/s with 1 vs 2 CPU processes (gloo), small-cnn, Fashion-MNIST.

    .venv/bin/python benchmarks/distributed.py run [--n 6000] [--reps 3]   # resumable; one JSON per cell
    .venv/bin/python benchmarks/distributed.py table                      # -> docs/results/distributed.md

Variants, run back to back in each repetition (so they see similar load from other work):
  1p x 1t  one process, one thread
  1p x 2t  one process, two threads (the same cores as 2 ranks)
  2p x 1t  torchrun --nproc_per_node 2, gloo, one thread per rank

Each cell trains `--epochs` epochs (the first is a warm-up) with the default recipe (augmentation on,
batch 128 = the global batch), then times one whole-set pass (`per_sample_loss`). Reported: training
images/s of the last epoch and pass images/s, as measured by rank 0, and the load average (`uptime`)
before and after the cell. Cells are written to bench/distributed/<variant>-r<rep>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "distributed"
VARIANTS = {"1p x 1t": (1, 1), "1p x 2t": (1, 2), "2p x 1t": (2, 1)}


def load() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.split("load average:")[-1].strip()


def worker(n: int, epochs: int, threads: int, out: Path) -> None:
    """One cell, in every rank (or in the one process)."""
    import torch

    from cleantrain.data.io import load_dataset
    from cleantrain.models.base import make_model
    from cleantrain.train import dist
    from cleantrain.train.settings import TrainSettings
    from cleantrain.train.trainer import Trainer

    train, _ = load_dataset("fashion-mnist")
    data = train.head(n, seed=0)
    mean, std = data.channel_stats()
    t = Trainer(TrainSettings(threads=threads, epochs=epochs), "cpu", seed=0, progress=False)
    torch.manual_seed(0)
    model = make_model("small-cnn", 1, 10, 28, mean, std)
    cpu_marks: list[float] = []  # this process's CPU time (all its threads) at each epoch's end
    fit = t.fit(model, data, evaluate=False, on_epoch=lambda e, m: cpu_marks.append(time.process_time()))
    epoch_cpu = float(dist.sum_(torch.tensor(cpu_marks[-1] - cpu_marks[-2])))  # summed over ranks
    dist.barrier()
    t0, c0 = time.perf_counter(), time.process_time()
    t.per_sample_loss(model, data)
    dist.barrier()
    pass_s = time.perf_counter() - t0
    pass_cpu = float(dist.sum_(torch.tensor(time.process_time() - c0)))
    last = fit.history[-1]
    if dist.is_main():
        row = {"world": dist.world_size(), "threads": threads, "n": n, "epochs": epochs,
               "epoch_seconds": last["seconds"], "train_img_s": n / last["seconds"],
               "epoch_cpu_seconds": epoch_cpu, "train_img_per_cpu_s": n / epoch_cpu,
               "pass_seconds": pass_s, "pass_img_s": n / pass_s, "pass_img_per_cpu_s": n / pass_cpu,
               "final_loss": last["loss"], "torch": torch.__version__}
        out.write_text(json.dumps(row))
    dist.shutdown()


def run_cell(variant: str, rep: int, n: int, epochs: int) -> None:
    path = OUT / f"{variant.replace(' ', '')}-r{rep}.json"
    if path.is_file():
        return
    world, threads = VARIANTS[variant]
    tmp = path.with_suffix(".part")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    me = [str(Path(__file__).resolve()), "worker", str(n), str(epochs), str(threads), str(tmp)]  # positional:
    # torchrun's own parser would take abbreviated options such as --n
    if world == 1:
        cmd = [sys.executable, *me]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(world), *me]
    before, t0 = load(), time.time()
    subprocess.run(cmd, check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    row = json.loads(tmp.read_text())
    row.update(variant=variant, rep=rep, load_before=before, load_after=load(), wall=round(time.time() - t0, 1),
               started=time.strftime("%H:%M:%S", time.gmtime(t0)))
    path.write_text(json.dumps(row))
    tmp.unlink()
    print(f"{variant} r{rep}: train {row['train_img_s']:.0f} img/s, pass {row['pass_img_s']:.0f} img/s, "
          f"load {before} -> {row['load_after']}", flush=True)


def table() -> Path:
    import statistics

    rows = [json.loads(p.read_text()) for p in sorted(OUT.glob("*.json"))]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    lines = ["| variant | reps | train img/s, median (min–max) | × vs 1p×1t | train img per CPU-s | "
             "pass img/s | × vs 1p×1t | pass img per CPU-s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    med = {}
    for v in VARIANTS:
        rs = [r for r in rows if r["variant"] == v]
        if rs:
            med[v] = {k: statistics.median(r[k] for r in rs)
                      for k in ("train_img_s", "pass_img_s", "train_img_per_cpu_s", "pass_img_per_cpu_s")}
    b = med.get("1p x 1t")
    for v, m in med.items():
        rs = [r["train_img_s"] for r in rows if r["variant"] == v]
        x_tr = f"{m['train_img_s'] / b['train_img_s']:.2f}" if b else ""
        x_ps = f"{m['pass_img_s'] / b['pass_img_s']:.2f}" if b else ""
        lines.append(f"| {v} | {len(rs)} | {m['train_img_s']:.0f} ({min(rs):.0f}–{max(rs):.0f}) | {x_tr} | "
                     f"{m['train_img_per_cpu_s']:.0f} | {m['pass_img_s']:.0f} | {x_ps} | {m['pass_img_per_cpu_s']:.0f} |")
    cells = ["| cell | started (UTC) | train img/s | train img per CPU-s | pass img/s | load before | load after |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in sorted(rows, key=lambda r: (r["rep"], r["started"])):
        cells.append(f"| {r['variant']} r{r['rep']} | {r['started']} | {r['train_img_s']:.0f} | "
                     f"{r['train_img_per_cpu_s']:.0f} | {r['pass_img_s']:.0f} "
                     f"| {r['load_before']} | {r['load_after']} |")
    n = rows[0]["n"] if rows else "?"
    text = "\n".join([
        "# Distributed training: scaling on this machine (CPU, gloo)", "",
        f"small-cnn on {n} Fashion-MNIST training images, default recipe (augmentation on, global batch 128),",
        "one timed epoch after one warm-up epoch, then one whole-set `per_sample_loss` pass; images/s as",
        "seen by rank 0. Reproduce: `.venv/bin/python benchmarks/distributed.py run && "
        ".venv/bin/python benchmarks/distributed.py table`",
        f"(commit {commit}, torch {rows[0]['torch'] if rows else '?'}).", "",
        "**No GPU was available in this session**: NCCL / multi-GPU scaling is not measured.", "",
        "The machine has 2 CPU cores shared with ~8 other engineers' jobs while this ran (see the load",
        "averages: a load of L on 2 cores means each process got roughly 2/L of a core). The variants",
        "ran back to back within each repetition so that they saw similar load; absolute numbers are",
        "therefore low and noisy, and only the ratios within a repetition mean much.", "",
        *lines, "", "Every cell:", "", *cells, ""])
    dest = ROOT / "docs" / "results" / "distributed.md"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(text)
    return dest


def main() -> None:
    if sys.argv[1:2] == ["worker"]:
        n, epochs, threads, out = sys.argv[2:6]
        return worker(int(n), int(epochs), int(threads), Path(out))
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=["run", "table"])
    p.add_argument("--n", type=int, default=4000)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--reps", type=int, default=3)
    a = p.parse_args()
    if a.what == "run":
        OUT.mkdir(parents=True, exist_ok=True)
        for rep in range(a.reps):
            for v in VARIANTS:
                run_cell(v, rep, a.n, a.epochs)
        print(table())
    else:
        print(table())


if __name__ == "__main__":
    main()
