"""Attack sanity: does vanilla training learn each registered attack?

For every attack: the equivalent of

    cleantrain train --attack X --rate 0.1 --defense vanilla --epochs 3 \
        --train-size 10000 --set train.threads=1

(via `cleantrain.api`), plus a clean run for reference, and longer runs
(`--more-epochs`, default 10) for the attacks that are recorded rather than
targeted (wanet, sig, adaptive_patch, adaptive_blend) when 3 epochs leave
their ASR under 0.9, and the EXTRA cells at other rates. Each cell writes
`bench/attack_sanity/<attack>-e<epochs>.json` when it ends, and finished cells
are skipped, so the script can be stopped and restarted. The table goes to
`docs/results/attacks.md`.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/attack_sanity.py
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

import numpy as np

from cleantrain import api
from cleantrain.data.io import atomic_write
from cleantrain.registry import attacks
from cleantrain.store.artifacts import write_json

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench" / "attack_sanity"
DOC = ROOT / "docs" / "results" / "attacks.md"
TARGETED = ("badnets", "blend", "trojan", "tact")  # must reach ASR ≥ 0.9 in 3 epochs
RECORDED = ("wanet", "sig", "adaptive_patch", "adaptive_blend")  # published settings, recorded as they come
# extra cells (attack, rate, epochs): one-class attacks at rates that leave clean samples of their class
# (at 0.1 of a 10-class set, tact and sig poison the whole source / target class), and SIG at CT's 2 %
EXTRA = (("tact", 0.05, 3), ("sig", 0.05, 3), ("sig", 0.02, 10))


def custom_trigger() -> str:
    """A code-made 5×5 trigger PNG for the `custom` attack (a ring of white around a black centre)."""
    from PIL import Image

    path = BENCH / "custom_trigger.png"
    if not path.is_file():
        a = np.full((5, 5), 255, np.uint8)
        a[1:4, 1:4] = 0
        a[2, 2] = 255
        atomic_write(path, lambda tmp: Image.fromarray(a, mode="L").save(tmp, format="PNG"))
    return str(path)


def cell(attack: str | None, epochs: int, args, rate: float | None = None) -> dict:
    rate = args.rate if rate is None else rate
    name = f"{attack or 'none'}-e{epochs}" if rate == args.rate else f"{attack}-r{rate:g}-e{epochs}"
    path = BENCH / f"{name}.json"
    if path.is_file():
        row = json.loads(path.read_text())
        if attack == "tact" and "tact" not in row:  # added after the first cells ran
            row["tact"] = tact_specificity(BENCH / "runs" / name, row["settings"])
            write_json(path, row)
        return row
    opts = {"trigger": custom_trigger()} if attack == "custom" else {}
    over = {"attack": attack or "none", "rate": rate, "defense": "vanilla", "train_size": args.train_size,
            "seed": args.seed, "train.epochs": epochs, "train.threads": 1}
    over.update({f"attack.{k}": v for k, v in opts.items()})
    cfg = api.make_config(None, over)
    print(f"[attack_sanity] {name} ...", flush=True)
    res = api.train(cfg, BENCH / "runs" / name, overwrite=True, db=BENCH / "runs.db", progress=False, log=None)
    row = {"attack": attack or "none", "rate": rate, "epochs": epochs, "clean_acc": res["clean_acc"], "asr": res["asr"],
           "robust_acc": res["robust_acc"], "poison_counts": res["poison_counts"],
           "wall_seconds": res["wall_seconds"], "history": res["history"],
           "settings": res["config"]["attack_opts"], "commit": commit()}
    if attack == "tact":
        row["tact"] = tact_specificity(BENCH / "runs" / name, row["settings"])
    write_json(path, row)
    print(f"[attack_sanity] {name}: CA {row['clean_acc']:.4f} ASR {row['asr']}", flush=True)
    return row


def tact_specificity(run_dir: Path, settings: dict) -> dict | None:
    """Share of test images predicted as the target: clean source-class images, and triggered
    images of the cover classes and of the other classes (TaCT's trigger should only work on the source)."""
    model_file = run_dir / "model.safetensors"
    if not model_file.is_file():
        return None
    import torch

    from cleantrain.attacks import make_attack
    from cleantrain.data.core import ImageData
    from cleantrain.data.io import load_dataset
    from cleantrain.store.artifacts import load_model
    from cleantrain.train import Trainer, TrainSettings

    _, test = load_dataset("fashion-mnist")
    att = make_attack("tact", settings, test.shape, test.num_classes)
    model, _ = load_model(model_file)
    trainer = Trainer(TrainSettings(threads=1), torch.device("cpu"), progress=False)
    s, covers = att.s, set(att.s.cover_classes)

    def to_target(mask, triggered):
        x = test.x[mask]
        x = att.apply(x) if triggered else x
        pred = trainer.predict(model, ImageData(x, test.y[mask], test.classes, hflip=False))
        return round(float((pred == 0).float().mean()), 4)

    y = test.y
    others = ~torch.isin(y, torch.tensor([0, s.source, *covers]))
    return {"clean_source_to_target": to_target(y == s.source, False),
            "triggered_cover_to_target": to_target(torch.isin(y, torch.tensor(sorted(covers))), True),
            "triggered_other_to_target": to_target(others, True)}


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def fmt(v) -> str:
    return "–" if v is None else f"{v:.3f}"


def table(rows: list[dict], args) -> str:
    lines = [
        "# Attack sanity (vanilla training learns each attack)",
        "",
        f"Fashion-MNIST, {args.train_size} training samples (seeded subset), full test split, "
        f"rate {args.rate} unless the rate column says otherwise, target 0, seed {args.seed}, small-cnn, vanilla defense, one thread. "
        "ASR is measured on the non-target test images (tact: on source-class test images only).",
        "",
        "Reproduce one cell: `cleantrain train --attack X --rate 0.1 --defense vanilla --epochs 3 "
        "--train-size 10000 --set train.threads=1 --out runs/X`; all cells: "
        "`OMP_NUM_THREADS=1 .venv/bin/python benchmarks/attack_sanity.py`.",
        "",
        "| attack | rate | epochs | CA | ASR | RA | poison | cover | target ASR ≥ 0.9 | commit |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        c = r["poison_counts"]
        rate = r.get("rate", args.rate)
        main_cell = r["epochs"] == args.epochs and rate == args.rate
        goal = ("met" if (r["asr"] or 0) >= 0.9 else "**missed**") if r["attack"] in TARGETED and main_cell else ""
        lines.append(f"| {r['attack']} | {rate:g} | {r['epochs']} | {fmt(r['clean_acc'])} | {fmt(r['asr'])} | "
                     f"{fmt(r['robust_acc'])} | {c['poison']} | {c['cover']} | {goal} | {r['commit']} |")
    tact = [r for r in rows if r.get("tact")]
    if tact:
        lines += ["", "TaCT specificity (share of test images predicted as the target; target 0, source 1, "
                  "covers 5 and 7):", "", "| rate | epochs | clean source images | triggered cover-class images "
                  "| triggered other classes |", "| --- | --- | --- | --- | --- |"]
        for r in tact:
            t = r["tact"]
            lines.append(f"| {r.get('rate', args.rate):g} | {r['epochs']} | {t['clean_source_to_target']:.3f} | "
                         f"{t['triggered_cover_to_target']:.3f} | {t['triggered_other_to_target']:.3f} |")
    lines += ["", "ASR per epoch (from the run history):", ""]
    for r in rows:
        if r["asr"] is not None:
            per = ", ".join(fmt(h.get("asr")) for h in r["history"] if "asr" in h)
            lines.append(f"- {r['attack']} (rate {r.get('rate', args.rate):g}, {r['epochs']} epochs): {per}")
    return "\n".join(lines) + "\n"


def notes() -> str:
    """The hand-written `## Notes` section of the existing page, kept across reruns."""
    if not DOC.is_file():
        return ""
    text = DOC.read_text()
    i = text.find("\n## Notes")
    return text[i:] if i >= 0 else ""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rate", type=float, default=0.1)
    p.add_argument("--train-size", type=int, default=10000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--more-epochs", type=int, default=10, help="longer runs of the recorded attacks (0 = none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", nargs="*", help="attack keys to run (default: all)")
    p.add_argument("--no-extra", action="store_true", help="skip the EXTRA cells (other rates)")
    args = p.parse_args()
    BENCH.mkdir(parents=True, exist_ok=True)
    keys = args.only or attacks.keys()
    plan = [(None, args.epochs, None)] + [(k, args.epochs, None) for k in keys]
    rows: list[dict] = []

    def run(attack, epochs, rate):
        rows.append(cell(attack, epochs, args, rate))
        text = table(rows, args) + notes()
        atomic_write(DOC, lambda tmp: Path(tmp).write_text(text))

    for step in plan:
        run(*step)
    if args.more_epochs:  # longer runs only for recorded attacks not yet learned (ASR < 0.9)
        for r in [r for r in rows if r["attack"] in RECORDED and (r["asr"] or 0) < 0.9]:
            run(r["attack"], args.more_epochs, None)
    if not args.no_extra:
        for attack, rate, epochs in EXTRA:
            if attack in keys:
                run(attack, epochs, rate)
    print(DOC.read_text())


if __name__ == "__main__":
    main()
