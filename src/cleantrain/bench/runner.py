"""Run a grid: every cell is one `cleantrain train` in its own process, in `<out>/runs/<cell-id>/`.

Layout of a bench folder:

    grid.json          the cells (written at every start)
    runs.db            the SQLite run store (every run, done or failed)
    data/<data-id>.npz the poisoned sets, made once per attack/rate/seed and shared
    cells/<id>.yaml    each cell's full run config
    runs/<id>/         each run folder (result.json = finished)
    logs/<id>.log      each run's output
    table.md/.csv      the results table

Resuming: a cell whose `result.json` exists is never run again; an
interrupted one is started again with the same config and `api.train`
resumes it from its checkpoints; a failed one is recorded and retried on
the next start.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml
from tqdm import tqdm

from ..data.io import atomic_write
from ..errors import UserError
from ..store.artifacts import write_json
from ..store.runs import RunStore
from .gpus import pick_gpu, visible_gpus
from .grid import Cell, Grid, validate

RESULT = "result.json"


@dataclass
class Running:
    cell: Cell
    proc: subprocess.Popen
    started: float
    log: Any
    gpu: str | None = None  # the GPU this run is pinned to (CUDA_VISIBLE_DEVICES), when there are GPUs


def cell_dir(out: Path, cell: Cell) -> Path:
    return out / "runs" / cell.id


def is_done(out: Path, cell: Cell) -> bool:
    return (cell_dir(out, cell) / RESULT).is_file()


def write_manifest(grid: Grid, out: Path) -> Path:
    cells = [{"id": c.id, "attack": c.attack, "rate": c.rate, "defense": c.defense, "seed": c.seed,
              "defense_key": c.overrides["defense"], "attack_key": c.overrides["attack"], "data_id": c.data_id}
             for c in grid.cells]
    return write_json(out / "grid.json", {"name": grid.name, "source": grid.source, "cells": cells})


def _threads(out: Path, cell: Cell, jobs: int) -> int:
    """The run's CPU threads: what an earlier start of it used (so that it resumes), else the grid's, else cores / jobs."""
    marker = cell_dir(out, cell) / "run.json"
    if marker.is_file():
        try:
            import json

            t = json.loads(marker.read_text())["config"]["train"]["threads"]
            if isinstance(t, int) and t > 0:
                return t
        except (ValueError, KeyError, TypeError):
            pass
    t = cell.overrides.get("train.threads")
    if isinstance(t, int) and t > 0:
        return t
    return max(1, (os.cpu_count() or 1) // max(1, jobs))


def make_data(out: Path, data_id: str, settings: dict[str, Any]) -> Path:
    """The poisoned set shared by every defense of one attack/rate/seed (made once)."""
    from ..api import make_config, poison

    path = out / "data" / f"{data_id}.npz"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        cfg = make_config(None, {k: v for k, v in settings.items() if v is not None})
        poison(cfg, path, overwrite=True)
    return path


def cell_config(out: Path, cell: Cell, jobs: int) -> Path:
    """Write `cells/<id>.yaml`, the run's full config (paths relative to the bench folder)."""
    from ..api import config_dict, make_config

    over = {**cell.overrides, "data": f"data/{cell.data_id}.npz", "train.threads": _threads(out, cell, jobs)}
    cfg_d = config_dict(make_config(None, over))
    path = out / "cells" / f"{cell.id}.yaml"
    text = yaml.safe_dump(cfg_d, sort_keys=False)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
    return path


def config_changed(out: Path, cell: Cell, cfg_path: Path) -> bool:
    """Whether an unfinished run folder holds a run of another config (the grid changed): start it afresh."""
    import json

    marker = cell_dir(out, cell) / "run.json"
    if not marker.is_file():
        return False
    try:
        earlier = json.loads(marker.read_text()).get("config")
    except (ValueError, AttributeError):
        return True
    now = json.loads(json.dumps(yaml.safe_load(cfg_path.read_text()), default=str))
    return earlier != now


def _record_failure(store: RunStore, out: Path, cell: Cell, since: float, error: str) -> None:
    """Record the failure unless the run recorded it itself (api.train does once it has started)."""
    rel = str(Path("runs") / cell.id)
    rows = store.rows("WHERE out = ? AND started >= ?", (rel, since - 1))
    if any(r["status"] == "failed" for r in rows):
        return
    for r in rows:  # a run killed in flight stays 'running'; close it
        if r["status"] == "running":
            store.fail(r["id"], error)
            return
    store.fail(store.start(rel, {"bench_cell": cell.id, **cell.overrides}, kind="bench"), error)


def _tail(path: Path, n: int = 2000) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return text[-n:]


