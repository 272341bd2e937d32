"""ABL benchmark: vanilla vs ABL per attack × rate (× model), one JSON per cell under bench/abl/.

    python benchmarks/abl.py run   [--train-size 20000] [--epochs 8] [--only badnets-10]   # resumable
    python benchmarks/abl.py table                                                     # Markdown to stdout

A cell is `<attack>-<rate%>-<model>-<defense>`; finished cells (their JSON exists)
are skipped, so the script can be stopped and rerun. Cells run in priority
order (the list below). ABL's wall time is divided by the vanilla cell of the
same attack, rate and model. Runs with one thread (`train.threads=1`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

from cleantrain.api import make_config, train  # noqa: E402
from cleantrain.data.io import atomic_write  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "abl"
PRESET = ROOT / "configs" / "abl-fashion-mnist.yaml"

# (attack, rate, model) in the order they run: the targets first
PRIORITY = [("badnets", 0.1, "small-cnn"), ("badnets", 0.01, "small-cnn"), ("blend", 0.1, "small-cnn"),
            ("trojan", 0.1, "small-cnn"), ("wanet", 0.1, "small-cnn"), ("sig", 0.1, "small-cnn"),
            ("adaptive_blend", 0.1, "small-cnn"), ("adaptive_patch", 0.1, "small-cnn"),
            ("blend", 0.01, "small-cnn"), ("trojan", 0.01, "small-cnn"), ("wanet", 0.01, "small-cnn"),
            ("sig", 0.01, "small-cnn"), ("adaptive_blend", 0.01, "small-cnn"), ("adaptive_patch", 0.01, "small-cnn"),
            ("badnets", 0.1, "wrn-16-1"), ("badnets", 0.1, "preact-resnet18"), ("badnets", 0.1, "resnet18"),
            ("badnets", 0.1, "vgg11-bn")]

# ABL variants: name -> defense_opts on top of the preset
VARIANTS = {"abl": {}}


def cell_id(attack: str, rate: float, model: str, defense: str) -> str:
    return f"{attack}-{rate * 100:g}-{model}-{defense}"


def run_cell(attack, rate, model, defense, opts, a) -> Path:
    path = OUT / f"{cell_id(attack, rate, model, defense)}.json"
    if path.is_file():
        return path
    over = {"attack": attack, "rate": rate, "model": model, "train_size": a.train_size, "seed": a.seed,
            "test_size": a.test_size,
            "train.threads": 1, "train.epochs": a.epochs, "train.eval_every": 0}
    if defense == "vanilla":
        cfg = make_config(None, {**over, "defense": "vanilla"})
    else:
        cfg = make_config(PRESET, {**over, "defense": "abl", **{f"defense.{k}": v for k, v in opts.items()}})
    t0 = time.time()
    r = train(cfg, OUT / "runs" / path.stem, overwrite=True, db=OUT / "runs.db", progress=False, log=None)
    keep = {k: r[k] for k in ("clean_acc", "asr", "robust_acc", "detection", "wall_seconds", "n_train", "n_test",
                              "poison_counts", "defense_info", "config", "history")}
    keep.update(cell=path.stem, attack=attack, rate=rate, model=model, defense=defense, finished=t0)
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(keep, indent=1, default=str)))
    print(f"{path.stem}: CA {r['clean_acc']:.4f} ASR {r['asr']:.4f} {r['wall_seconds']:.0f}s", flush=True)
    return path


def cmd_run(a) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for attack, rate, model in PRIORITY:
        key = f"{attack}-{rate * 100:g}"
        if a.only and key not in a.only and f"{key}-{model}" not in a.only:
            continue
        if a.models is not None and model not in a.models:
            continue
        try:
            run_cell(attack, rate, model, "vanilla", {}, a)
            for name, opts in VARIANTS.items():
                run_cell(attack, rate, model, name, opts, a)
        except Exception as e:  # one failing cell must not stop the rest
            print(f"{key}-{model}: FAILED {type(e).__name__}: {e}", file=sys.stderr, flush=True)


def fmt(v, pct=True) -> str:
    return "–" if v is None else (f"{100 * v:.2f}" if pct else f"{v:.2f}")


def cmd_table(a) -> None:
    cells = {}
    for p in sorted(OUT.glob("*.json")):
        c = json.loads(p.read_text())
        cells[c["cell"]] = c
    print("| attack | rate | model | n train | defense | CA % | ASR % | iso. precision | iso. recall | wall s | × vanilla |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for attack, rate, model in PRIORITY:
        van = cells.get(cell_id(attack, rate, model, "vanilla"))
        for name in ["vanilla", *VARIANTS]:
            c = cells.get(cell_id(attack, rate, model, name))
            if c is None:
                continue
            det = c.get("detection") or {}
            ratio = c["wall_seconds"] / van["wall_seconds"] if van and name != "vanilla" else None
            print(f"| {attack} | {rate * 100:g} % | {model} | {c['n_train']} | {name} | {fmt(c['clean_acc'])} | {fmt(c['asr'])} | "
                  f"{fmt(det.get('precision'), False) if name != 'vanilla' else '–'} | "
                  f"{fmt(det.get('tpr'), False) if name != 'vanilla' else '–'} | {c['wall_seconds']:.0f} | "
                  f"{fmt(ratio, False)} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--train-size", type=int, default=None, help="training subset (default: all 60k)")
    r.add_argument("--test-size", type=int, default=None, help="test subset (default: all 10k)")
    r.add_argument("--epochs", type=int, default=10, help="vanilla's epochs (the recipe's)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--only", nargs="*", help="attack-rate keys, e.g. badnets-10 blend-10")
    r.add_argument("--models", nargs="*", help="only these models")
    r.set_defaults(fn=cmd_run)
    t = sub.add_parser("table")
    t.set_defaults(fn=cmd_table)
    a = p.parse_args()
    a.fn(a)


if __name__ == "__main__":
    main()
