"""Activation Clustering (Chen et al., 2018): poison forms its own small cluster in its target class.

Per class: centre the penultimate features of a normally trained model,
reduce them to `dims` dimensions (PCA, or FastICA), split them by 2-means, and
flag the smaller cluster when it holds less than `max_share` of the class.
The silhouette score of each split is reported only. Score per sample:
1 − (its cluster's share of its class), so members of small clusters rank first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from ..data.core import ImageData
from ..errors import UserError
from .base import DefenseContext, Detection, register_detector
from .shared import normal_model, per_class


@dataclass(frozen=True)
class ACSettings:
    dims: int = 10  # dimensions after projection
    projection: Literal["pca", "ica"] = "pca"
    max_share: float = 0.35  # flag the smaller cluster if it holds less than this share of the class
    base_epochs: int | None = None  # epochs of the shared normally trained model; None = the recipe's

    def check(self) -> None:
        if self.dims < 1 or not 0 < self.max_share <= 0.5:
            raise UserError("ac: 'dims' must be ≥ 1 and 'max_share' in (0, 0.5]")


def two_means(features: np.ndarray, dims: int, projection: str, seed: int) -> tuple[np.ndarray, float]:
    """Cluster labels (0/1) of the centred, projected rows, and the split's silhouette score."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA, FastICA
    from sklearn.metrics import silhouette_score

    x = features - features.mean(0, keepdims=True)
    d = min(dims, x.shape[1], len(x))
    if projection == "ica":
        z = FastICA(d, random_state=seed, whiten="unit-variance", max_iter=400).fit_transform(x)
    else:
        z = PCA(d, random_state=seed).fit_transform(x)
    labels = KMeans(2, n_init=10, random_state=seed).fit_predict(z)
    sil = float(silhouette_score(z, labels, sample_size=min(len(z), 2000), random_state=seed)) \
        if len(set(labels.tolist())) == 2 else float("nan")
    return labels, sil


@register_detector("ac", settings=ACSettings)
def ac(train: ImageData, ctx: DefenseContext, s: ACSettings) -> Detection:
    """Activation Clustering: per class, 2-means on 10-D projected features; flag a cluster under 35 %."""
    s = s or ACSettings()
    model = normal_model(train, ctx, s.base_epochs)
    feats = ctx.trainer.features(model, train).cpu().numpy()
    scores = torch.zeros(len(train))
    flagged = torch.zeros(len(train), dtype=torch.bool)
    per: dict[int, dict] = {}
    for c, idx in per_class(train.y, train.num_classes):
        if len(idx) < 4:
            continue
        labels, sil = two_means(feats[idx.numpy()], s.dims, s.projection, ctx.seed)
        share = np.bincount(labels, minlength=2) / len(labels)
        small = int(np.argmin(share))
        scores[idx] = torch.from_numpy(1.0 - share[labels]).float()
        if share[small] < s.max_share:
            flagged[idx[torch.from_numpy(labels == small)]] = True
        per[c] = {"small_share": round(float(share[small]), 4), "silhouette": round(sil, 4),
                  "flagged": bool(share[small] < s.max_share)}
    return Detection(scores, flagged, {"classes": per})