def run_grid(grid: Grid, out: str | Path, jobs: int = 1, progress: bool | None = None,
             log: Callable[[str], None] | None = print, poll: float = 0.5) -> dict[str, Any]:
    """Run every unfinished cell, `jobs` at a time; write the table; return counts."""
    if jobs < 1:
        raise UserError("--jobs must be ≥ 1")
    validate(grid)
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    write_manifest(grid, out)
    store = RunStore(out / "runs.db")
    for r in store.rows("WHERE status = 'running'"):  # left by a bench that was killed
        store.fail(r["id"], "interrupted: the bench stopped before this run ended")
    todo = [c for c in grid.cells if not is_done(out, c)]
    done_before = len(grid.cells) - len(todo)
    failed: list[str] = []
    bad_data: dict[str, str] = {}
    show = sys.stderr.isatty() if progress is None else progress
    tqdm.monitor_interval = 0
    bar = tqdm(total=len(grid.cells), initial=done_before, desc=f"bench {grid.name}", unit="run",
               disable=not show, dynamic_ncols=True, smoothing=0.1)
    env = dict(os.environ, CLEANTRAIN_BENCH_PARENT=str(os.getpid()))
    env.setdefault("PYTHONUNBUFFERED", "1")
    # defenses/shared.py: work the runs of one poisoned set share; a cache named by the caller (another bench's,
    # say) is resolved here, since the runs start in the bench folder
    env["CLEANTRAIN_CACHE_DIR"] = str(Path(os.environ.get("CLEANTRAIN_CACHE_DIR") or out / "cache").resolve())
    running: list[Running] = []
    queue = list(todo)
    gpus = visible_gpus()  # --jobs N: one run per GPU (shared evenly when N exceeds the GPUs)

    def say(msg: str) -> None:
        if log is not None:
            (bar.write if show else log)(msg)

    def finish(r: Running) -> None:
        rc = r.proc.wait()
        r.log.close()
        if rc == 0 and is_done(out, r.cell):
            say(f"done   {r.cell.id} ({time.time() - r.started:.0f}s)")
        else:
            tail = _tail(out / "logs" / f"{r.cell.id}.log")
            last = [ln for ln in tail.strip().splitlines() if ln.strip()][-1:] or [f"exit code {rc}"]
            _record_failure(store, out, r.cell, r.started, f"exit code {rc}\n{tail}")
            failed.append(r.cell.id)
            say(f"FAILED {r.cell.id}: {last[0]}")
        bar.update(1)

    try:
        while queue or running:
            while queue and len(running) < jobs:
                # prefer another poisoned set than the running ones: detectors of one set share a normal model
                busy = {r.cell.data_id for r in running}
                pick = next((i for i, c in enumerate(queue) if c.data_id not in busy), 0)
                cell = queue.pop(pick)
                if cell.data_id in bad_data:
                    t = time.time()
                    _record_failure(store, out, cell, t, bad_data[cell.data_id])
                    failed.append(cell.id)
                    bar.update(1)
                    continue
                try:
                    make_data(out, cell.data_id, grid.poison[cell.data_id])
                    cfg_path = cell_config(out, cell, jobs)
                except Exception as e:  # a failed poisoning fails the cells that need it, not the grid
                    bad_data[cell.data_id] = f"poisoning {cell.data_id} failed: {type(e).__name__}: {e}\n" \
                                             f"{traceback.format_exc(limit=3)}"
                    queue.insert(0, cell)
                    say(f"FAILED poisoned set {cell.data_id}: {e}")
                    continue
                threads = _threads(out, cell, jobs)
                (out / "logs").mkdir(exist_ok=True)
                logf = open(out / "logs" / f"{cell.id}.log", "a")
                logf.write(f"\n=== start {time.strftime('%Y-%m-%d %H:%M:%S')} threads={threads}\n")
                logf.flush()
                cenv = dict(env, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
                gpu = pick_gpu(gpus, [r.gpu for r in running])
                if gpu is not None:
                    cenv["CUDA_VISIBLE_DEVICES"] = gpu
                    logf.write(f"pinned to GPU {gpu}\n")
                    logf.flush()
                cmd = [sys.executable, "-m", "cleantrain.bench.worker", "--config", str(cfg_path.relative_to(out)),
                       "--out", str(Path("runs") / cell.id), "--db", "runs.db", "--quiet"]
                if config_changed(out, cell, cfg_path):
                    cmd.append("--overwrite")
                    logf.write("config changed since the last start: starting afresh\n")
                    logf.flush()
                proc = subprocess.Popen(cmd, cwd=out, env=cenv, stdout=logf, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL)
                running.append(Running(cell, proc, time.time(), logf, gpu))
                bar.set_postfix_str(", ".join(r.cell.id for r in running)[:80])
            time.sleep(poll)
            for r in [r for r in running if r.proc.poll() is not None]:
                running.remove(r)
                finish(r)
            if running:
                bar.set_postfix_str(", ".join(r.cell.id for r in running)[:80])
    except BaseException:
        for r in running:
            r.proc.terminate()
        for r in running:
            try:
                r.proc.wait(10)
            except subprocess.TimeoutExpired:
                r.proc.kill()
            r.log.close()
        raise
    finally:
        bar.close()
    from .table import write_tables

    md, csv = write_tables(out)
    done = sum(is_done(out, c) for c in grid.cells)
    return {"cells": len(grid.cells), "done": done, "ran": len(todo) - len(failed), "failed": failed,
            "skipped": done_before, "table_md": str(md), "table_csv": str(csv)}
