"""Trainer throughput (images/s) against a bare loop and a per-sample DataLoader.

Three ways to run one epoch of small-cnn on a Fashion-MNIST subset, same model,
same optimiser, same batch size, same augmentation (random crop with 2 px
padding + horizontal flip), same thread count:

- `bare`: forward/backward/step over batches made (and augmented) before the
  clock starts — the limit of any loop on this model;
- `trainer`: `Trainer.fit(model, data, epochs=1)` — data on the device,
  batched augmentation inside the timed epoch;
- `loader-wN`: a per-sample `torch.utils.data.Dataset` (crop + flip per
  sample, as most backdoor toolkits do) through a `DataLoader` with
  N workers (persistent, so worker start-up is not counted), feeding the
  same training step.

The variants run interleaved, `--reps` times each, in a rotating order, so
load from other processes hits them alike; the median of each is reported and
ratios are taken within this one run. Each repetition writes one JSON under
`bench/trainer/` (resumable); the Markdown table goes to
`docs/results/trainer.md`.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/trainer.py --n 4000 --reps 15 --fresh
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from cleantrain.data.batches import Augment, augment_batch, batches
from cleantrain.data.io import load_dataset
from cleantrain.models import make_model
from cleantrain.train import Trainer, TrainSettings

ROOT = Path(__file__).resolve().parents[1]


class PerSample(torch.utils.data.Dataset):
    """One image at a time: pad, random crop, random flip, to float (the usual toolkit pipeline)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, pad: int = 2, flip: bool = True):
        self.x, self.y, self.pad, self.flip = x, y, pad, flip

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        img = self.x[i].float().div_(255.0)
        c, h, w = img.shape
        p = self.pad
        padded = F.pad(img, (p, p, p, p))
        dy, dx = (int(v) for v in torch.randint(0, 2 * p + 1, (2,)))
        img = padded[:, dy:dy + h, dx:dx + w]
        if self.flip and torch.rand(()) < 0.5:
            img = img.flip(2)
        return img.contiguous(), self.y[i]


class Clock:
    """Wall time and this process's CPU time (the CPU figure ignores time lost to other users'
    processes, but misses work done in DataLoader worker processes)."""

    def __enter__(self):
        self.w, self.c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.w, time.process_time() - self.c

    def rates(self, n: int) -> tuple[float, float]:
        return n / self.wall, n / max(self.cpu, 1e-9)


def new_model(data, seed: int):
    torch.manual_seed(seed)
    mean, std = data.channel_stats()
    return make_model("small-cnn", data.shape[0], data.num_classes, data.shape[1], mean, std)


def step_loop(model, opt, stream, channels_last: bool) -> int:
    model.train()
    seen = 0
    total = torch.zeros(())
    for x, y in stream:
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += loss.detach() * len(y)
        seen += len(y)
    float(total)  # one sync at the end, as the Trainer does
    return seen


def make_opt(trainer: Trainer, model):
    return trainer.new_optimizer(model)


def run_bare(data, s: TrainSettings, seed: int) -> float:
    trainer = Trainer(s, "cpu", seed, progress=False)
    model = trainer.prepare(new_model(data, seed))
    opt = make_opt(trainer, model)
    g = torch.Generator().manual_seed(seed)
    aug = Augment(s.crop_pad, s.hflip, s.cutout)
    pre = [(x, y) for x, y, _ in batches(data, s.batch_size, shuffle=True, augment=aug, generator=g)]
    with Clock() as c:
        n = step_loop(model, opt, pre, s.channels_last)
    return c.rates(n)


def run_trainer(data, s: TrainSettings, seed: int) -> float:
    trainer = Trainer(s, "cpu", seed, progress=False)
    model = new_model(data, seed)
    with Clock() as c:
        trainer.fit(model, data, epochs=1, evaluate=False)
    return c.rates(len(data))


_loaders: dict[int, torch.utils.data.DataLoader] = {}


def loader(data, s: TrainSettings, workers: int, seed: int) -> torch.utils.data.DataLoader:
    if workers not in _loaders:
        ds = PerSample(data.x, data.y, s.crop_pad, s.hflip and data.hflip)
        _loaders[workers] = torch.utils.data.DataLoader(
            ds, batch_size=s.batch_size, shuffle=True, num_workers=workers,
            persistent_workers=workers > 0, generator=torch.Generator().manual_seed(seed))
        for _ in _loaders[workers]:  # start the workers outside the clock
            break
    return _loaders[workers]


def run_loader(data, s: TrainSettings, seed: int, workers: int) -> float:
    trainer = Trainer(s, "cpu", seed, progress=False)
    model = trainer.prepare(new_model(data, seed))
    opt = make_opt(trainer, model)
    dl = loader(data, s, workers, seed)
    with Clock() as c:
        n = step_loop(model, opt, dl, s.channels_last)
    return c.rates(n)


def load_avg() -> float:
    return os.getloadavg()[0]


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True).stdout.strip()
    except OSError:
        return "?"


def _medians(rows: list[dict], field: str) -> tuple[dict[str, float], dict[str, list[float]]]:
    by: dict[str, list[float]] = {}
    for r in rows:
        for k, v in r[field].items():
            by.setdefault(k, []).append(v)
    return {k: statistics.median(v) for k, v in by.items()}, by


