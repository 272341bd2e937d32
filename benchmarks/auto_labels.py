"""Per label, what `auto`'s target choice sees on one bench cell: the union's flags, how many of them the clean-set
model (the reference) contradicts, how many are poison, how much of the poison it contradicts, and the top tenth's
label counts.

    CLEANTRAIN_CACHE_DIR=bench/core-10k/cache OMP_NUM_THREADS=1 \
      python benchmarks/auto_labels.py bench/core-10k-v3 wanet-1pct-auto-s0

Run it with the bench's cache so that the detectors are read back rather than recomputed (the reference model,
30 epochs on the reserved clean set, is trained again: ≈ 90 CPU s).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from cleantrain import api
from cleantrain.data.core import POISON
from cleantrain.defenses.auto import detect_union, rank_top, reference_given_prob
from cleantrain.defenses.base import DefenseContext, defense_settings
from cleantrain.train import Trainer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bench", help="a bench folder")
    ap.add_argument("cell", help="a cell id of that bench, e.g. wanet-1pct-auto-s0")
    args = ap.parse_args()
    os.chdir(Path(args.bench))  # cell configs name their data relative to the bench folder
    cfg = api.make_config(f"cells/{args.cell}.yaml")
    s = defense_settings("auto", cfg.defense_opts)
    prep = api.prepare(cfg, need_clean=True)
    data = prep.poisoned.data
    mean, std = data.channel_stats()
    trainer = Trainer(cfg.train, "cpu", cfg.seed, progress=False)
    ctx = DefenseContext(trainer, cfg.model, data.shape, data.num_classes, mean, std, cfg.seed, clean=prep.clean,
                         clean_source=prep.clean_source)
    det = detect_union(data, ctx, s)
    contradicted = reference_given_prob(data, ctx, s.reference_epochs) < s.contradict_below
    y, flagged, poison = data.y.cpu(), det.flagged.cpu().bool(), prep.poisoned.kind.cpu() == POISON
    n = int(flagged.sum())
    top = rank_top(torch.where(flagged, det.scores.cpu().float(), float("-inf")), max(1, round(s.top_share * n)))
    print(f"{args.cell}: {n} flags, {int(poison.sum())} poison, target {prep.target}")
    print("label  samples  contradicted  flags  flags-contradicted  share  flags-poison  poison-contradicted  top-tenth")
    for c in range(data.num_classes):
        f = flagged & (y == c)
        nf = int(f.sum())
        share = f"{float(contradicted[f].float().mean()):.2f}" if nf else "-"
        print(f"{c:5d}  {int((y == c).sum()):7d}  {int((contradicted & (y == c)).sum()):12d}  {nf:5d}  "
              f"{int((contradicted & f).sum()):18d}  {share:>5s}  {int((poison & f).sum()):12d}  "
              f"{int((poison & contradicted & (y == c)).sum()):19d}  {int((top & (y == c)).sum()):9d}")


if __name__ == "__main__":
    main()
