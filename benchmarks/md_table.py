"""A committed Markdown results table (`cleantrain report`'s table.md, pasted under a heading of a docs page) back
into table.csv columns, for `benchmarks/auto_check.py` when the bench folder it came from is not on this machine.

    python benchmarks/md_table.py docs/results/core.md --section "## Table" > core-table.csv
    python benchmarks/auto_check.py core-table.csv bench/auto-full-check/table.csv --floor docs/results/clean_floor.json

Only the columns auto_check reads are filled (attack, rate, defense, runs, ca_mean, asr_mean), from the table's
rounded numbers (CA and ASR to 0.1 point): two defenses that tie there may not tie in the runs' result.json.
"""

from __future__ import annotations

import argparse
import csv
import sys


def fraction(percent: str) -> str:
    """A table's "91.9" as table.csv's "0.919"; "–" (unfinished) as empty."""
    return "" if percent in ("", "–", "-") else repr(float(percent.rstrip(" %")) / 100)


def rows(text: str, section: str) -> list[dict[str, str]]:
    """The rows of the first table after the line `section` (a heading), as table.csv fields."""
    lines = text.splitlines()
    if section not in lines:
        raise SystemExit(f"no line {section!r} in the file")
    out, started = [], False
    for line in lines[lines.index(section) + 1:]:
        if not line.startswith("|"):
            if started:
                break
            continue
        started = True
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] == "attack" or set(cells[0]) <= {"-", ":"}:
            continue  # header, rule
        attack, rate, defense, runs, ca, asr = cells[:6]
        out.append({"attack": attack, "rate": fraction(rate), "defense": defense, "runs": runs.split("/")[0],
                    "ca_mean": fraction(ca), "asr_mean": fraction(asr)})
    if not out:
        raise SystemExit(f"no table after {section!r}")
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("page", help="a Markdown file")
    ap.add_argument("--section", required=True, help="the heading line the table follows, e.g. '## Table'")
    args = ap.parse_args(argv)
    with open(args.page, encoding="utf-8") as f:
        table = rows(f.read(), args.section)
    w = csv.DictWriter(sys.stdout, fieldnames=list(table[0]))
    w.writeheader()
    w.writerows(table)


if __name__ == "__main__":
    main()