def write_table(rows: list[dict], out: Path, args) -> None:
    med, by = _medians(rows, "ips")
    cmed, _ = _medians(rows, "cpu_ips")
    loads = [v for r in rows for v in (r["load_before"], r["load_after"])]
    bare, t = med["bare"], med["trainer"]
    loaders = {k: v for k, v in med.items() if k.startswith("loader")}
    best = max(loaders, key=loaders.get) if loaders else None
    lines = [
        "# Trainer throughput",
        "",
        f"small-cnn, Fashion-MNIST, {args.n} training images per measured epoch, batch {args.batch_size}, one "
        f"training thread (`OMP_NUM_THREADS=1`, `threads=1`), CPU; {len(rows)} repetitions of every variant, "
        f"interleaved in a rotating order; medians. Git commit {rows[-1]['commit']}.",
        f"Load average (1 min) while it ran: {min(loads):.1f}–{max(loads):.1f} on this 2-core machine shared "
        "with other engineers' jobs, so absolute numbers are low and noisy; the ratios within a repetition "
        "are what counts.",
        "",
        "| variant | images/s wall (median) | min–max | × bare loop, wall (median of per-repetition ratios) "
        "| images per CPU-second of this process | × bare loop, CPU |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for k in sorted(med, key=lambda k: (k != "bare", k != "trainer", k)):
        note = " (workers' CPU not counted)" if k.startswith("loader-w") and not k.endswith("w0") else ""
        rr = statistics.median(r["ips"][k] / r["ips"]["bare"] for r in rows)
        lines.append(f"| {k} | {med[k]:.0f} | {min(by[k]):.0f}–{max(by[k]):.0f} | {rr:.3f} | "
                     f"{cmed[k]:.0f}{note} | {cmed[k] / cmed['bare']:.3f} |")
    ratio_rep = [r["ips"]["trainer"] / r["ips"]["bare"] for r in rows]
    lines += [
        "",
        f"- Trainer / bare loop, wall: **{t / bare:.3f}** (median of per-repetition ratios "
        f"{statistics.median(ratio_rep):.3f}); per CPU-second: **{cmed['trainer'] / cmed['bare']:.3f}**. "
        "Target ≥ 0.85.",
    ]
    if best:
        per_rep_best = statistics.median(r["ips"]["trainer"] / max(v for k, v in r["ips"].items()
                                                                    if k.startswith("loader")) for r in rows)
        lines.append(f"- Trainer / best DataLoader ({best}), wall: **{t / loaders[best]:.3f}** (median over "
                     f"repetitions of trainer / that repetition's fastest loader: {per_rep_best:.3f}); "
                     f"Trainer / loader-w0 per CPU-second: **{cmed['trainer'] / cmed['loader-w0']:.3f}**. "
                     "Target > 1.")
    lines += [
        "",
        "Reproduce: `OMP_NUM_THREADS=1 .venv/bin/python benchmarks/trainer.py "
        f"--n {args.n} --reps {args.reps} --batch-size {args.batch_size} --fresh`",
        "",
        "<details><summary>every repetition (images/s, wall)</summary>",
        "",
        *[f"- rep {r['rep']} (load {r['load_before']:.1f}): " + ", ".join(f"{k} {v:.0f}" for k, v in r["ips"].items())
          for r in rows],
        "",
        "</details>",
        "",
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=4000, help="training images")
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, nargs="*", default=[0, 1, 2])
    p.add_argument("--bench-dir", default=str(ROOT / "bench" / "trainer"))
    p.add_argument("--out", default=str(ROOT / "docs" / "results" / "trainer.md"))
    p.add_argument("--fresh", action="store_true", help="ignore earlier repetitions in --bench-dir")
    args = p.parse_args()

    torch.set_num_threads(1)
    s = TrainSettings(epochs=1, batch_size=args.batch_size, threads=1)
    train, _ = load_dataset("fashion-mnist")
    data = train.head(args.n, seed=0)
    bench = Path(args.bench_dir)
    bench.mkdir(parents=True, exist_ok=True)
    if args.fresh:
        for f in bench.glob("rep*.json"):
            f.unlink()
    variants = {"bare": lambda: run_bare(data, s, 0), "trainer": lambda: run_trainer(data, s, 0)}
    for w in args.workers:
        variants[f"loader-w{w}"] = lambda w=w: run_loader(data, s, 0, w)
    names = list(variants)
    # one untimed warm-up of each (allocator, kernels, workers)
    for k in names:
        variants[k]()
    for rep in range(args.reps):
        path = bench / f"rep{rep:02d}.json"
        if path.exists():
            continue
        order = names[rep % len(names):] + names[:rep % len(names)]
        before = load_avg()
        ips, cpu = {}, {}
        for k in order:
            ips[k], cpu[k] = variants[k]()
            print(f"rep {rep} {k}: {ips[k]:.0f} images/s wall, {cpu[k]:.0f} per CPU-second", flush=True)
        row = {"rep": rep, "order": order, "ips": ips, "cpu_ips": cpu, "load_before": before, "load_after": load_avg(),
               "n": args.n, "batch_size": args.batch_size, "commit": git_commit(), "time": time.time()}
        path.write_text(json.dumps(row))
    rows = [json.loads(f.read_text()) for f in sorted(bench.glob("rep*.json"))]
    write_table(rows, Path(args.out), args)
    print(Path(args.out).read_text())


if __name__ == "__main__":
    main()
