"""`auto`'s step 2d (trigger transfer) on labels of a bench's `auto` runs, judged one label at a time, whatever the
other steps decided: the flip rates per scale and whether the check would confirm the label.

    python benchmarks/transfer_check.py bench/core-amp sig-1pct-auto-s0 0
    python benchmarks/transfer_check.py bench/core-10k-1pct-seeds badnets-1pct-auto-s0 0 6

Each label's suspects are what step 2c would judge: the detectors' flags of that label, widened by rank as
`auto` does. The detections, the reference and the normally trained model come from the bench's cache (a miss
trains them, which on full data takes minutes); the model trained without the suspects is trained once per label
and cached there too. Prints one JSON line per label: `poison` counts the suspects that are poison, `rates` are
[scale, flip rate on the normal model, without the suspects, accuracy kept without them].
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path



def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bench", help="bench folder (holds cells/, cache/ and the poisoned data)")
    ap.add_argument("cell", help="an auto run's id, e.g. sig-1pct-auto-s0")
    ap.add_argument("labels", nargs="+", type=int, help="labels to judge")
    a = ap.parse_args()
    bench = Path(a.bench).resolve()
    if not (bench / "cells" / f"{a.cell}.yaml").is_file():
        raise SystemExit(f"{bench}/cells/{a.cell}.yaml not found")
    os.environ["CLEANTRAIN_CACHE_DIR"] = str(bench / "cache")
    os.chdir(bench)  # the cell's data path is relative to the bench
    from cleantrain.api import make_config, prepare
    from cleantrain.data.core import POISON
    from cleantrain.defenses import auto
    from cleantrain.defenses.base import DefenseContext
    from cleantrain.train.trainer import Trainer, pick_device

    cfg = make_config(f"cells/{a.cell}.yaml")
    prep = prepare(cfg, need_clean=True)
    train = prep.poisoned.data
    if any(not 0 <= c < train.num_classes for c in a.labels):
        raise SystemExit(f"labels must lie in [0, {train.num_classes})")
    mean, std = train.channel_stats()
    trainer = Trainer(cfg.train, pick_device(cfg.device), cfg.seed, progress=False)
    ctx = DefenseContext(trainer, cfg.model, train.shape, train.num_classes, mean, std, cfg.seed, clean=prep.clean,
                         clean_source=prep.clean_source)
    s = auto.AutoSettings(**{k: v for k, v in (cfg.defense_opts or {}).items() if k.startswith("transfer_")})
    det = auto.detect_union(train, ctx, s)
    union, y = det.flagged.cpu().bool(), train.y.cpu()
    poison = prep.poisoned.kind.cpu() == POISON
    for label in a.labels:
        mine = auto.label_suspects(union, det.scores, y, label, s)
        got = auto.trigger_transfer(train, ctx, mine, label, s)
        print(json.dumps({"cell": f"{bench.name}/{a.cell}", "label": label, "target": prep.target if cfg.attack else None,
                          "suspects": int(mine.sum()), "poison": int((mine & poison).sum()),
                          "confirmed": got["confirmed"], "rates": got.get("flip_rates")}), flush=True)


if __name__ == "__main__":
    main()
