"""CT and baseline-detector benchmark: one JSON per cell under bench/ct/, resumable.

    python benchmarks/ct.py run   [--train-size 10000] [--epochs 4] [--clean-set 1000] [--only badnets-1]
    python benchmarks/ct.py table                                          # Markdown to stdout

A cell is `<attack>-<rate%>-<defense>`. Per poisoned set, vanilla runs first (the
reference for wall time, CA and ASR), then CT (it trains the normally trained
model that the baselines then take from the shared cache, so its wall time
includes that model), then the baselines at 1 %. Each detector's run retrains a
fresh model on the kept samples; CA / ASR are that model's. Finished cells
(their JSON exists) are skipped. One thread (`train.threads=1`).
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
from cleantrain.registry import attacks  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "ct"
PRESET = ROOT / "configs" / "ct-fashion-mnist.yaml"
os.environ.setdefault("CLEANTRAIN_CACHE_DIR", str(OUT / "cache"))

BASELINES = ["ss", "ac", "scan", "strip"]
ATTACKS = ["badnets", "blend", "trojan", "wanet", "sig", "tact", "adaptive_blend", "adaptive_patch"]
# (attack, rate, defenses) in the order they run: badnets 1 % with every detector first
PRIORITY = ([("badnets", 0.01, ["vanilla", "ct"] + BASELINES)]
            + [(a, 0.01, ["vanilla", "ct"]) for a in ATTACKS[1:]]
            + [(a, 0.003, ["vanilla", "ct"]) for a in ATTACKS]
            + [(a, 0.01, BASELINES) for a in ATTACKS[1:]])
# baseline settings scaled for this CPU: STRIP with 20 overlays instead of 100
BASELINE_OPTS = {"strip": {"overlays": 20}}


def cell_id(attack: str, rate: float, defense: str) -> str:
    return f"{attack}-{rate * 100:g}-{defense}"


def run_cell(attack: str, rate: float, defense: str, a) -> Path | None:
    path = OUT / f"{cell_id(attack, rate, defense)}.json"
    if path.is_file():
        return path
    over = {"attack": attack, "rate": rate, "model": "small-cnn", "train_size": a.train_size,
            "test_size": a.test_size, "clean_set": a.clean_set, "seed": a.seed, "defense": defense,
            "train.threads": 1, "train.epochs": a.epochs, "train.eval_every": 0}
    over.update({f"defense.{k}": v for k, v in BASELINE_OPTS.get(defense, {}).items()})
    cfg = make_config(PRESET if defense == "ct" else None, over)
    t0 = time.time()
    r = train(cfg, OUT / "runs" / path.stem, overwrite=True, db=OUT / "runs.db", progress=False, log=None)
    keep = {k: r.get(k) for k in ("clean_acc", "asr", "robust_acc", "detection", "wall_seconds", "n_train",
                                  "n_test", "poison_counts", "clean_source", "defense_info", "config")}
    keep["bench_seconds"] = round(time.time() - t0, 1)
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(keep, indent=1, default=str)))
    return path


def cmd_run(a) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    known = set(attacks.keys())
    for attack, rate, defs in PRIORITY:
        if attack not in known:
            print(f"skip {attack}: not registered yet", flush=True)
            continue
        if a.only and f"{attack}-{rate * 100:g}" not in a.only:
            continue
        for d in defs:
            t0 = time.time()
            try:
                run_cell(attack, rate, d, a)
            except Exception as e:  # one failing cell must not stop the grid; it is recorded
                print(f"{cell_id(attack, rate, d)} FAILED: {type(e).__name__}: {e}", flush=True)
                continue
            print(f"{cell_id(attack, rate, d)} done in {time.time() - t0:.0f}s", flush=True)


def _f(v, pct=True) -> str:
    if v is None:
        return "–"
    return f"{100 * v:.1f}" if pct else f"{v:.3f}"


def cmd_table(a) -> None:
    cells = {p.stem: json.loads(p.read_text()) for p in sorted(OUT.glob("*.json"))}
    print("| attack | rate % | detector | poison | TPR % | FPR % | AUROC | CA % | ASR % | vanilla CA % | "
          "vanilla ASR % | seconds | × vanilla |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for attack, rate, defs in PRIORITY:
        van = cells.get(cell_id(attack, rate, "vanilla"))
        for d in defs:
            if d == "vanilla" or cell_id(attack, rate, d) not in cells:
                continue
            r = cells[cell_id(attack, rate, d)]
            det = r.get("detection") or {}
            ratio = f"{r['wall_seconds'] / van['wall_seconds']:.2f}" if van else "–"
            print(f"| {attack} | {rate * 100:g} | {d} | {det.get('n_poison', '–')} | {_f(det.get('tpr'))} | "
                  f"{_f(det.get('fpr'))} | {_f(det.get('auroc'), False)} | {_f(r['clean_acc'])} | {_f(r.get('asr'))} | "
                  f"{_f(van['clean_acc']) if van else '–'} | {_f(van.get('asr')) if van else '–'} | "
                  f"{r['wall_seconds']:.0f} | {ratio} |")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--train-size", type=int, default=10000)
    r.add_argument("--test-size", type=int, default=2000)
    r.add_argument("--epochs", type=int, default=4)
    r.add_argument("--clean-set", type=int, default=1000)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--only", nargs="*", help="poisoned sets to run, e.g. badnets-1 blend-0.3")
    r.set_defaults(fn=cmd_run)
    t = sub.add_parser("table")
    t.set_defaults(fn=cmd_table)
    a = p.parse_args(argv)
    a.fn(a)


if __name__ == "__main__":
    sys.exit(main())
