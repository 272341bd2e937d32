"""NONE ablation: reset fraction × rounds, with CA/ASR right after each reset and after each fine-tune epoch.

    python benchmarks/none_ablation.py 10000 5 "0.03x3,0.05x2,0.10x1" [frozen|eval]
    # train size, E1 epochs, fraction x rounds, BN mode of the fine-tune (default frozen)

Trains BadNets 10 % (small-cnn, seed 0, one thread) once and caches the phase-1 weights under
bench/none_ablation/, then replays NONE's rounds from that model for each variant, printing the
flagged TPR/FPR (from provenance, evaluation only) and CA/ASR. The fine-tune is NONE's (2 epochs at
1e-4, BN statistics frozen, dropping the flagged samples), run through the Trainer, but starting from a
fresh optimizer (the cached phase 1 keeps no momentum buffers).
"""

from __future__ import annotations

import copy
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

from safetensors.torch import load_file, save_file  # noqa: E402

from cleantrain import api  # noqa: E402
from cleantrain.defenses import none as N  # noqa: E402
from cleantrain.defenses.base import DefenseContext  # noqa: E402
from cleantrain.evaluate.metrics import model_metrics  # noqa: E402
from cleantrain.train import Trainer  # noqa: E402

OUT = Path(__file__).resolve().parent.parent / "bench" / "none_ablation"


def main() -> None:
    n, ep = int(sys.argv[1]), int(sys.argv[2])
    variants = [(float(f), int(r)) for f, r in (v.split("x") for v in sys.argv[3].split(","))]
    bn = sys.argv[4] if len(sys.argv) > 4 else "frozen"
    cfg = api.make_config(None, {"train_size": n, "train.epochs": ep, "train.threads": 1, "attack": "badnets",
                                 "rate": 0.1})
    prep = api.prepare(cfg)
    tr = prep.poisoned.data
    t = Trainer(cfg.train, "cpu", 0, progress=False)
    ctx = DefenseContext(t, "small-cnn", tr.shape, 10, *tr.channel_stats(), 0)
    trig = prep.attack.test_set(prep.test, prep.target)

    def ev(m):
        return {k: round(v, 4) for k, v in model_metrics(t, m, prep.test, prep.attack, prep.target, trig).items()}

    path = OUT / f"phase1-{n}-{ep}.safetensors"
    model = ctx.new_model()
    if path.is_file():
        model.load_state_dict(load_file(str(path)))
    else:
        t0 = time.time()
        t.fit(model, tr)
        print(f"phase 1: {time.time() - t0:.0f}s")
        OUT.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    print("phase 1", ev(model), flush=True)
    base = copy.deepcopy(model.state_dict())
    poison = prep.poisoned.is_poison
    for frac, rounds in variants:
        model.load_state_dict(base)
        opt = t.new_optimizer(model)
        for r in range(rounds):
            R = N.analyse(t, model, tr, 0.9, 0.1, frac)
            f = R.flagged
            print(f"frac {frac} round {r + 1}: flagged {int(f.sum())} tpr {float(f[poison].float().mean()):.3f} "
                  f"fpr {float(f[~poison].float().mean()):.4f}", [len(s) for s in R.selected])
            N.reset_channels(model.conv_units(), R.selected)
            print("  after reset", ev(model), flush=True)
            fit = t.fit(model, tr.subset(~f), epochs=2, lr=1e-4, schedule="constant", optimizer=opt, bn=bn,
                        on_epoch=lambda e, m: print("  fine-tune epoch", e + 1, ev(m), flush=True))
            opt = fit.optimizer


if __name__ == "__main__":
    main()
