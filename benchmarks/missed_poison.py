"""The poison an `auto` run left in its kept set: which classes it came from, how the detectors' mean rank scored
it, whether the confirmed poison would find it in the vanilla model's features, and two training sets to test
whether putting the removed poison back under its true label (an oracle relabelling) weakens what is left.

    python benchmarks/missed_poison.py bench/core-10k-seeds adaptive_patch-10pct-s1 --write /tmp/missed
    cleantrain train --config /tmp/missed/kept.yaml --out /tmp/missed/run-kept
    cleantrain train --config /tmp/missed/relabelled.yaml --out /tmp/missed/run-relabelled

The cell is the poisoned set's id (attack-rate-seed); the bench must hold its vanilla and `auto` runs. The
feature test fits one linear discriminant between the target label's removed and kept samples (shared
covariance) and reads how it ranks the kept poison among the kept clean samples of that label.
"""

from __future__ import annotations

import argparse
import csv
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import yaml
from sklearn.metrics import roc_auc_score

from cleantrain.data.core import POISON, ImageData
from cleantrain.data.io import load_npz, save_npz
from cleantrain.store.artifacts import load_model
from cleantrain.train import Trainer, TrainSettings


def removed_mask(path: Path, n: int) -> np.ndarray:
    out = np.zeros(n, bool)
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if row["flagged"] == "1":
                out[int(row["index"])] = True
    return out


def score_ranks(path: Path, n: int) -> np.ndarray:
    s = np.full(n, np.nan)
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            s[int(row["index"])] = float(row["score"])
    return s.argsort().argsort() / n


def features(bench: Path, run: str, data: ImageData) -> np.ndarray:
    """The vanilla run's penultimate features of every training sample."""
    model, _ = load_model(bench / "runs" / run / "model.safetensors")
    trainer = Trainer(TrainSettings(threads=1), torch.device("cpu"), progress=False)
    return trainer.features(model, data).numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bench", type=Path, help="a bench folder")
    ap.add_argument("cell", help="a poisoned set of it, attack-rate-seed, e.g. adaptive_patch-10pct-s1")
    ap.add_argument("--write", type=Path, help="write kept / relabelled .npz and train configs here")
    args = ap.parse_args()
    parts = args.cell.rsplit("-", 2)
    if len(parts) != 3:
        raise SystemExit(f"cell {args.cell!r}: expected attack-rate-seed, e.g. adaptive_patch-10pct-s1")
    attack, rate, seed = parts
    vanilla, auto = f"{attack}-{rate}-vanilla-{seed}", f"{attack}-{rate}-auto-{seed}"
    for need in (f"data/{args.cell}.npz", f"cells/{vanilla}.yaml", f"runs/{vanilla}/model.safetensors",
                 f"runs/{auto}/suspects.csv"):
        if not (args.bench / need).is_file():
            raise SystemExit(f"{args.bench / need}: not found (the bench needs this cell's vanilla and auto runs)")
    pd = load_npz(args.bench / "data" / f"{args.cell}.npz")
    cfg = yaml.safe_load((args.bench / "cells" / f"{vanilla}.yaml").read_text())
    y, kind, orig = pd.data.y.numpy(), pd.kind.numpy(), pd.original.numpy()
    n, poison, target = len(y), kind == POISON, int(cfg["target"])
    suspects = args.bench / "runs" / auto / "suspects.csv"
    removed = removed_mask(suspects, n)
    missed = poison & ~removed
    print(f"{args.cell}: {int(poison.sum())} poison, {int(removed.sum())} removed, {int(missed.sum())} poison kept")
    print("  kept poison by true class:", dict(Counter(orig[missed].tolist()).most_common()))
    ranks = score_ranks(suspects, n)[missed]
    if len(ranks):
        print(f"  their mean-rank score quantile: {ranks.min():.2f}-{ranks.max():.2f} (median {np.median(ranks):.2f})")
    f = features(args.bench, vanilla, pd.data)
    t = y == target
    r, k = t & removed, t & ~removed
    mu_r, mu_k = f[r].mean(0), f[k].mean(0)
    cov = np.cov(np.vstack([f[r] - mu_r, f[k] - mu_k]).T) + 1e-3 * np.eye(f.shape[1])
    score = f @ np.linalg.solve(cov, mu_r - mu_k)
    if missed[k].any() and not missed[k].all():
        print(f"  feature LDA, removed vs kept of label {target}: AUROC of the kept poison among the kept "
              f"{roc_auc_score(missed[k], score[k]):.3f}")
    inv = np.linalg.inv(cov)
    d_r = np.einsum("ij,jk,ik->i", f - mu_r, inv, f - mu_r)
    d_k = np.einsum("ij,jk,ik->i", f - mu_k, inv, f - mu_k)
    near = k & (d_r < d_k)
    print(f"  kept samples nearer the removed centroid: {int(near.sum())}, {int((near & poison).sum())} poison")
    if args.write:
        args.write.mkdir(parents=True, exist_ok=True)
        keep = torch.from_numpy(~removed)
        back = removed & poison  # oracle: the removed poison under its true label
        both = pd.subset(torch.from_numpy(~removed | back))
        new_y = torch.from_numpy(np.where(back, orig, y)[~removed | back])
        relabelled = replace(both, data=both.data.with_labels(new_y))
        for name, part in (("kept", pd.subset(keep)), ("relabelled", relabelled)):
            save_npz(part, args.write / f"{name}.npz")
            run = {**cfg, "data": str((args.write / f"{name}.npz").resolve())}
            (args.write / f"{name}.yaml").write_text(yaml.safe_dump(run, sort_keys=False))
        print(f"  wrote {args.write}/kept.* ({int(keep.sum())} samples) and relabelled.* "
              f"({len(relabelled)}, {int(back.sum())} relabelled)")


if __name__ == "__main__":
    main()
