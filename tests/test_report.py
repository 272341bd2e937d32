"""The HTML report: written, self-contained, holds the table; renders in headless Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from cleantrain import api
from cleantrain.api import write_suspects
from cleantrain.bench import parse_grid, run_grid
from cleantrain.errors import UserError

GRID = {"name": "rep", "dataset": "fashion-mnist", "train_size": 600, "test_size": 200, "seeds": [0],
        "rates": [0.1], "train": {"epochs": 1, "threads": 1}, "attacks": ["badnets"], "defenses": ["vanilla"]}
CELL = "badnets-10pct-vanilla-s0"


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("rep") / "bench"
    r = run_grid(parse_grid(GRID), out, progress=False, log=None)
    assert r["done"] == 1
    # a real ranking to plot: each sample's loss under the trained model (low loss = suspect, as ABL)
    import torch

    from cleantrain.report.html import config_from_dict, final_model_loss

    run = out / "runs" / CELL
    cfg_d = __import__("json").loads((run / "result.json").read_text())["config"]
    loss = final_model_loss(run, cfg_d, [out])
    write_suspects(run / "suspects.csv", torch.from_numpy(-loss), torch.from_numpy(loss < np.quantile(loss, 0.1)))
    config_from_dict(cfg_d)  # the run's config round-trips
    return out


def _self_contained(text: str) -> None:
    srcs = re.findall(r'\bsrc\s*=\s*"([^"]*)"', text)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert not re.search(r"\bhref\s*=", text)
    assert not re.search(r"<(script|link|iframe)\b", text, re.I)
    assert "url(" not in text and "@import" not in text


def test_bench_report_is_self_contained_with_table(bench_dir):
    path = api.report(bench_dir)
    text = path.read_text()
    _self_contained(text)
    res = __import__("json").loads((bench_dir / "runs" / CELL / "result.json").read_text())
    row = re.search(r"<tr><td[^>]*>badnets</td>.*?</tr>", text)
    assert row and f">{res['clean_acc'] * 100:.1f}<" in row.group(0) and f">{res['asr'] * 100:.1f}<" in row.group(0)
    for heading in ("Results", "Trigger gallery", "ASR against CA", "ROC"):
        assert heading in text
    assert len(re.findall(r"data:image/png;base64,", text)) >= 5  # tradeoff, gallery, history, histogram, ROC
    assert (bench_dir / "table.md").is_file()  # report rebuilds the table too


def test_run_report_is_self_contained(bench_dir, tmp_path):
    out = api.report(bench_dir / "runs" / CELL, tmp_path / "run.html")
    text = out.read_text()
    _self_contained(text)
    assert "Trigger gallery" in text and "ROC of the detector" in text and "<table>" in text
    with pytest.raises(UserError, match="neither a run folder"):
        api.report(tmp_path)


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.browser
@pytest.mark.skipif(_chromium() is None, reason="headless Chromium not installed (apt-get install chromium)")
def test_report_renders_in_headless_chromium(bench_dir, tmp_path):
    from PIL import Image

    page = api.report(bench_dir)
    shot = tmp_path / "shot.png"
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1200,2000",
           page.resolve().as_uri()]
    subprocess.run(cmd, capture_output=True, timeout=120)
    assert shot.is_file(), "Chromium wrote no screenshot"
    px = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert px.shape == (2000, 1200)
    assert px.var() > 200  # not a blank page
    assert (px < 128).mean() > 0.02  # text, tables and figures drawn
