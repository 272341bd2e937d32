"""Issue 6's target for `auto`, read from a bench table: in each (attack, rate) cell, is auto's ASR at least as
low as the best single defense's, at no more than one point lower CA?

    python benchmarks/auto_check.py bench/core/table.csv [--markdown]
    python benchmarks/auto_check.py bench/core/table.csv bench/auto-rank/table.csv --auto auto-rank1

Several tables are read as one (a later table's rows add to, or replace, the earlier ones of the same
cell and defense); `--auto` names the defense entry to judge (the others named auto* are left out of the
singles).

"Best single defense" = the finished non-auto defense (vanilla excluded) with the lowest ASR, ties broken by the
higher CA — read two ways, both printed: "any" takes every defense, "usable" only those whose CA is within
`--usable` points (default 2) of vanilla's in the same cell (a defense that wipes out the model is not a
usable best; when none is usable, that cell is compared with "any"). Cells where auto or every single defense is
unfinished are not comparable. With `--floor` (the JSON `benchmarks/clean_floor.py` writes) both readings are
printed again with each attack's clean floor: an ASR under what a model that never saw poison gives counts as
that floor (auto is then as good when its ASR ≤ max(best's ASR, floor)). The numbers come from the table, which
`cleantrain report` builds from each run's result.json.
"""

from __future__ import annotations

import argparse
import csv
import json
from collections import defaultdict


def load(*paths: str) -> dict[tuple[str, str], dict[str, dict[str, float]]]:
    cells: dict[tuple[str, str], dict[str, dict[str, float]]] = defaultdict(dict)
    for path in paths:
        with open(path) as f:
            for row in csv.DictReader(f):
                if row["runs"] in ("", "0") or row["asr_mean"] == "" or row["ca_mean"] == "":
                    continue
                cells[(row["attack"], row["rate"])][row["defense"]] = {"ca": float(row["ca_mean"]),
                                                                       "asr": float(row["asr_mean"])}
    return cells


def compare(cells, auto: str = "auto", ca_points: float = 1.0, usable: float | None = None,
            floors: dict[str, float] | None = None):
    rows = []
    for (attack, rate), d in cells.items():
        singles = {k: v for k, v in d.items() if k not in (auto, "vanilla") and not k.startswith("auto")}
        if usable is not None and "vanilla" in d:
            kept = {k: v for k, v in singles.items() if v["ca"] >= d["vanilla"]["ca"] - usable / 100}
            singles = kept or singles
        if auto not in d or not singles:
            continue
        best = min(singles, key=lambda k: (singles[k]["asr"], -singles[k]["ca"]))
        a, b = d[auto], singles[best]
        bar = max(b["asr"], (floors or {}).get(attack, 0.0))
        ok = a["asr"] <= bar + 1e-12 and a["ca"] >= b["ca"] - ca_points / 100
        rows.append((attack, rate, best, b, a, ok, sorted(singles)))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("table", nargs="+", help="bench table.csv files, read as one")
    ap.add_argument("--auto", default="auto", help="the defense entry to judge (default auto)")
    ap.add_argument("--markdown", action="store_true", help="print a Markdown table")
    ap.add_argument("--usable", type=float, default=2.0, help="CA points below vanilla a 'usable' defense may lose")
    ap.add_argument("--floor", help="clean-floor JSON (benchmarks/clean_floor.py): also judge with ASR floors")
    args = ap.parse_args()
    cells = load(*args.table)
    floors = None
    if args.floor:
        with open(args.floor) as f:
            floors = {k: float(v["asr"]) for k, v in json.load(f)["floors"].items()}
    for fl in (None, floors) if floors else (None,):
        for label, usable in (("any", None), (f"usable (CA within {args.usable:g} points of vanilla)", args.usable)):
            print(f"\n### best single defense: {label}{', ASR floored at the clean model' if fl else ''}\n")
            report(compare(cells, auto=args.auto, usable=usable, floors=fl), args.markdown)


def report(rows, markdown: bool) -> None:
    if markdown:
        print("| attack | rate | best single (of those finished) | its CA / ASR % | auto CA / ASR % | auto as good |")
        print("|---|---|---|---|---|---|")
    for attack, rate, best, b, a, ok, singles in rows:
        if markdown:
            print(f"| {attack} | {float(rate):.0%} | {best} (of {', '.join(singles)}) | {b['ca']*100:.1f} / "
                  f"{b['asr']*100:.1f} | {a['ca']*100:.1f} / {a['asr']*100:.1f} | {'yes' if ok else 'no'} |")
        else:
            print(f"{attack:16s} {rate:6s} best={best:8s} CA {b['ca']:.3f} ASR {b['asr']:.3f} | auto CA {a['ca']:.3f} "
                  f"ASR {a['asr']:.3f} -> {'ok' if ok else 'MISS'}")
    n_ok = sum(r[5] for r in rows)
    print(f"\nauto as good as the best single defense in {n_ok} of {len(rows)} comparable cells")


if __name__ == "__main__":
    main()
