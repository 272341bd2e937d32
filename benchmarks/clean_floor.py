"""The clean floor: each attack's ASR on a model that never saw poison.

A model trained on clean Fashion-MNIST with the core grid's recipe (small-cnn, 6 epochs, seed 0) still calls
some triggered test images of other classes the target (a shirt with a patch looks like a T-shirt). A defense
cannot be credited for an ASR below this floor, and one that goes under it has taught the model to avoid the
target for the trigger (ABL's unlearning does), which is not less backdoor. `benchmarks/auto_check.py --floor`
reads the JSON this writes.

    CLEANTRAIN_CACHE_DIR=bench/core/cache OMP_NUM_THREADS=1 python benchmarks/clean_floor.py

The run goes to bench/clean-floor/run (kept, so a second call only evaluates); the floors to
docs/results/clean_floor.json. `--train-size 10000` trains on the seeded 10 000-image subset the core-10k grid
uses instead (bench/clean-floor-10000/run, docs/results/clean_floor-10000.json). `--seed 1` trains and
triggers with seed 1, as a grid's seed-1 cells do (another subset, init and triggers; files end in -s1).
`--mean A.json B.json ... --out M.json` trains nothing and writes the per-attack mean of those floors (the
floor of a table averaged over seeds):

    python benchmarks/clean_floor.py --mean docs/results/clean_floor-10000.json \
      docs/results/clean_floor-10000-s1.json --out docs/results/clean_floor-10000-mean.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cleantrain import api
from cleantrain.store.artifacts import write_json

ROOT = Path(__file__).resolve().parents[1]
ATTACKS = ("badnets", "wanet", "sig", "adaptive_patch", "blend", "adaptive_blend", "trojan", "tact")


def mean_floors(paths: list[Path]) -> dict:
    """The per-attack mean CA and ASR of several floor files (the attacks all of them hold)."""
    files = []
    for path in paths:
        try:
            files.append(json.loads(path.read_text())["floors"])
        except (OSError, ValueError, KeyError) as e:
            raise SystemExit(f"{path}: not a clean-floor file ({e})")
    attacks = [a for a in files[0] if all(a in f for f in files)]
    floors = {a: {k: round(sum(f[a][k] for f in files) / len(files), 4) for k in ("clean_acc", "asr")}
              for a in attacks}
    return {"recipe": "mean of " + ", ".join(p.name for p in paths), "floors": floors}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=6, help="the recipe's epochs (core grid: 6)")
    ap.add_argument("--train-size", type=int, help="train on a seeded subset this large (core-10k: 10000)")
    ap.add_argument("--seed", type=int, default=0, help="the grid cells' seed (default 0)")
    ap.add_argument("--out", help="default: docs/results/clean_floor.json, or clean_floor-N.json with --train-size")
    ap.add_argument("--mean", nargs="+", type=Path, metavar="JSON", help="average these floor files into --out")
    args = ap.parse_args()
    if args.mean:
        if not args.out:
            ap.error("--mean needs --out")
        write_json(Path(args.out), mean_floors(args.mean))
        return
    tag = (f"-{args.train_size}" if args.train_size else "") + (f"-s{args.seed}" if args.seed else "")
    out = Path(args.out) if args.out else ROOT / "docs" / "results" / f"clean_floor{tag}.json"
    run = ROOT / "bench" / f"clean-floor{tag}" / "run"
    train = {"train.epochs": args.epochs, "train.threads": 1, "seed": args.seed}
    if not (run / "result.json").is_file():
        clean = {"attack": None, "defense": "vanilla", "train_size": args.train_size, **train}
        api.train(api.make_config(overrides=clean), run, overwrite=True)
    floors = {}
    for attack in ATTACKS:  # the rate only poisons a training set that evaluation does not use
        cfg = api.make_config(overrides={"attack": attack, "rate": 0.01, **train})
        r = api.evaluate(run / "model.safetensors", cfg)
        floors[attack] = {"clean_acc": round(r["clean_acc"], 4), "asr": round(r["asr"], 4)}
        print(f"{attack:16s} CA {r['clean_acc']:.3f}  ASR {r['asr']:.4f}", flush=True)
    size = f"{args.train_size} images of the" if args.train_size else "the full"
    recipe = f"fashion-mnist, small-cnn, {args.epochs} epochs, seed {args.seed}, {size} clean training set"
    write_json(out, {"recipe": recipe, "test": "the full test split", "code": api.code_version(), "floors": floors})


if __name__ == "__main__":
    main()
