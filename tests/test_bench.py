"""The bench: resumable after SIGKILL, failures recorded, the table equals the runs' result.json."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cleantrain.bench import load_grid, parse_grid
from cleantrain.bench.grid import validate
from cleantrain.bench.table import run_metrics
from cleantrain.errors import UserError
from cleantrain.evaluate.metrics import der
from cleantrain.store.runs import RunStore

GRID = """
name: tiny
dataset: fashion-mnist
train_size: 800
test_size: 200
seeds: [0]
rates: [0.1]
train: {epochs: 1, threads: 1, eval_every: 0}
attacks: [badnets]
defenses:
  - vanilla
  - {key: vanilla, name: broken, set: {clean_data: /nonexistent/clean.npz}}
  - {key: vanilla, name: slow, train: {epochs: 3, lr: 0.02}}
"""
FIRST, BROKEN, SLOW = "badnets-10pct-vanilla-s0", "badnets-10pct-broken-s0", "badnets-10pct-slow-s0"


def _bench(grid: Path, out: Path) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "cleantrain", "bench", "--grid", str(grid), "--out", str(out),
                             "--quiet"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _workers_in(out: Path) -> list[int]:
    """Live bench workers whose working folder is `out`."""
    pids = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            cmd = (p / "cmdline").read_bytes()
            if b"cleantrain.bench.worker" in cmd and os.readlink(p / "cwd") == str(out):
                pids.append(int(p.name))
        except OSError:
            continue
    return pids


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    grid, out = tmp / "tiny.yaml", (tmp / "out").resolve()
    grid.write_text(GRID)
    proc = _bench(grid, out)
    first = out / "runs" / FIRST / "result.json"
    deadline = time.time() + 120
    while not first.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert first.is_file(), proc.communicate()[0] if proc.poll() is not None else "first run did not finish"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(1.0)
    orphans = _workers_in(out)
    unfinished_at_kill = [c for c in (BROKEN, SLOW) if not (out / "runs" / c / "result.json").is_file()]
    st = first.stat()
    before = (st.st_mtime_ns, st.st_ino)
    second = _bench(grid, out)
    text, _ = second.communicate(timeout=300)
    return {"out": out, "before": before, "rc": second.returncode, "text": text, "orphans": orphans,
            "unfinished_at_kill": unfinished_at_kill}


def test_sigkill_mid_grid_resumes_only_unfinished_runs(killed_and_resumed):
    r = killed_and_resumed
    out = r["out"]
    assert r["orphans"] == [], "a run outlived the killed bench"
    assert SLOW in r["unfinished_at_kill"]
    st = (out / "runs" / FIRST / "result.json").stat()
    assert (st.st_mtime_ns, st.st_ino) == r["before"], "the finished run was redone"
    assert (out / "logs" / f"{FIRST}.log").read_text().count("=== start") == 1
    assert (out / "runs" / SLOW / "result.json").is_file()
    slow = json.loads((out / "runs" / SLOW / "result.json").read_text())
    assert slow["config"]["train"]["epochs"] == 3 and slow["config"]["data"] == "data/badnets-10pct-s0.npz"
    assert "2/3 runs done (1 earlier, 1 now, 1 failed)" in r["text"]
    assert r["rc"] == 1  # a failed cell makes the exit status non-zero
    # the poisoned set was made once and shared
    assert sorted(p.name for p in (out / "data").iterdir()) == ["badnets-10pct-s0.npz"]


def test_failing_cell_is_recorded_and_the_grid_goes_on(killed_and_resumed):
    out = killed_and_resumed["out"]
    rows = RunStore(out / "runs.db").rows()
    broken = [x for x in rows if x["out"].endswith(BROKEN)]
    assert broken and all(x["status"] == "failed" for x in broken)
    assert "nonexistent" in broken[-1]["error"]
    done = {Path(x["out"]).name for x in rows if x["status"] == "done"}
    assert done == {FIRST, SLOW}  # the cell after the failing one ran
    assert sum(1 for x in rows if x["out"].endswith(FIRST)) == 1  # recorded once, never rerun
    md = (out / "table.md").read_text()
    assert f"`{BROKEN}`" in md and "not found" in md


def test_table_equals_result_json(killed_and_resumed):
    out = killed_and_resumed["out"]
    with open(out / "table.csv") as f:
        rows = {r["defense"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"vanilla", "broken", "slow"}
    van = json.loads((out / "runs" / FIRST / "result.json").read_text())
    slow = json.loads((out / "runs" / SLOW / "result.json").read_text())
    for name, res in (("vanilla", van), ("slow", slow)):
        row = rows[name]
        assert float(row["ca_mean"]) == res["clean_acc"]
        assert float(row["asr_mean"]) == res["asr"]
        assert float(row["ra_mean"]) == res["robust_acc"]
        assert float(row["wall_mean"]) == res["wall_seconds"]
        assert row["runs"] == "1"
    assert float(rows["slow"]["der_mean"]) == der(van, slow)
    assert float(rows["slow"]["wall_ratio_mean"]) == slow["cost_seconds"] / van["cost_seconds"]
    assert float(rows["slow"]["cpu_ratio_mean"]) == slow["cpu_cost_seconds"] / van["cpu_cost_seconds"]
    assert float(rows["vanilla"]["cpu_ratio_mean"]) == 1.0
    assert run_metrics(dict(slow, device="cuda:0"), van)["cpu_ratio"] is None  # host CPU time says nothing on a GPU
    for res in (van, slow):  # a run's cost: its own wall time plus the shared work it took from the cache
        assert res["cost_seconds"] == round(res["wall_seconds"] + res["reused_seconds"], 3)
    assert rows["broken"]["runs"] == "0" and rows["broken"]["ca_mean"] == ""
    md = (out / "table.md").read_text()
    assert f"| badnets | 10 % | slow | 1/1 | {slow['clean_acc'] * 100:.1f} | {slow['asr'] * 100:.1f} |" in md


def test_grid_expands_per_rate_defenses_and_validates(tmp_path):
    g = parse_grid({"attacks": ["badnets"], "rates": [0.1, 0.01], "seeds": [0, 1], "train_size": 1000,
                    "defenses": ["vanilla", {"key": "vanilla", "name": "base", "rates": [0.01]}]})
    ids = [c.id for c in g.cells]
    assert len(ids) == 6 and "badnets-1pct-base-s1" in ids and "badnets-10pct-base-s0" not in ids
    assert set(g.poison) == {"badnets-10pct-s0", "badnets-1pct-s0", "badnets-10pct-s1", "badnets-1pct-s1"}
    assert all(p["train_size"] == 1000 for p in g.poison.values())
    g = parse_grid({"attacks": ["badnets", {"key": "sig", "rates": [0.01]}], "rates": [0.1, 0.01],
                    "defenses": ["vanilla", {"key": "vanilla", "name": "base", "rates": [0.1]}]})
    assert sorted(c.id for c in g.cells) == ["badnets-10pct-base-s0", "badnets-10pct-vanilla-s0",
                                             "badnets-1pct-vanilla-s0", "sig-1pct-vanilla-s0"]
    with pytest.raises(UserError, match="no cells"):
        parse_grid({"attacks": [{"key": "sig", "rates": [0.01]}], "rates": [0.1], "defenses": ["vanilla"]})
    with pytest.raises(UserError, match="attack 'sig': unknown field 'train'"):
        parse_grid({"attacks": [{"key": "sig", "train": {"epochs": 1}}], "rates": [0.1], "defenses": ["vanilla"]})
    with pytest.raises(UserError, match="unknown field 'attack'"):
        parse_grid({"attack": "badnets", "rates": [0.1], "defenses": ["vanilla"]})
    with pytest.raises(UserError, match="rates"):
        parse_grid({"attacks": ["badnets"], "rates": [1.5], "defenses": ["vanilla"]})
    with pytest.raises(UserError, match="unknown defense 'nope'"):
        validate(parse_grid({"attacks": ["badnets"], "rates": [0.1], "defenses": ["nope"]}))
    with pytest.raises(UserError, match="lrr"):
        validate(parse_grid({"attacks": ["badnets"], "rates": [0.1], "defenses": ["vanilla"], "train": {"lrr": 1}}))


def test_shipped_grids_are_valid():
    root = Path(__file__).resolve().parent.parent / "benchmarks" / "grids"
    counts = {"core.yaml": 84, "smoke.yaml": 30, "issues.yaml": 104, "issues-part1.yaml": 14, "issues-part2.yaml": 22,
              "ct-tail.yaml": 22, "ct-fast.yaml": 6, "none5.yaml": 10, "auto-rank.yaml": 36, "abl-wrn.yaml": 2,
              "auto-target.yaml": 24, "auto-heldout.yaml": 23,
              "auto-seed1.yaml": 6, "auto-seed1-hard.yaml": 6, "auto-all2all.yaml": 4, "auto-spread-check.yaml": 2,
              "auto-retarget-check.yaml": 2, "core-10k.yaml": 84, "auto-clean.yaml": 5,
              "auto-clean-full.yaml": 2, "auto-clean-seeds.yaml": 4, "auto-target6.yaml": 8,
              "auto-full-check.yaml": 24, "auto-confirmed-10k.yaml": 24,
              "auto-confirmed-full.yaml": 12, "core-10k-seeds.yaml": 168,
              "core-10k-1pct-seeds.yaml": 162, "auto-transfer-oos.yaml": 4, "gpu-smoke.yaml": 18}
    assert {p.name for p in root.glob("*.yaml")} == set(counts)  # a new grid gets a count here
    for name, n in counts.items():
        grid = load_grid(root / name)
        assert len(grid.cells) == n
        validate(grid)  # every attack, defense, preset and setting exists


def test_shipped_configs_are_valid():
    from cleantrain.api import make_config
    from cleantrain.defenses.base import defense_settings

    configs = sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.yaml"))
    assert configs
    for path in configs:
        cfg = make_config(path)
        defense_settings(cfg.defense, cfg.defense_opts)  # every key and value checked


def benchmark_script(name: str):
    """A script of benchmarks/ (not a package), loaded as a module."""
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_benchmark_scripts_load():
    """Every script of benchmarks/ imports what it names (one had imported a function auto.py no longer had). In a
    fresh interpreter: loaded into this one, they left state that made test_distributed's torchrun launch hang."""
    import subprocess
    import sys

    scripts = sorted((Path(__file__).resolve().parent.parent / "benchmarks").glob("*.py"))
    assert scripts
    code = ("import importlib.util, sys\n"
            "for path in sys.argv[1:]:\n"
            "    spec = importlib.util.spec_from_file_location('script', path)\n"
            "    mod = importlib.util.module_from_spec(spec)\n"
            "    spec.loader.exec_module(mod)\n"
            "    assert callable(getattr(mod, 'main', None)), path\n")
    p = subprocess.run([sys.executable, "-c", code, *map(str, scripts)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]


def test_auto_check_reads_tables_as_one(tmp_path):
    """benchmarks/auto_check.py: the best single defense per cell, auto judged against it, two tables merged."""
    mod = benchmark_script("auto_check")
    head = "attack,rate,defense,runs,ca_mean,asr_mean\n"
    (tmp_path / "a.csv").write_text(head + "badnets,0.1,vanilla,1,0.92,1.0\nbadnets,0.1,abl,1,0.91,0.0\n"
                                    "badnets,0.1,ct,1,0.80,0.0\nbadnets,0.1,auto,1,0.90,0.02\n"
                                    "sig,0.1,vanilla,1,0.9,0.9\nsig,0.1,none,0,,\n")
    (tmp_path / "b.csv").write_text(head + "badnets,0.1,auto-x,1,0.905,0.0\n")
    cells = mod.load(str(tmp_path / "a.csv"), str(tmp_path / "b.csv"))
    rows = mod.compare(cells)
    assert [(r[0], r[2], r[5]) for r in rows] == [("badnets", "abl", False)]  # auto's ASR 2 % > abl's 0 %
    assert sorted(rows[0][6]) == ["abl", "ct"]  # other auto* entries are not singles; sig has no finished one
    rows = mod.compare(cells, auto="auto-x")
    assert [(r[2], r[5]) for r in rows] == [("abl", True)]  # 0.0 ≤ 0.0 and 90.5 ≥ 91 − 1
    rows = mod.compare(cells, auto="auto-x", ca_points=0.1)
    assert [r[5] for r in rows] == [False]
    # a clean floor of 3 %: abl's 0 % counts as 3 %, and auto's 2 % is as low; a 1 % floor is not enough
    assert [r[5] for r in mod.compare(cells, floors={"badnets": 0.03})] == [True]
    assert [r[5] for r in mod.compare(cells, floors={"badnets": 0.01, "sig": 0.5})] == [False]


def test_md_table_reads_a_committed_table_back(tmp_path, capsys):
    """benchmarks/md_table.py: the table under a heading of a docs page, back into the columns auto_check reads."""
    mod = benchmark_script("md_table")
    page = ("# x\n| attack | rate | defense |\n|---|---|---|\n| sig | 1 % | abl | 1/1 | 1 | 2 |\n"
            "## Table\ntext\n\n| attack | rate | defense | runs | CA % | ASR % | RA % |\n"
            "|---|---|---|---|---|---|---|\n"
            "| badnets | 10 % | vanilla | 1/1 | 91.9 | 100.0 | 0.0 |\n| badnets | 1 % | ct | 0/1 | – | – | – |\n"
            "\nafter\n| wanet | 1 % | abl | 1/1 | 1 | 2 |\n")
    got = mod.rows(page, "## Table")  # only the first table after the heading
    assert [(r["attack"], r["rate"], r["defense"], r["runs"], r["ca_mean"], r["asr_mean"]) for r in got] == [
        ("badnets", "0.1", "vanilla", "1", repr(0.919), "1.0"), ("badnets", "0.01", "ct", "0", "", "")]
    (tmp_path / "p.md").write_text(page)
    mod.main([str(tmp_path / "p.md"), "--section", "## Table"])
    assert capsys.readouterr().out.splitlines()[0] == "attack,rate,defense,runs,ca_mean,asr_mean"
    with pytest.raises(SystemExit, match="no line"):
        mod.rows(page, "## Nope")
