"""The results table of a bench folder: one row per (attack, rate, defense), mean ± std over seeds.

Numbers come from each run's `result.json` (never from a log); DER and the
cost ratio compare each run with the vanilla run of the same attack, rate
and seed. "wall s" is the run's own wall time; "× vanilla" compares costs,
a run's cost being its wall time plus the shared work it took from the cache
(`cost_seconds`; defenses/shared.py), i.e. what it would take alone.
"CPU ×" is the same ratio in CPU time (`cpu_cost_seconds`), which other
processes on the same cores hardly move: read it when runs shared a busy
machine (a bench with --jobs); "–" for runs recorded before it existed.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from ..data.io import atomic_write
from ..errors import UserError
from ..evaluate.metrics import der
from ..store.artifacts import write_csv
from ..store.runs import RunStore
from .grid import rate_label

# (column, header, how the Markdown shows it)
METRICS = [("ca", "CA %", "pct"), ("asr", "ASR %", "pct"), ("ra", "RA %", "pct"), ("tpr", "TPR %", "pct"),
           ("fpr", "FPR %", "pct"), ("auroc", "AUROC", "f3"), ("der", "DER", "f3"), ("wall", "wall s", "f0"),
           ("wall_ratio", "× vanilla", "x2"), ("cpu_ratio", "CPU ×", "x2")]


def load_manifest(bench: Path) -> list[dict[str, Any]]:
    path = bench / "grid.json"
    if not path.is_file():
        raise UserError(f"{bench}: not a bench folder (no grid.json)")
    try:
        return json.loads(path.read_text())["cells"]
    except (ValueError, KeyError) as e:
        raise UserError(f"{path}: unreadable ({e})")


def read_result(bench: Path, cell_id: str) -> dict[str, Any] | None:
    path = bench / "runs" / cell_id / "result.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        return None


def run_metrics(r: dict[str, Any], vanilla: dict[str, Any] | None) -> dict[str, float | None]:
    det = r.get("detection") or {}
    out = {"ca": r.get("clean_acc"), "asr": r.get("asr"), "ra": r.get("robust_acc"), "tpr": det.get("tpr"),
           "fpr": det.get("fpr"), "auroc": det.get("auroc"), "wall": r.get("wall_seconds"),
           "der": None, "wall_ratio": None, "cpu_ratio": None}
    if vanilla is not None and vanilla is not r:
        out["der"] = der(vanilla, r)
        vw = vanilla.get("cost_seconds", vanilla.get("wall_seconds"))
        rw = r.get("cost_seconds", r.get("wall_seconds"))
        if vw and rw is not None:
            out["wall_ratio"] = rw / vw
        vc, rc = _cpu_cost(vanilla), _cpu_cost(r)
        if vc and rc is not None:
            out["cpu_ratio"] = rc / vc
    elif vanilla is r:
        out["wall_ratio"] = 1.0
        out["cpu_ratio"] = 1.0 if _cpu_cost(r) else None
    return out


def _cpu_cost(r: dict[str, Any]) -> float | None:
    """A run's cost in CPU time, for runs on the CPU (on a GPU the host's CPU time does not measure the work)."""
    return r.get("cpu_cost_seconds") if str(r.get("device", "cpu")).startswith("cpu") else None


def _stats(values: list[float | None]) -> tuple[float | None, float | None]:
    v = [float(x) for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))]
    if not v:
        return None, None
    mean = sum(v) / len(v)
    std = math.sqrt(sum((x - mean) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else 0.0
    return mean, std


def failures(bench: Path) -> dict[str, str]:
    """cell id -> the last recorded error, for cells without a result."""
    db = bench / "runs.db"
    if not db.is_file():
        return {}
    out: dict[str, str] = {}
    for r in RunStore(db).rows("WHERE status = 'failed'"):
        cell = Path(r["out"]).name
        out[cell] = r["error"] or "failed"
    return out


def collect(bench: str | Path) -> list[dict[str, Any]]:
    """The table's rows (plain dicts, means and stds as floats)."""
    bench = Path(bench)
    cells = load_manifest(bench)
    results = {c["id"]: read_result(bench, c["id"]) for c in cells}
    vanilla: dict[tuple, dict[str, Any]] = {}
    for c in cells:
        if c["defense_key"] == "vanilla" and results[c["id"]] is not None:
            vanilla.setdefault((c["data_id"],), results[c["id"]])
    fails = failures(bench)
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for c in cells:
        groups.setdefault((c["attack"], c["rate"], c["defense"]), []).append(c)
    rows = []
    for (attack, rate, defense), members in groups.items():
        per_run = [run_metrics(results[c["id"]], vanilla.get((c["data_id"],)))
                   for c in members if results[c["id"]] is not None]
        row: dict[str, Any] = {"attack": attack, "rate": rate, "defense": defense, "runs": len(per_run),
                               "cells": len(members),
                               "failed": [c["id"] for c in members if results[c["id"]] is None and c["id"] in fails]}
        for key, _, _ in METRICS:
            row[f"{key}_mean"], row[f"{key}_std"] = _stats([m[key] for m in per_run])
        rows.append(row)
    return rows


