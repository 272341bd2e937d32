"""Every number a run reports. Only evaluation reads provenance."""

from __future__ import annotations

import resource
import sys
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data.core import COVER, POISON, ImageData, PoisonedData
from ..train.trainer import Trainer


def accuracy(trainer: Trainer, model: nn.Module, x: torch.Tensor, y: torch.Tensor, classes) -> float:
    if len(y) == 0:
        return float("nan")
    data = ImageData(x, y, tuple(classes), hflip=False)
    return float((trainer.predict(model, data).cpu() == y.cpu()).float().mean())


def model_metrics(trainer: Trainer, model: nn.Module, test: ImageData, attack=None, target: int = 0,
                  triggered: tuple | None = None) -> dict[str, float]:
    """CA on `test`; ASR and RA on its triggered non-target part when an attack is known.

    `triggered` (from `attack.test_set`) may be passed to avoid re-stamping each epoch."""
    out = {"clean_acc": accuracy(trainer, model, test.x, test.y, test.classes)}
    if attack is not None:
        xt, y_att, y_true = triggered if triggered is not None else attack.test_set(test, target)
        data = ImageData(xt, y_true, test.classes, hflip=False)
        pred = trainer.predict(model, data).cpu()
        out["asr"] = float((pred == y_att.cpu()).float().mean()) if len(pred) else float("nan")
        out["robust_acc"] = float((pred == y_true.cpu()).float().mean()) if len(pred) else float("nan")
    return out


def eval_subset(test: ImageData, triggered: tuple | None, n: int, seed: int = 0) -> tuple[ImageData, tuple | None]:
    """A fixed random `n` of the test images and `n` of the triggered ones (all when `n` is 0 or covers them), for
    the per-epoch evaluation: the same rows for every epoch and every run of a split, so curves compare."""
    g = torch.Generator().manual_seed(seed)

    def pick(m: int) -> torch.Tensor | None:
        return None if n <= 0 or m <= n else torch.randperm(m, generator=g)[:n].sort().values

    rows = pick(len(test))
    sub = test if rows is None else test.subset(rows.to(test.x.device))
    if triggered is not None:
        t_rows = pick(len(triggered[0]))
        if t_rows is not None:
            triggered = tuple(t[t_rows.to(t.device)] for t in triggered)
    return sub, triggered


def detection(flagged: torch.Tensor | None, scores: torch.Tensor | None, pd: PoisonedData) -> dict[str, Any] | None:
    """TPR, FPR, precision over poison vs clean (covers apart), AUROC of the scores."""
    if flagged is None and scores is None:
        return None
    kind = pd.kind.cpu().numpy()
    poison, cover = kind == POISON, kind == COVER
    clean = ~poison & ~cover
    out: dict[str, Any] = {"n_poison": int(poison.sum()), "n_cover": int(cover.sum()), "n_clean": int(clean.sum())}
    if flagged is not None:
        f = flagged.cpu().numpy().astype(bool)
        tp, fp = int((f & poison).sum()), int((f & clean).sum())
        out.update(
            n_flagged=int(f.sum()),
            tpr=tp / poison.sum() if poison.any() else None,
            fpr=fp / clean.sum() if clean.any() else None,
            precision=tp / f[poison | clean].sum() if f[poison | clean].any() else None,
            cover_flagged=float(f[cover].mean()) if cover.any() else None,
        )
    out["auroc"] = None
    if scores is not None and poison.any() and clean.any():
        from sklearn.metrics import roc_auc_score

        s = scores.detach().cpu().double().numpy()
        keep = poison | clean
        s = np.nan_to_num(s[keep], nan=-np.inf)
        s = np.clip(s, -1e300, 1e300)
        out["auroc"] = float(roc_auc_score(poison[keep], s))
    for k, v in list(out.items()):
        if isinstance(v, (np.floating, np.integer)):
            out[k] = v.item()
    return out


def der(undefended: dict[str, float], defended: dict[str, float]) -> float | None:
    """BackdoorBench's defense effectiveness rating, (max(0,ΔASR) − max(0,ΔCA) + 1) / 2."""
    try:
        d_asr = undefended["asr"] - defended["asr"]
        d_ca = undefended["clean_acc"] - defended["clean_acc"]
    except (KeyError, TypeError):
        return None
    return (max(0.0, d_asr) - max(0.0, d_ca) + 1) / 2


def peak_rss_mb() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (1024 * 1024) if sys.platform == "darwin" else r / 1024
