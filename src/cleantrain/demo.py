"""`cleantrain demo`: the main job on the embedded default data."""

from __future__ import annotations

import sys
from pathlib import Path

from .api import make_config, train
from .errors import UserError
from .registry import defenses

# Fashion-MNIST, BadNets 10 %, small-cnn. A 20k-sample training subset keeps
# vanilla plus every defense within about ten minutes on two CPU cores.
DEMO = {"dataset": "fashion-mnist", "attack": "badnets", "rate": 0.1, "target": 0,
        "model": "small-cnn", "train_size": 20000, "train.epochs": 8}


def demo(out: str | Path = "runs/demo", overwrite: bool = False, progress: bool | None = None,
         defenses_to_run: list[str] | None = None, defenses: list[str] | None = None) -> list[dict]:
    out = Path(out)
    keys = defenses or defenses_to_run or ["vanilla"] + [k for k in _defense_keys() if k != "vanilla"]
    for k in keys:
        _ = __import__("cleantrain.registry", fromlist=["defenses"]).defenses.get(k)
    rows = []
    for key in keys:
        cfg = make_config(None, dict(DEMO, defense=key))
        print(f"== {key}", file=sys.stderr)
        r = train(cfg, out / key, overwrite=overwrite, db=out / "runs.db", progress=progress,
                  log=lambda m: print(m, file=sys.stderr))
        rows.append((key, r))
        print(_row(key, r), flush=True)
    print()
    print(table(rows))
    return [r for _, r in rows]


def _defense_keys() -> list[str]:
    return [k for k in defenses.keys() if k not in ("auto",)] + (["auto"] if "auto" in defenses.keys() else [])


def _fmt(v) -> str:
    return "  n/a " if v is None else f"{v:6.3f}"


def _row(key: str, r: dict) -> str:
    det = r.get("detection") or {}
    return (f"| {key:10s} | {_fmt(r['clean_acc'])} | {_fmt(r.get('asr'))} | {_fmt(r.get('robust_acc'))} | "
            f"{_fmt(det.get('tpr'))} | {_fmt(det.get('fpr'))} | {r['wall_seconds']:7.1f} |")


def table(rows) -> str:
    head = "| defense    |   CA   |  ASR   |   RA   |  TPR   |  FPR   | seconds |\n" \
           "|------------|--------|--------|--------|--------|--------|---------|"
    return "\n".join([head] + [_row(k, r) for k, r in rows])


__all__ = ["demo", "table", "UserError"]
