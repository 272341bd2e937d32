"""NONE benchmark: vanilla vs NONE, injected backdoors per attack and natural backdoors on clean data.

    python benchmarks/none.py run [--train-size 10000] [--epochs 6] [--only badnets natural]   # resumable
    python benchmarks/none.py table                                                        # Markdown to stdout
(`--out DIR` on both: another results folder, e.g. for another scale; default bench/none).

Cells, one JSON each under bench/none/ (finished cells are skipped, so the
script can be stopped and rerun):
- `inj-<attack>-<rate%>-<model>`: NONE (injected mode, configs/none-fashion-mnist.yaml).
  NONE's phase 1 *is* vanilla training (same seed, same initial weights, same
  recipe, same data), so the vanilla CA/ASR of the cell are read from the
  last phase-1 epoch of the same run; the badnets cell also runs vanilla on
  its own (`inj-badnets-...-vanilla`) to check that identity and to measure
  vanilla's wall time. Per-round TPR/FPR is computed here from the flagged
  indices NONE records and the provenance the defense never sees.
- `nat-clean-<model>-{vanilla,none}`: training on clean data, then the
  trigger-inversion scanner (evaluate/scan.py) on each model: REASR per mask bound.
One thread (`train.threads=1`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from cleantrain.api import make_config, prepare, scan, train  # noqa: E402
from cleantrain.data.io import atomic_write  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "none"
PRESET = ROOT / "configs" / "none-fashion-mnist.yaml"
ATTACKS = ["badnets", "blend", "trojan", "wanet", "adaptive_patch"]  # the list, in run order
KEEP = ("clean_acc", "asr", "robust_acc", "detection", "wall_seconds", "n_train", "n_test", "poison_counts", "config")


def _write(path: Path, obj: dict) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=1, default=str)))


def _base(a, **extra) -> dict:
    return {"model": a.model, "train_size": a.train_size, "seed": a.seed, "train.threads": 1,
            "train.epochs": a.epochs, "train.eval_every": 0, **extra}


def _defense_opts(a) -> dict:
    return {f"defense.{k}": v for k, v in (kv.split("=", 1) for kv in a.opt or [])}


def _phase1(history: list[dict]) -> dict:
    rows = [h for h in history if h.get("desc") == "none: train"]
    return {"clean_acc": rows[-1].get("clean_acc"), "asr": rows[-1].get("asr"),
            "seconds": round(sum(h["seconds"] for h in rows), 3)}


def _rounds(info: dict, cfg) -> list[dict]:
    """Per-round TPR / FPR of NONE's flags against the provenance (evaluation only)."""
    kind = prepare(cfg).poisoned.kind
    poison, clean = kind == 1, kind == 0
    out = []
    for r in info.get("rounds", []):
        f = torch.zeros(len(kind), dtype=torch.bool)
        f[torch.tensor(r["flagged_index"], dtype=torch.long)] = True
        out.append({"round": r["round"], "n_flagged": r["n_flagged"], "reset": r["reset"],
                    "tpr": float(f[poison].float().mean()) if poison.any() else None,
                    "fpr": float(f[clean].float().mean()) if clean.any() else None})
    return out


def run_injected(attack: str, a) -> None:
    stem = f"inj-{attack}-{a.rate * 100:g}-{a.model}"
    path = OUT / f"{stem}.json"
    if not path.is_file():
        cfg = make_config(PRESET, {**_base(a, attack=attack, rate=a.rate), "defense": "none", **_defense_opts(a)})
        r = train(cfg, OUT / "runs" / stem, overwrite=True, db=OUT / "runs.db", progress=False, log=None)
        cell = {k: r[k] for k in KEEP}
        cell.update(cell=stem, attack=attack, rate=a.rate, model=a.model, vanilla=_phase1(r["history"]),
                    rounds=_rounds(r["defense_info"], cfg), finished=time.time())
        _write(path, cell)
        print(f"{stem}: CA {r['clean_acc']:.4f} ASR {r['asr']:.4f} (phase 1 ASR {cell['vanilla']['asr']:.4f}) "
              f"{r['wall_seconds']:.0f}s", flush=True)
    vpath = OUT / f"{stem}-vanilla.json"
    if attack == "badnets" and not vpath.is_file():
        cfg = make_config(None, {**_base(a, attack=attack, rate=a.rate), "defense": "vanilla"})
        r = train(cfg, OUT / "runs" / vpath.stem, overwrite=True, db=OUT / "runs.db", progress=False, log=None)
        _write(vpath, {**{k: r[k] for k in KEEP}, "cell": vpath.stem, "finished": time.time()})
        print(f"{vpath.stem}: CA {r['clean_acc']:.4f} ASR {r['asr']:.4f} {r['wall_seconds']:.0f}s", flush=True)


def run_natural(a) -> None:
    for defense in ("vanilla", "none"):
        stem = f"nat-clean-{a.model}-{defense}"
        path = OUT / f"{stem}.json"
        if path.is_file():
            continue
        over = {**_base(a, attack="none"), "defense": defense}
        if defense == "none":  # the natural-mode defaults (fraction 0.20), rounds / E2 as given
            over.update({"defense.mode": "natural", **{f"defense.{k}": v for k, v in a.natural.items()}})
        cfg = make_config(None, over)
        run = OUT / "runs" / stem
        r = train(cfg, run, overwrite=True, db=OUT / "runs.db", progress=False, log=None)
        s = scan(run / "model.safetensors", cfg, run / "scan", images=a.scan_images, steps=a.scan_steps,
                 progress=False)
        cell = {k: r[k] for k in ("clean_acc", "wall_seconds", "n_train", "config")}
        cell.update(cell=stem, defense=defense, scan={k: s[k] for k in ("best", "reasr", "labels", "bounds",
                                                                        "wall_seconds", "settings")},
                    rounds=[{k: v for k, v in x.items() if k != "flagged_index"}
                            for x in r["defense_info"].get("rounds", [])] if r["defense_info"] else [],
                    finished=time.time())
        _write(path, cell)
        print(f"{stem}: CA {r['clean_acc']:.4f} REASR " + " ".join(f"{b['reasr']:.3f}" for b in s["best"]), flush=True)


