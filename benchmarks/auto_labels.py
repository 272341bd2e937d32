"""Per label, what `auto`'s target choice sees on one bench cell: the union's flags, how many of them the clean-set
model (the reference) contradicts, how many are poison, how much of the poison it contradicts, the top tenth's
label counts, and of the label's contradicted samples how many it calls by an unrelated class (step 2a's "far"
ones) and their share (`--no-detectors` skips the flags' columns, for sets whose detectors are not cached).

    CLEANTRAIN_CACHE_DIR=bench/core-10k/cache OMP_NUM_THREADS=1 \
      python benchmarks/auto_labels.py bench/core-10k-v3 wanet-1pct-auto-s0

Run it with the bench's cache so that the detectors and the reference model (30 epochs on the reserved clean set,
≈ 90 CPU s when not cached) are read back rather than recomputed.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from cleantrain import api
from cleantrain.data.core import POISON
from cleantrain.config import parse_assignments
from cleantrain.defenses.auto import (detect_union, far_contradicted, far_target, given_prob, rank_top,
                                      reference_probs)
from cleantrain.defenses.base import DefenseContext, defense_settings
from cleantrain.train import Trainer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bench", help="a bench folder")
    ap.add_argument("cell", help="a cell id of that bench, e.g. wanet-1pct-auto-s0")
    ap.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="override the cell's config, e.g. --set attack=none --set data=null --set seed=1")
    ap.add_argument("--no-detectors", action="store_true", help="only the reference's columns (no CT / SCAn run)")
    args = ap.parse_args()
    os.chdir(Path(args.bench))  # cell configs name their data relative to the bench folder
    cfg = api.make_config(f"cells/{args.cell}.yaml", parse_assignments(args.set))
    s = defense_settings("auto", cfg.defense_opts)
    prep = api.prepare(cfg, need_clean=True)
    data = prep.poisoned.data
    mean, std = data.channel_stats()
    trainer = Trainer(cfg.train, "cpu", cfg.seed, progress=False)
    ctx = DefenseContext(trainer, cfg.model, data.shape, data.num_classes, mean, std, cfg.seed, clean=prep.clean,
                         clean_source=prep.clean_source)
    y, poison = data.y.cpu(), prep.poisoned.kind.cpu() == POISON
    flagged = top = None
    if not args.no_detectors:
        det = detect_union(data, ctx, s)
        flagged = det.flagged.cpu().bool()
        n = int(flagged.sum())
        top = rank_top(torch.where(flagged, det.scores.cpu().float(), float("-inf")), max(1, round(s.top_share * n)))
    probs = reference_probs(data, ctx, s.reference_epochs)
    contradicted = given_prob(probs, data) < s.contradict_below
    far = far_contradicted(probs, data, s)
    label, _, index = far_target(probs, data, s, far)
    what = f"{int(flagged.sum())} flags, " if flagged is not None else ""
    print(f"{args.cell} {' '.join(args.set or [])}: {what}{int(poison.sum())} poison, target {prep.target}, "
          f"far target {label}")
    cols = ["label", "samples", "contradicted", "far", "far-share", "far-index", "poison-contradicted"]
    if flagged is not None:
        cols += ["flags", "flags-contradicted", "share", "flags-far", "flags-poison", "top-tenth"]
    print("  ".join(cols))
    for c in range(data.num_classes):
        mine = y == c
        nc = int((contradicted & mine).sum())
        row = [c, int(mine.sum()), nc, int((far & mine).sum()),
               f"{int((far & mine).sum()) / nc:.2f}" if nc else "-", f"{index[c]:.1f}",
               int((poison & contradicted & mine).sum())]
        if flagged is not None:
            f = flagged & mine
            nf = int(f.sum())
            row += [nf, int((contradicted & f).sum()), f"{float(contradicted[f].float().mean()):.2f}" if nf else "-",
                    int((far & f).sum()), int((poison & f).sum()), int((top & mine).sum())]
        print("  ".join(f"{str(v):>{len(h)}s}" for v, h in zip(row, cols)))


if __name__ == "__main__":
    main()