def _fmt(mean: float | None, std: float | None, how: str, n: int) -> str:
    if mean is None:
        return "–"
    scale, digits, suffix = {"pct": (100, 1, ""), "f3": (1, 3, ""), "f0": (1, 0, ""), "x2": (1, 2, "×")}[how]
    text = f"{mean * scale:.{digits}f}{suffix}"
    if n > 1 and std is not None:
        text += f" ± {std * scale:.{digits}f}"
    return text


def markdown(rows: list[dict[str, Any]], title: str = "", fails: dict[str, str] | None = None) -> str:
    head = ["attack", "rate", "defense", "runs"] + [h for _, h, _ in METRICS]
    lines = []
    if title:
        lines += [f"### {title}", ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        cells = [r["attack"], rate_label(r["rate"]).replace("pct", " %"), r["defense"], f"{r['runs']}/{r['cells']}"]
        cells += [_fmt(r[f"{k}_mean"], r[f"{k}_std"], how, r["runs"]) for k, _, how in METRICS]
        lines.append("| " + " | ".join(cells) + " |")
    failed = [(cid, (fails or {}).get(cid, "")) for r in rows for cid in r["failed"]]
    if failed:
        lines += ["", "Failed runs (no result):", ""]
        for cid, err in failed:
            last = [ln.strip() for ln in err.strip().splitlines() if ln.strip()][-1:] or ["?"]
            lines.append(f"- `{cid}`: {last[0][:200]}")
    lines += ["", "CA, ASR, RA on the test split; TPR/FPR/AUROC of the flagged / scored training samples "
              "(covers excluded); DER and × vanilla against the vanilla run of the same attack, rate and seed; "
              "mean ± std over seeds."]
    return "\n".join(lines) + "\n"


def write_tables(bench: str | Path) -> tuple[Path, Path]:
    """Write `<bench>/table.md` and `<bench>/table.csv` (atomically) from the runs' result.json files."""
    bench = Path(bench)
    rows = collect(bench)
    name = json.loads((bench / "grid.json").read_text()).get("name", bench.name)
    text = markdown(rows, f"Bench `{name}` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})", failures(bench))
    md = atomic_write(bench / "table.md", lambda tmp: Path(tmp).write_text(text))
    header = ["attack", "rate", "defense", "runs", "cells", "failed"]
    for k, _, _ in METRICS:
        header += [f"{k}_mean", f"{k}_std"]
    body = [[r["attack"], r["rate"], r["defense"], r["runs"], r["cells"], ";".join(r["failed"])]
            + [("" if r[h] is None else repr(r[h])) for h in header[6:]] for r in rows]
    csv = write_csv(bench / "table.csv", header, body)
    return md, csv