def cmd_run(a) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    print(f"results in {OUT}", flush=True)
    order = a.only or ["badnets", "natural", *ATTACKS[1:]]
    for item in order:
        try:
            run_natural(a) if item == "natural" else run_injected(item, a)
        except Exception as e:  # one failing cell must not stop the rest
            print(f"{item}: FAILED {type(e).__name__}: {e}", file=sys.stderr, flush=True)


def f(v, pct=True) -> str:
    return "–" if v is None else (f"{100 * v:.2f}" if pct else f"{v:.2f}")


def cmd_table(a) -> None:
    cells = {json.loads(p.read_text())["cell"]: json.loads(p.read_text()) for p in sorted(OUT.glob("*.json"))}
    print("| attack | n train | vanilla CA % | NONE CA % | vanilla ASR % | NONE ASR % | ASR ratio | "
          "flagged TPR | flagged FPR | NONE s | × phase 1 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for attack in ATTACKS:
        c = next((v for k, v in cells.items() if k.startswith(f"inj-{attack}-") and not k.endswith("-vanilla")), None)
        if c is None:
            continue
        van, det = c["vanilla"], c.get("detection") or {}
        ratio = van["asr"] / c["asr"] if c["asr"] else float("inf")
        print(f"| {attack} | {c['n_train']} | {f(van['clean_acc'])} | {f(c['clean_acc'])} | {f(van['asr'])} | "
              f"{f(c['asr'])} | {ratio:.1f}× | {f(det.get('tpr'), False)} | {f(det.get('fpr'), False)} | "
              f"{c['wall_seconds']:.0f} | {c['wall_seconds'] / van['seconds']:.2f} |")
    for k, v in cells.items():
        if k.endswith("-vanilla") and k.startswith("inj-"):
            print(f"\nSeparate vanilla run `{k}`: CA {f(v['clean_acc'])} %, ASR {f(v['asr'])} %, "
                  f"{v['wall_seconds']:.0f} s.")
    for k, v in cells.items():
        if k.startswith("inj-") and v.get("rounds"):
            print(f"\n`{k}` rounds: " + "; ".join(
                f"round {r['round']}: {r['n_flagged']} flagged, TPR {f(r['tpr'], False)}, FPR {f(r['fpr'], False)}"
                for r in v["rounds"]))
    nat = {d: cells.get(f"nat-clean-{a.model}-{d}") for d in ("vanilla", "none")}
    if all(nat.values()):
        print("\n| bound | vanilla REASR (label) | NONE REASR (label) | ratio |")
        print("|---|---|---|---|")
        for bv, bn in zip(nat["vanilla"]["scan"]["best"], nat["none"]["scan"]["best"]):
            ratio = bv["reasr"] / bn["reasr"] if bn["reasr"] else float("inf")
            print(f"| {bv['bound'] * 100:.0f} % | {bv['reasr']:.3f} ({bv['label']}) | {bn['reasr']:.3f} ({bn['label']}) | "
                  f"{ratio:.2f}× |")
        print(f"\nnatural: vanilla CA {f(nat['vanilla']['clean_acc'])} % ({nat['vanilla']['wall_seconds']:.0f} s), "
              f"NONE CA {f(nat['none']['clean_acc'])} % ({nat['none']['wall_seconds']:.0f} s)")


def main() -> None:
    global OUT
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--train-size", type=int, default=None, help="training subset (default: all 60k)")
    r.add_argument("--epochs", type=int, default=10, help="E1 = vanilla's epochs (the recipe's)")
    r.add_argument("--rate", type=float, default=0.05)
    r.add_argument("--model", default="small-cnn")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--opt", nargs="*", help="NONE settings over the preset, key=value (injected cells)")
    r.add_argument("--natural-rounds", type=int, default=None)
    r.add_argument("--natural-finetune", type=int, default=None)
    r.add_argument("--natural-fraction", type=float, default=None)
    r.add_argument("--natural-bn", choices=["frozen", "eval"], default=None)
    r.add_argument("--scan-images", type=int, default=200)
    r.add_argument("--scan-steps", type=int, default=150)
    r.add_argument("--only", nargs="*", help="attack keys and/or 'natural'")
    r.set_defaults(fn=cmd_run)
    t = sub.add_parser("table")
    t.add_argument("--model", default="small-cnn")
    t.set_defaults(fn=cmd_table)
    for sp in (r, t):
        sp.add_argument("--out", type=Path, default=OUT, help="results folder (default bench/none)")
    a = p.parse_args()
    OUT = a.out.resolve()
    if a.cmd == "run":
        a.natural = {k: v for k, v in (("rounds", a.natural_rounds), ("finetune_epochs", a.natural_finetune),
                                       ("max_reset_fraction", a.natural_fraction), ("bn", a.natural_bn))
                     if v is not None}
        if a.opt:
            from cleantrain.config import parse_assignments

            a.opt = [f"{k}={v}" for k, v in parse_assignments(a.opt).items()]
    a.fn(a)


if __name__ == "__main__":
    main()
