"""The `cleantrain` command line, a thin layer over `cleantrain.api`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from . import __version__
from .config import parse_assignments
from .errors import UserError

EPILOG = "Settings: --set train.lr=0.1, --set defense.gamma=0.3, --attack-opt size=4. Exit code 2 = bad input."


def _common_data(p: argparse.ArgumentParser, attack_default: str | None = "badnets") -> None:
    g = p.add_argument_group("data")
    g.add_argument("--dataset", help="registered dataset key (default fashion-mnist; see `cleantrain list datasets`)")
    g.add_argument("--data-root", help="folder or file for datasets that need one (folder, npz, or a local copy)")
    g.add_argument("--data", help="a poisoned .npz written by `cleantrain poison` (instead of --dataset/--attack)")
    g.add_argument("--attack", default=None, help=f"attack key, or 'none' for clean data (default {attack_default})")
    g.add_argument("--attack-opt", action="append", metavar="KEY=VALUE", help="attack setting (repeatable)")
    g.add_argument("--rate", type=float, help="poisoning rate in (0, 1) (default 0.1)")
    g.add_argument("--target", type=int, help="target class (default 0)")
    g.add_argument("--train-size", type=int, help="subsample the training split to this many samples")
    g.add_argument("--test-size", type=int, help="subsample the test split to this many samples")
    g.add_argument("--seed", type=int, help="random seed (default 0)")
    g.add_argument("--config", help="YAML preset (see configs/)")
    g.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a setting (repeatable)")
    g.add_argument("--device", help="auto (default), cpu, cuda, cuda:1 ...")


def _config(a: argparse.Namespace, **extra: Any):
    from .api import make_config

    over: dict[str, Any] = {}
    for name in ("dataset", "data_root", "data", "attack", "rate", "target", "train_size", "test_size", "seed",
                 "device", "model", "defense", "clean_set", "clean_data"):
        v = getattr(a, name, None)
        if v is not None:
            over[name] = v
    over.update({k: v for k, v in extra.items() if v is not None})
    for k, v in parse_assignments(getattr(a, "attack_opt", None), "--attack-opt").items():
        over[f"attack.{k}"] = v
    for k, v in parse_assignments(getattr(a, "defense_opt", None), "--defense-opt").items():
        over[f"defense.{k}"] = v
    over.update(parse_assignments(getattr(a, "set", None)))
    if getattr(a, "epochs", None) is not None:
        over["train.epochs"] = a.epochs
    return make_config(a.config if getattr(a, "config", None) else None, over)


def _progress(a) -> bool | None:
    return False if getattr(a, "quiet", False) else None


def cmd_list(a) -> int:
    from .api import list_entries

    if a.key is None:
        for key, doc in list_entries(a.kind):
            print(f"{key:18s} {doc}")
        return 0
    from .api import entry_settings

    doc, rows = entry_settings(a.kind, a.key)
    print(doc if doc.lower().startswith(a.key.lower()) else f"{a.key}: {doc}")
    if not rows:
        print("takes no settings")
        return 0
    flag = {"attacks": "--attack-opt", "defenses": "--defense-opt"}.get(a.kind)
    print(f"settings ({flag + ' KEY=VALUE, or ' if flag else ''}in a preset's YAML), with their defaults:")
    width = max(len(name) for name, _, _ in rows)
    for name, typ, default in rows:
        print(f"  {name:{width}s}  {default!r:24s}  {typ}")
    return 0


def cmd_train(a) -> int:
    from .api import train

    cfg = _config(a)
    r = train(cfg, a.out, overwrite=a.overwrite, db=a.db, progress=_progress(a),
              log=None if a.quiet else lambda m: print(m, file=sys.stderr))
    if os.environ.get("RANK", "0") == "0":  # once, not once per torchrun rank
        print(summary_line(cfg.defense, r))
    return 0


def summary_line(name: str, r: dict[str, Any]) -> str:
    def f(v):
        return "n/a" if v is None else f"{v:.4f}"

    det = r.get("detection") or {}
    parts = [f"{name}: CA {f(r['clean_acc'])}", f"ASR {f(r.get('asr'))}", f"RA {f(r.get('robust_acc'))}"]
    if det.get("tpr") is not None:
        parts.append(f"TPR {f(det.get('tpr'))} FPR {f(det.get('fpr'))}")
    if det.get("auroc") is not None:
        parts.append(f"AUROC {f(det['auroc'])}")
    parts.append(f"{r['wall_seconds']:.1f}s")
    return " | ".join(parts)


def cmd_poison(a) -> int:
    from .api import poison

    cfg = _config(a)
    pd = poison(cfg, a.out, examples=a.examples, overwrite=a.overwrite)
    print(f"wrote {a.out}: {len(pd)} samples, {json.dumps(pd.counts())}")
    return 0


def cmd_evaluate(a) -> int:
    from .api import evaluate

    cfg = _config(a)
    m = evaluate(a.model, cfg, allow_pickle_weights=a.allow_pickle_weights)
    print(json.dumps(m))
    return 0


def cmd_predict(a) -> int:
    from .api import predict

    out = predict(a.model, a.data, a.out, allow_pickle_weights=a.allow_pickle_weights, device=a.device or "auto")
    print(f"wrote {out}")
    return 0


def cmd_detect(a) -> int:
    from .api import detect

    cfg = _config(a)
    r = detect(a.detector, cfg, a.out, overwrite=a.overwrite, progress=_progress(a))
    if os.environ.get("RANK", "0") == "0":  # once, not once per torchrun rank
        print(json.dumps(r))
    return 0


def cmd_fetch(a) -> int:
    from .data.io import load_dataset

    train, test = load_dataset(a.dataset, a.data_root)
    print(f"{a.dataset}: {len(train)} train / {len(test)} test images of {train.shape}, {train.num_classes} classes")
    return 0


def cmd_bench(a) -> int:
    from .api import bench

    r = bench(a.grid, a.out, jobs=a.jobs, progress=_progress(a),
              log=None if a.quiet else lambda m: print(m, file=sys.stderr))
    print(f"{r['done']}/{r['cells']} runs done ({r['skipped']} earlier, {r['ran']} now, {len(r['failed'])} failed); "
          f"table: {r['table_md']}")
    return 1 if r["failed"] else 0


def cmd_report(a) -> int:
    from .api import report

    print(f"wrote {report(a.dir, a.out)}")
    return 0


def cmd_demo(a) -> int:
    from .demo import demo

    demo(a.out, overwrite=a.overwrite, progress=_progress(a), defenses=a.defenses)
    return 0


def cmd_scan(a) -> int:
    from .api import scan
    from .evaluate.scan import format_table

    cfg = _config(a)
    r = scan(a.model_path, cfg, a.out, images=a.images, steps=a.steps, progress=_progress(a),
             allow_pickle_weights=a.allow_pickle_weights)
    print(format_table(r["best"], r["classes"]))
    print(f"wrote {a.out}/scan.json and {len(r.get('pngs', []))} PNGs ({r['wall_seconds']:.1f}s)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cleantrain", description=(
        "Train clean neural networks on possibly backdoor-poisoned data, find the poisoned samples, "
        "and red-team the pipeline with standard attacks."), epilog=EPILOG)
    p.add_argument("--version", action="version", version=f"cleantrain {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    s = sub.add_parser("list", help="list registered datasets, attacks, models or defenses, or one entry's settings")
    s.add_argument("kind", choices=["datasets", "attacks", "models", "defenses"])
    s.add_argument("key", nargs="?", help="one entry: print its settings and their defaults")
    s.set_defaults(fn=cmd_list)

    s = sub.add_parser("train", help="(poison and) train with a defense; writes result.json and model.safetensors",
                       epilog=EPILOG)
    _common_data(s)
    s.add_argument("--defense", help="defense key (default vanilla; see `cleantrain list defenses`)")
    s.add_argument("--defense-opt", action="append", metavar="KEY=VALUE", help="defense setting (repeatable)")
    s.add_argument("--model", help="model key (default small-cnn)")
    s.add_argument("--epochs", type=int, help="training epochs (same as --set train.epochs=N)")
    s.add_argument("--clean-set", type=int, help="reserved clean samples held out of the test split (detectors that need one)")
    s.add_argument("--clean-data", help="a trusted clean .npz to use as the reserved clean set")
    s.add_argument("--out", required=True, help="run folder to write")
    s.add_argument("--db", help="SQLite run store (default: runs.db beside the run folder)")
    s.add_argument("--overwrite", action="store_true", help="replace an earlier run in --out")
    s.add_argument("--quiet", action="store_true", help="no progress bars")
    s.set_defaults(fn=cmd_train)

    s = sub.add_parser("poison", help="poison a dataset and save it as one .npz", epilog=EPILOG)
    _common_data(s)
    s.add_argument("--out", required=True, help=".npz file to write")
    s.add_argument("--examples", help="folder for PNGs of clean vs triggered images")
    s.add_argument("--overwrite", action="store_true")
    s.set_defaults(fn=cmd_poison)

    s = sub.add_parser("evaluate", help="CA / ASR / RA of a saved model", epilog=EPILOG)
    _common_data(s)
    s.add_argument("--model", required=True, help="model.safetensors written by `cleantrain train`")
    s.add_argument("--allow-pickle-weights", action="store_true",
                   help="accept a .pt/.pth file, read with torch.load(weights_only=True)")
    s.set_defaults(fn=cmd_evaluate)

    s = sub.add_parser("predict", help="predict labels of an .npz of images; writes CSV")
    s.add_argument("--model", required=True)
    s.add_argument("--data", required=True, help=".npz with array x (and optionally y)")
    s.add_argument("--out", required=True, help="CSV to write")
    s.add_argument("--device")
    s.add_argument("--allow-pickle-weights", action="store_true")
    s.set_defaults(fn=cmd_predict)

    s = sub.add_parser("detect", help="rank training samples by suspicion; writes index,score,flagged CSV",
                       epilog=EPILOG)
    _common_data(s)
    s.add_argument("--detector", required=True, help="detector key (abl, ct, ss, ac, scan, strip, ...)")
    s.add_argument("--defense-opt", action="append", metavar="KEY=VALUE", help="detector setting (repeatable)")
    s.add_argument("--model", help="model key the detector trains (default small-cnn)")
    s.add_argument("--epochs", type=int)
    s.add_argument("--clean-set", type=int)
    s.add_argument("--clean-data")
    s.add_argument("--out", required=True, help="CSV to write")
    s.add_argument("--overwrite", action="store_true")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(fn=cmd_detect)

    s = sub.add_parser("fetch", help="make sure a dataset is present (install or download it), then describe it")
    s.add_argument("dataset", nargs="?", default="fashion-mnist")
    s.add_argument("--data-root")
    s.set_defaults(fn=cmd_fetch)

    s = sub.add_parser("bench", help="run a benchmark grid (YAML), resumably; writes table.md / table.csv")
    s.add_argument("--grid", required=True, help="grid YAML (see benchmarks/grids/)")
    s.add_argument("--out", required=True, help="bench folder (rerun to continue a stopped bench)")
    s.add_argument("--jobs", type=int, default=1, help="runs at once, each in its own process (default 1)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(fn=cmd_bench)

    s = sub.add_parser("report", help="one self-contained HTML page for a run or bench folder")
    s.add_argument("dir", help="a run folder (result.json) or a bench folder (grid.json)")
    s.add_argument("--out", help="HTML file to write (default DIR/report.html)")
    s.set_defaults(fn=cmd_report)

    s = sub.add_parser("demo", help="the main job: Fashion-MNIST, BadNets 10 %%, vanilla vs every defense")
    s.add_argument("--out", default="runs/demo", help="folder for the demo's runs (default runs/demo)")
    s.add_argument("--defenses", nargs="*", help="only these defenses (default: all registered)")
    s.add_argument("--overwrite", action="store_true", help="replace an earlier demo in --out")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(fn=cmd_demo)

    s = sub.add_parser("scan", help="trigger-inversion scan of a saved model: best flip rate per trigger-size bound",
                       epilog=EPILOG)
    _common_data(s)
    s.add_argument("--model", dest="model_path", required=True, help="model.safetensors written by `cleantrain train`")
    s.add_argument("--out", default="scan", help="folder for scan.json and trigger PNGs (default scan)")
    s.add_argument("--images", type=int, help="clean images to optimise on (as many more measure the flip rate)")
    s.add_argument("--steps", type=int, help="optimisation steps (default 150)")
    s.add_argument("--allow-pickle-weights", action="store_true")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(fn=cmd_scan)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    try:
        if "LOCAL_RANK" in os.environ:  # started by torchrun: one rank of a distributed run
            from .train.dist import run_launched

            return run_launched(lambda: a.fn(a))
        return a.fn(a)
    except UserError as e:
        one_line = "; ".join(part.strip() for part in str(e).splitlines() if part.strip())
        print(f"cleantrain: error: {one_line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cleantrain: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
