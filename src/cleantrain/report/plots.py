"""The report's figures (matplotlib, Agg), each returned as base64 PNG text for an inline <img>."""

from __future__ import annotations

import base64
import io
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from ..data.core import CLEAN, COVER, POISON  # noqa: E402

KINDS = ((CLEAN, "clean", "tab:blue"), (POISON, "poison", "tab:red"), (COVER, "cover", "tab:orange"))
DPI = 80


def png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _epochs(history: list[dict[str, Any]]) -> tuple[list[int], list[dict[str, Any]], list[tuple[int, str]]]:
    """Rows that were evaluated, their position in the whole run, and where each stage starts."""
    xs, rows, stages, last = [], [], [], None
    for i, row in enumerate(history, start=1):
        if row.get("stage") != last:
            stages.append((i, str(row.get("desc", ""))))
            last = row.get("stage")
        if "clean_acc" in row:
            xs.append(i)
            rows.append(row)
    return xs, rows, stages


def history_figure(histories: dict[str, list[dict[str, Any]]], title: str = "") -> str | None:
    """CA and ASR after each epoch (all stages of a defense in order), one line per run."""
    if not any(_epochs(h)[0] for h in histories.values()):
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    for name, h in histories.items():
        xs, rows, stages = _epochs(h)
        if not xs:
            continue
        line, = axes[0].plot(xs, [r["clean_acc"] for r in rows], marker=".", label=name)
        if any(r.get("asr") is not None for r in rows):
            axes[1].plot(xs, [r.get("asr", np.nan) for r in rows], marker=".", color=line.get_color(), label=name)
        if len(histories) == 1:
            for x, desc in stages[1:]:
                for ax in axes:
                    ax.axvline(x - 0.5, color="grey", lw=0.6, ls=":")
                axes[0].text(x - 0.4, 0.02, desc, fontsize=7, color="grey", rotation=90, va="bottom")
    for ax, what in zip(axes, ("clean accuracy (CA)", "attack success rate (ASR)")):
        ax.set_xlabel("epoch (all stages in order)")
        ax.set_ylabel(what)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="best")
    if title:
        fig.suptitle(title, fontsize=10)
    return png(fig)


def _finite(s: np.ndarray) -> np.ndarray:
    """+inf above the largest finite score, -inf and NaN below the smallest."""
    s = np.asarray(s, dtype=float)
    ok = np.isfinite(s)
    if ok.all():
        return s
    if not ok.any():
        return np.zeros_like(s)
    lo, hi = s[ok].min(), s[ok].max()
    return np.where(ok, s, np.where(s == np.inf, hi + 1, lo - 1))


def histogram_figure(panels: list[tuple[str, np.ndarray, np.ndarray | None]], title: str = "") -> str | None:
    """Per-sample score, split by provenance (clean / poison / cover), one panel per run."""
    if not panels:
        return None
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.8 * rows), squeeze=False)
    for ax, (name, scores, kind) in zip(axes.flat, panels):
        s = _finite(scores)
        lo, hi = np.percentile(s, [0.5, 99.5]) if len(s) else (0, 1)
        if hi <= lo:
            lo, hi = lo - 0.5, hi + 0.5
        bins = np.linspace(lo, hi, 50)
        groups = [(name_k, color, s[kind == k]) for k, name_k, color in KINDS] if kind is not None \
            else [("all", "tab:grey", s)]
        for label, color, v in groups:
            if len(v):
                ax.hist(np.clip(v, lo, hi), bins=bins, density=True, alpha=0.55, color=color, label=f"{label} ({len(v)})")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("suspicion score (higher = more suspect)", fontsize=8)
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return png(fig)


def roc_figure(curves: list[tuple[str, np.ndarray, np.ndarray]], title: str = "") -> str | None:
    """ROC of every detector's score: poison (positive) vs clean; covers left out."""
    from sklearn.metrics import roc_auc_score, roc_curve

    drawn = 0
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    for name, scores, kind in curves:
        keep = (kind == POISON) | (kind == CLEAN)
        y = (kind[keep] == POISON).astype(int)
        if y.min() == y.max():
            continue
        s = _finite(scores[keep])
        fpr, tpr, _ = roc_curve(y, s)
        ax.plot(fpr, tpr, label=f"{name} (AUROC {roc_auc_score(y, s):.3f})")
        drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    ax.plot([0, 1], [0, 1], color="grey", lw=0.6, ls=":")
    ax.set_xlabel("false positive rate (clean flagged)")
    ax.set_ylabel("true positive rate (poison flagged)")
    ax.set_xscale("symlog", linthresh=0.01)
    ax.set_xlim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    if title:
        ax.set_title(title, fontsize=10)
    return png(fig)


def gallery_figure(columns: list[tuple[str, torch.Tensor]], title: str = "") -> str:
    """Rows = example images, columns = variants (clean, poisoned, triggered, ...); uint8 N×C×H×W each."""
    n = len(columns[0][1])
    fig, axes = plt.subplots(n, len(columns), figsize=(1.5 * len(columns), 1.5 * n + 0.4), squeeze=False)
    for j, (name, x) in enumerate(columns):
        for i in range(n):
            img = x[i].permute(1, 2, 0).cpu().numpy()
            ax = axes[i, j]
            ax.imshow(img[..., 0] if img.shape[2] == 1 else img, cmap="gray", vmin=0, vmax=255,
                      interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(name, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return png(fig)


def tradeoff_figure(points: list[tuple[str, str, float, float]], title: str = "") -> str | None:
    """ASR against CA, one marker per (group, defense): lower right is better."""
    pts = [p for p in points if p[2] is not None and p[3] is not None]
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(6, 4.2))
    names = sorted({p[1] for p in pts})
    markers = "os^vD<>Pp*hX"
    for i, name in enumerate(names):
        sel = [p for p in pts if p[1] == name]
        ax.scatter([p[2] for p in sel], [p[3] for p in sel], marker=markers[i % len(markers)], label=name, alpha=0.8)
    ax.set_xlabel("clean accuracy (CA)")
    ax.set_ylabel("attack success rate (ASR)")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    if title:
        ax.set_title(title, fontsize=10)
    return png(fig)
