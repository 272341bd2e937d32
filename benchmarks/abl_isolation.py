"""ABL isolation per epoch: precision of the lowest 1 % under the paper's rule and the class-relative rule.

    python benchmarks/abl_isolation.py --model small-cnn-avg --n 5000 --epochs 12 --seed 1

`--model` is a registry key, or `small-cnn-avg` (small-cnn with global
average instead of max pooling). After every LGA isolation epoch the
per-sample loss of every training sample is taken in one batched pass; the
JSON under bench/abl/isolation/ holds, per epoch, the precision of the
lowest `ratio` share by final loss (paper) and by the class-relative rule
(cumulative over the last half of the epochs seen so far), with the label
counts of the paper's isolated set. Only evaluation reads provenance here.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
from torch import nn  # noqa: E402

from cleantrain.attacks import make_attack  # noqa: E402
from cleantrain.data.core import POISON  # noqa: E402
from cleantrain.data.io import load_dataset, atomic_write  # noqa: E402
from cleantrain.defenses.abl import ISOLATION_LOSSES, class_relative  # noqa: E402
from cleantrain.models import make_model  # noqa: E402
from cleantrain.train import Trainer, TrainSettings  # noqa: E402

OUT = Path(__file__).resolve().parent.parent / "bench" / "abl" / "isolation"


def build(key: str, data) -> nn.Module:
    mean, std = data.channel_stats()
    torch.manual_seed(0)
    m = make_model("small-cnn" if key == "small-cnn-avg" else key, data.shape[0], data.num_classes,
                   data.shape[1], mean, std)
    if key == "small-cnn-avg":
        m.gpool = nn.AdaptiveAvgPool2d(1)
    return m


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="small-cnn")
    p.add_argument("--attack", default="badnets")
    p.add_argument("--n", type=int, default=5000)
    p.add_argument("--rate", type=float, default=0.1)
    p.add_argument("--ratio", type=float, default=0.01)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--gamma", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args()
    train, _ = load_dataset("fashion-mnist")
    pd = make_attack(a.attack, {}, train.shape, train.num_classes).poison(train.head(a.n, seed=1), a.rate, 0, a.seed)
    data, poison, y = pd.data, pd.kind == POISON, pd.data.y
    k = max(1, round(a.ratio * len(data)))
    model = build(a.model, data)
    tr = Trainer(TrainSettings(threads=1, weight_decay=1e-4), "cpu", a.seed, progress=False)
    curves: list[torch.Tensor] = []

    def prec(score: torch.Tensor) -> float:
        return float(poison[torch.argsort(-score, stable=True)[:k]].float().mean())

    def on_epoch(epoch, m):
        loss = tr.per_sample_loss(m, data).cpu()
        curves.append(loss)
        window = curves[len(curves) - max(1, round(0.5 * len(curves))):]
        cls = -torch.stack([class_relative(c, y, data.num_classes, 0.75) for c in window]).mean(0)
        low = torch.argsort(loss)[:k]
        return {"precision_final": prec(-loss), "precision_class": prec(cls),
                "poison_mean_loss": float(loss[poison].mean()), "clean_mean_loss": float(loss[~poison].mean()),
                "isolated_labels": torch.bincount(y[low], minlength=data.num_classes).tolist()}

    fit = tr.fit(model, data, epochs=a.epochs, loss=ISOLATION_LOSSES["lga"](a.gamma), lr=a.lr, schedule="constant",
                 augment=False, evaluate=False, on_epoch=on_epoch, desc="isolation")
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{a.model}-{a.attack}-{a.rate * 100:g}-n{a.n}-s{a.seed}.json"
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps({"args": vars(a), "epochs": fit.history}, indent=1)))
    for r in fit.history:
        print(a.model, r["epoch"], f"final {r['precision_final']:.2f} class {r['precision_class']:.2f}",
              f"poison loss {r['poison_mean_loss']:.3f} clean {r['clean_mean_loss']:.3f}", r["isolated_labels"])


if __name__ == "__main__":
    main()
