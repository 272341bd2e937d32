"""`cleantrain demo`: the main job on the embedded default data.

Fashion-MNIST, BadNets 10 %, small-cnn: vanilla and every registered defense,
then a comparison table. A 20k-sample training subset keeps the whole demo
within about ten minutes on two CPU cores; each defense may scale its own
budget in `presets/demo-<key>.yaml`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .api import make_config, train
from .config import load_yaml
from .registry import defenses as registry

PRESETS = Path(__file__).parent / "presets"
DEMO = {"dataset": "fashion-mnist", "attack": "badnets", "rate": 0.1, "target": 0,
        "model": "small-cnn", "train_size": 20000, "train.epochs": 6}


def preset_overrides(key: str) -> dict:
    """The defense's demo preset (presets/demo-KEY.yaml) as dotted overrides; it wins over DEMO."""
    path = PRESETS / f"demo-{key}.yaml"
    if not path.is_file():
        return {}
    out = {}
    prefixes = {"train": "train", "defense_opts": "defense", "attack_opts": "attack"}
    for k, v in load_yaml(path).items():
        if k in prefixes and isinstance(v, dict):
            out.update({f"{prefixes[k]}.{kk}": vv for kk, vv in v.items()})
        else:
            out[k] = v
    return out


def demo(out: str | Path = "runs/demo", overwrite: bool = False, progress: bool | None = None,
         defenses: list[str] | None = None) -> list[dict]:
    out = Path(out)
    keys = defenses or ["vanilla"] + [k for k in registry.keys() if k != "vanilla"]
    for k in keys:
        registry.get(k)  # unknown keys fail before any training
    rows = []
    for key in keys:
        cfg = make_config(None, {**DEMO, **preset_overrides(key), "defense": key})
        print(f"== {key}", file=sys.stderr, flush=True)
        r = train(cfg, out / key, overwrite=overwrite, db=out / "runs.db", progress=progress,
                  log=lambda m: print(m, file=sys.stderr))
        rows.append((key, r))
        print(_row(key, r), flush=True)
    print()
    print(table(rows))
    return [r for _, r in rows]


def _fmt(v) -> str:
    return "  n/a " if v is None else f"{v:6.3f}"


def _row(key: str, r: dict) -> str:
    det = r.get("detection") or {}
    return (f"| {key:10s} | {_fmt(r['clean_acc'])} | {_fmt(r.get('asr'))} | {_fmt(r.get('robust_acc'))} | "
            f"{_fmt(det.get('tpr'))} | {_fmt(det.get('fpr'))} | {r['wall_seconds']:7.1f} |")


def table(rows) -> str:
    head = ("| defense    |   CA   |  ASR   |   RA   |  TPR   |  FPR   | seconds |\n"
            "|------------|--------|--------|--------|--------|--------|---------|")
    return "\n".join([head] + [_row(k, r) for k, r in rows])
