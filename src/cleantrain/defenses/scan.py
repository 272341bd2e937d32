"""SCAn (Tang et al., USENIX Security 2021): statistical contamination analysis of the features.

A global model r = μ_class + ε (between-class covariance S_μ, within-class
S_ε) is fitted by EM on the reserved clean set's penultimate features (of a
normally trained model). Per class, D ∪ C's features are split into two
groups by an EM in the S_ε metric, and a likelihood-ratio statistic says how
much better two groups explain the class than one. The statistics are
normalised by their maximum and turned into a MAD anomaly index
|a − median| / (1.4826·MAD) (two-sided, as published); a class whose index
exceeds `threshold` (e) is flagged, and in it the group holding fewer of the
reserved clean samples. Score per sample: its class's anomaly index when it is
in that class's group with fewer clean samples, else 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..data.core import ImageData
from ..errors import UserError
from .base import DefenseContext, Detection, register_detector
from .shared import normal_model


@dataclass(frozen=True)
class SCAnSettings:
    threshold: float = math.e  # flag classes whose anomaly index exceeds this
    em_iters: int = 100  # EM iterations (global model and each split)
    tol: float = 1e-5  # EM stops when the covariances move less than this
    base_epochs: int | None = None  # epochs of the shared normally trained model; None = the recipe's

    def check(self) -> None:
        if self.threshold <= 0 or self.em_iters < 1 or self.tol <= 0:
            raise UserError("scan: 'threshold', 'em_iters' and 'tol' must be positive")


def _cov(z: np.ndarray) -> np.ndarray:
    return np.cov(z, rowvar=False)


def global_model(x: np.ndarray, y: np.ndarray, k: int, iters: int, tol: float) -> tuple[np.ndarray, np.ndarray]:
    """(S_μ, S_ε) by EM over the labelled clean features."""
    x = x - x.mean(0)
    onehot = np.eye(k)[y]
    counts = onehot.sum(0)
    sums = onehot.T @ x
    means = sums / np.maximum(counts, 1)[:, None]
    su, se = _cov(means[y]), _cov(x - means[y])
    for _ in range(iters):
        f = np.linalg.pinv(se)
        suf = su @ f
        mu = np.zeros_like(means)
        for c in np.flatnonzero(counts):
            g = -np.linalg.pinv(counts[c] * su + se) @ suf
            mu[c] = -(se @ g @ sums[c])
        new_su, new_se = _cov(mu[y]), _cov(x - mu[y])
        moved = np.linalg.norm(new_su - su) + np.linalg.norm(new_se - se)
        su, se = new_su, new_se
        if moved < tol:
            break
    return su, se


def split_two(x: np.ndarray, f: np.ndarray, iters: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Two groups (bool mask of group 1) and their means, by EM in the metric F = S_ε⁺."""
    n = len(x)
    g1 = rng.random(n) >= 0.5
    if n < 2:
        return np.zeros(n, dtype=bool), x.mean(0), x.mean(0)
    g1[0], g1[-1] = True, False
    u1, u2 = x[g1].mean(0), x[~g1].mean(0)
    for _ in range(iters):
        u1, u2 = x[g1].mean(0), x[~g1].mean(0)
        bias = u1 @ f @ u1 - u2 @ f @ u2
        new = bias - 2 * (x @ f @ (u1 - u2)) < 0
        if new.all() or not new.any() or (new == g1).all():
            break
        g1 = new
    return g1, u1, u2


def split_statistic(x: np.ndarray, su: np.ndarray, se: np.ndarray, f: np.ndarray, g1: np.ndarray,
                    u1: np.ndarray, u2: np.ndarray) -> float:
    """Log-likelihood ratio per sample of the two-group model against the one-identity model."""
    n = len(x)
    g = -np.linalg.pinv(n * su + se)
    mu = -(se @ g @ x.sum(0))
    n1 = int(g1.sum())
    sc = n1 * (mu @ f @ mu - u1 @ f @ u1) + (n - n1) * (mu @ f @ mu - u2 @ f @ u2)
    own = np.where(g1[:, None], u1[None, :], u2[None, :])
    sc -= 2 * np.einsum("ij,jk,ik->", x, f, mu[None, :] - own)
    return float(sc / n)


def anomaly_index(a: np.ndarray) -> np.ndarray:
    med = np.median(a)
    mad = np.median(np.abs(a - med)) * 1.4826
    return np.abs(a - med) / max(mad, 1e-12)


@register_detector("scan", settings=SCAnSettings, needs_clean=True)
def scan(train: ImageData, ctx: DefenseContext, s: SCAnSettings) -> Detection:
    """SCAn: EM global model on the clean set; flag classes whose two-group statistic is anomalous."""
    s = s or SCAnSettings()
    clean = ctx.need_clean("scan")
    k, n = train.num_classes, len(train)
    model = normal_model(train, ctx, s.base_epochs)
    fd = ctx.trainer.features(model, train).double().cpu().numpy()
    fc = ctx.trainer.features(model, clean).double().cpu().numpy()
    yd, yc = train.y.cpu().numpy(), clean.y.cpu().numpy()
    su, se = global_model(fc, yc, k, s.em_iters, s.tol)
    f = np.linalg.pinv(se)
    allx = np.concatenate([fd, fc])
    allx -= allx.mean(0)
    ally = np.concatenate([yd, yc])
    is_clean = np.arange(len(ally)) >= n
    rng = np.random.default_rng(ctx.seed)
    stats = np.zeros(k)
    suspect_group = np.zeros(len(ally), dtype=bool)
    for c in range(k):
        rows = np.flatnonzero(ally == c)
        if len(rows) < 2:
            continue
        g1, u1, u2 = split_two(allx[rows], f, s.em_iters, rng)
        stats[c] = split_statistic(allx[rows], su, se, f, g1, u1, u2)
        clean1, clean2 = int((g1 & is_clean[rows]).sum()), int((~g1 & is_clean[rows]).sum())
        suspect_group[rows] = g1 if clean1 < clean2 else ~g1
    index = anomaly_index(stats / max(np.max(stats), 1e-12))
    flagged_class = index > s.threshold
    d_rows = suspect_group[:n]
    flagged = d_rows & flagged_class[yd]
    scores = np.where(d_rows, index[yd], 0.0)
    return Detection(torch.from_numpy(scores).float(), torch.from_numpy(flagged),
                     {"anomaly_index": [round(float(v), 4) for v in index],
                      "flagged_classes": np.flatnonzero(flagged_class).tolist()})
