"""`cleantrain report DIR`: one self-contained HTML page for a run folder or a bench folder.

Every image is an inline base64 PNG; the page loads nothing from anywhere.
Sections: the results table, a trigger gallery per attack, CA/ASR per epoch,
histograms of each sample's suspicion score (or, for a run without one, its
loss under the final model) split by clean / poison / cover, and the ROC
curve of every detector. Provenance (which sample was poison) is rebuilt
from the run's config (`api.prepare` is deterministic) or read from the
bench's poisoned sets; only this report and evaluation read it.
"""

from __future__ import annotations

import csv
import html
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.io import atomic_write
from ..errors import UserError

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1150px;
color:#222;background:#fff;line-height:1.4}
h1{font-size:1.6em;margin-bottom:0.2em} h2{border-bottom:2px solid #ccd;padding-bottom:3px;margin-top:1.6em}
h3{margin-bottom:0.3em} .meta{color:#555;font-size:0.9em}
table{border-collapse:collapse;font-size:0.85em;margin:8px 0}
th,td{border:1px solid #ccd;padding:3px 7px;text-align:right} th{background:#eef}
td.l,th.l{text-align:left} tr:nth-child(even) td{background:#f7f7fb}
img{max-width:100%;border:1px solid #eee;margin:4px 0} .fig{display:inline-block;vertical-align:top;margin-right:8px}
.note{color:#666;font-size:0.85em} .bad{color:#a00}
"""


@dataclass
class Prov:
    """What the report needs of the data behind a run (provenance is evaluation-only)."""

    kind: np.ndarray  # per training sample
    attack: Any
    target: int
    test: Any  # ImageData


# ------------------------------------------------------------------ helpers
def config_from_dict(d: dict[str, Any]):
    from ..api import make_config

    flat = {k: v for k, v in d.items() if k not in ("train", "attack_opts", "defense_opts")}
    flat.update({f"train.{k}": v for k, v in (d.get("train") or {}).items()})
    flat.update({f"attack.{k}": v for k, v in (d.get("attack_opts") or {}).items()})
    flat.update({f"defense.{k}": v for k, v in (d.get("defense_opts") or {}).items()})
    return make_config(None, flat)


def _resolve_data(cfg_d: dict[str, Any], bases: list[Path]) -> dict[str, Any]:
    data = cfg_d.get("data")
    if data and not Path(data).is_absolute():
        for base in bases:
            if (base / data).is_file():
                return {**cfg_d, "data": str(base / data)}
    return cfg_d


def provenance(cfg_d: dict[str, Any], bases: list[Path]) -> Prov | None:
    """Rebuild the poisoned training set of a run (deterministic given its config)."""
    from ..api import prepare

    try:
        prep = prepare(config_from_dict(_resolve_data(cfg_d, bases)))
    except (UserError, OSError) as e:
        print(f"report: provenance unavailable ({e})")
        return None
    return Prov(prep.poisoned.kind.cpu().numpy(), prep.attack, prep.target, prep.test)


def read_scores(run: Path) -> np.ndarray | None:
    """suspects.csv as a score per sample index (NaN where missing)."""
    path = run / "suspects.csv"
    if not path.is_file():
        return None
    idx, val = [], []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            idx.append(int(row["index"]))
            val.append(float(row["score"]))
    if not idx:
        return None
    s = np.full(max(idx) + 1, np.nan)
    s[idx] = val
    return s


def final_model_loss(run: Path, cfg_d: dict[str, Any], bases: list[Path]) -> np.ndarray | None:
    """Each training sample's loss under the run's final model (for runs without a score)."""
    from ..api import prepare
    from ..store.artifacts import load_model
    from ..train.settings import TrainSettings
    from ..train.trainer import Trainer

    if not (run / "model.safetensors").is_file():
        return None
    try:
        model, _ = load_model(run / "model.safetensors")
        prep = prepare(config_from_dict(_resolve_data(cfg_d, bases)))
        trainer = Trainer(TrainSettings(threads=(cfg_d.get("train") or {}).get("threads", 0)), "cpu", progress=False)
        return trainer.per_sample_loss(model, prep.poisoned.data).cpu().numpy()
    except (UserError, OSError) as e:
        print(f"report: per-sample loss unavailable ({e})")
        return None


def gallery_columns(attack, test, target: int, n: int = 4, seed: int = 0) -> list[tuple[str, torch.Tensor]]:
    """Clean vs triggered examples; the attacks' own gallery columns when that module is there."""
    mask = attack.test_mask(test.y.cpu(), target)
    idx = torch.nonzero(mask).flatten()
    g = torch.Generator().manual_seed(seed)
    pick = idx[torch.randperm(len(idx), generator=g)[:n]].sort().values
    x = test.x.cpu()[pick]
    try:
        from .gallery import _columns

        return _columns(attack, x, np.random.default_rng(seed))
    except ImportError:
        return [("clean", x), ("triggered (test)", attack.apply(x))]


def _img(b64: str | None, alt: str) -> str:
    if not b64:
        return ""
    return f'<div class="fig"><img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}"></div>'


def _table(rows: list[dict[str, Any]], fails: dict[str, str] | None = None) -> str:
    from ..bench.grid import rate_label
    from ..bench.table import METRICS, _fmt

    head = ["attack", "rate", "defense", "runs"] + [h for _, h, _ in METRICS]
    out = ["<table><tr>" + "".join(f'<th class="{"l" if i < 3 else ""}">{html.escape(h)}</th>'
                                   for i, h in enumerate(head)) + "</tr>"]
    for r in rows:
        vals = [r["attack"], rate_label(r["rate"]).replace("pct", " %"), r["defense"], f"{r['runs']}/{r['cells']}"]
        vals += [_fmt(r[f"{k}_mean"], r[f"{k}_std"], how, r["runs"]) for k, _, how in METRICS]
        out.append("<tr>" + "".join(f'<td class="{"l" if i < 3 else ""}">{html.escape(str(v))}</td>'
                                    for i, v in enumerate(vals)) + "</tr>")
    out.append("</table>")
    failed = [(c, (fails or {}).get(c, "")) for r in rows for c in r.get("failed", [])]
    if failed:
        out.append('<p class="bad">Failed runs (no result):</p><ul>')
        for cid, err in failed:
            last = [ln.strip() for ln in err.strip().splitlines() if ln.strip()][-1:] or ["?"]
            out.append(f"<li><code>{html.escape(cid)}</code>: {html.escape(last[0][:300])}</li>")
        out.append("</ul>")
    return "\n".join(out)


def page(title: str, meta: str, sections: list[tuple[str, str]]) -> str:
    body = "\n".join(f"<h2>{html.escape(h)}</h2>\n{content}" for h, content in sections if content)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{CSS}</style></head><body>\n<h1>{html.escape(title)}</h1>\n"
            f'<p class="meta">{meta}</p>\n{body}\n</body></html>\n')


# ------------------------------------------------------------------ run report
def run_page(run: Path) -> str:
    from ..bench.table import METRICS, _stats, run_metrics
    from .plots import gallery_figure, histogram_figure, history_figure, roc_figure

    try:
        result = json.loads((run / "result.json").read_text())
    except ValueError as e:
        raise UserError(f"{run / 'result.json'}: unreadable ({e})")
    cfg_d = result.get("config") or {}
    bases = [Path.cwd(), run.parent.parent, run.parent, run]
    prov = provenance(cfg_d, bases)
    name = cfg_d.get("defense", "?")
    attack = cfg_d.get("attack") if (cfg_d.get("attack") and prov and prov.attack) else None
    row: dict[str, Any] = {"attack": attack or "clean", "rate": cfg_d.get("rate", 0), "defense": name,
                           "runs": 1, "cells": 1, "failed": []}
    m = run_metrics(result, None)  # one run alone: no vanilla to compare with (DER and the ratios stay empty)
    for k, _, _ in METRICS:
        row[f"{k}_mean"], row[f"{k}_std"] = _stats([m[k]])
    sections = [("Result", _table([row]) + _details(result))]
    if prov is not None and prov.attack is not None:
        cols = gallery_columns(prov.attack, prov.test, prov.target, seed=cfg_d.get("seed", 0))
        sections.append(("Trigger gallery", _img(gallery_figure(cols, attack or ""), "trigger gallery")))
    sections.append(("CA and ASR per epoch", _img(history_figure({name: result.get("history") or []}), "history")))
    scores = read_scores(run)
    label = "suspicion score"
    if scores is None:
        scores, label = final_model_loss(run, cfg_d, bases), "loss under the final model"
        if scores is not None:
            scores = -scores  # low loss = suspicious (ABL's observation), so higher = more suspect
            label = "−loss under the final model (no detector score)"
    kind = prov.kind if prov is not None and scores is not None and len(prov.kind) == len(scores) else None
    if scores is not None:
        sections.append((f"Per-sample {label} by provenance",
                         _img(histogram_figure([(f"{name}: {label}", scores, kind)]), "histogram")))
        if kind is not None and (run / "suspects.csv").is_file():
            sections.append(("ROC of the detector", _img(roc_figure([(name, scores, kind)]), "roc")))
    meta = (f"Run folder <code>{html.escape(str(run))}</code> · dataset {html.escape(str(cfg_d.get('dataset')))} · "
            f"model {html.escape(str(cfg_d.get('model')))} · seed {cfg_d.get('seed')} · "
            f"written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    return page(f"cleantrain run: {name} on {attack or 'clean data'} {_rate(cfg_d)}", meta, sections)


def _rate(cfg_d: dict[str, Any]) -> str:
    return f"{cfg_d['rate'] * 100:g} %" if cfg_d.get("attack") and cfg_d.get("rate") else ""


def _details(result: dict[str, Any]) -> str:
    keep = {k: result.get(k) for k in ("n_train", "n_test", "poison_counts", "clean_source", "device",
                                       "peak_rss_mb", "defense_info") if result.get(k) is not None}
    text = json.dumps(keep, indent=1, default=str)
    if len(text) > 4000:
        text = text[:4000] + "\n…"
    return f'<details><summary class="note">details</summary><pre>{html.escape(text)}</pre></details>'


# ------------------------------------------------------------------ bench report
def bench_page(bench: Path) -> str:
    from ..bench.grid import rate_label
    from ..bench.table import collect, failures, load_manifest, read_result
    from .plots import gallery_figure, histogram_figure, history_figure, roc_figure, tradeoff_figure

    cells = load_manifest(bench)
    rows = collect(bench)
    name = json.loads((bench / "grid.json").read_text()).get("name", bench.name)
    sections = [("Results", _table(rows, failures(bench)) +
                 '<p class="note">CA, ASR, RA on the test split; TPR/FPR/AUROC of the flagged / scored training '
                 "samples (covers excluded); DER and × vanilla against the vanilla run of the same attack, rate "
                 "and seed; mean ± std over seeds.</p>")]
    rates = sorted({r["rate"] for r in rows}, reverse=True)
    sections.append(("ASR against CA", "".join(_img(tradeoff_figure(
        [(r["attack"], r["defense"], r["ca_mean"], r["asr_mean"]) for r in rows if r["rate"] == rate],
        f"poisoning rate {rate * 100:g} %"), "tradeoff") for rate in rates)))
    results = {c["id"]: read_result(bench, c["id"]) for c in cells}
    by_data: dict[str, list[dict[str, Any]]] = {}
    for c in cells:
        by_data.setdefault(c["data_id"], []).append(c)
    provs: dict[str, Prov | None] = {}
    for data_id, members in by_data.items():
        done = [c for c in members if results[c["id"]] is not None]
        provs[data_id] = provenance(results[done[0]["id"]]["config"], [bench]) if done else None
    gallery, seen = [], set()
    for data_id, members in by_data.items():
        att = members[0]["attack"]
        p = provs[data_id]
        if att in seen or p is None or p.attack is None:
            continue
        seen.add(att)
        gallery.append(f"<h3>{html.escape(att)}</h3>" + _img(gallery_figure(
            gallery_columns(p.attack, p.test, p.target, seed=members[0]["seed"])), f"gallery {att}"))
    sections.append(("Trigger gallery", "\n".join(gallery)))
    per = []
    for data_id, members in by_data.items():
        c0 = members[0]
        title = f"{c0['attack']}, {rate_label(c0['rate']).replace('pct', ' %')}, seed {c0['seed']}"
        hist = {c["defense"]: results[c["id"]].get("history") or [] for c in members if results[c["id"]]}
        p = provs[data_id]
        panels, curves = [], []
        for c in members:
            s = read_scores(bench / "runs" / c["id"]) if results[c["id"]] else None
            if s is None:
                continue
            kind = p.kind if p is not None and len(p.kind) == len(s) else None
            panels.append((c["defense"], s, kind))
            if kind is not None:
                curves.append((c["defense"], s, kind))
        per.append(f"<h3>{html.escape(title)}</h3>" + _img(history_figure(hist), f"history {title}")
                   + _img(histogram_figure(panels, f"suspicion scores: {title}"), f"histograms {title}")
                   + _img(roc_figure(curves, f"ROC: {title}"), f"roc {title}"))
    sections.append(("Per attack and rate: CA/ASR per epoch, score histograms, ROC curves", "\n".join(per)))
    meta = (f"Bench folder <code>{html.escape(str(bench))}</code> · {len(cells)} runs in the grid, "
            f"{sum(r is not None for r in results.values())} done · "
            f"written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    return page(f"cleantrain bench: {name}", meta, sections)


def write_report(path: Path, out: Path | None = None) -> Path:
    path = Path(path)
    if (path / "grid.json").is_file():
        from ..bench.table import write_tables

        write_tables(path)  # `cleantrain report` also rebuilds the table
        text = bench_page(path)
    elif (path / "result.json").is_file():
        text = run_page(path)
    else:
        raise UserError(f"{str(path)!r} is neither a run folder (result.json) nor a bench folder (grid.json)")
    out = out or path / "report.html"
    return atomic_write(out, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
