"""Merge the per-topic result pages in docs/results/ into docs/results.md.

Each benchmark writes its own page (docs/results/<topic>.md) as its pieces
finish; this script only concatenates them, in a fixed order, so that
docs/results.md is one page to read.

    .venv/bin/python benchmarks/collect_results.py
"""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ORDER = ["demo", "attacks", "trainer", "models", "abl", "none", "ct", "bench", "core", "distributed", "hardening"]


def main() -> None:
    pages = sorted((ROOT / "docs" / "results").glob("*.md"), key=lambda p: (
        ORDER.index(p.stem) if p.stem in ORDER else len(ORDER), p.stem))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    parts = ["# Measured results\n",
             "Every number here was measured on this project's 2-core CPU machine unless a section says "
             "otherwise; each section names the command that reproduces it and the commit it ran at. "
             f"Merged from `docs/results/*.md` at commit {commit} by `benchmarks/collect_results.py`.\n",
             "Contents: " + ", ".join(f"[{p.stem}](results/{p.name})" for p in pages) + "\n"]
    for p in pages:
        text = p.read_text().strip()
        # demote headings by one level so the merged page has a single title
        text = "\n".join("#" + line if line.startswith("#") else line for line in text.splitlines())
        parts.append(text + "\n")
    tmp = ROOT / "docs" / ".results.md.tmp"
    tmp.write_text("\n".join(parts))
    tmp.replace(ROOT / "docs" / "results.md")


if __name__ == "__main__":
    main()
