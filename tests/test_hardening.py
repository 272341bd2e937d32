"""Hostile model files, atomic writes, the run store under concurrency, crash + resume, determinism."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import pickle
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cleantrain.cli import main
from cleantrain.data.core import PoisonedData
from cleantrain.data.io import atomic_write, save_npz
from cleantrain.store.runs import RunStore

ROOT = Path(__file__).resolve().parents[1]
EXE = ROOT / ".venv" / "bin" / "cleantrain"


def cli_cmd() -> list[str]:
    return [str(EXE)] if EXE.exists() else [sys.executable, "-m", "cleantrain"]


def run_main(capsys, args) -> tuple[int, str]:
    try:
        code = main([str(a) for a in args])
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


# ------------------------------------------------------------ malicious pickles
class Evil:
    """Unpickling this creates the marker file (what an attacker's payload would do instead)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_malicious_pickle_is_never_executed(capsys, tmp_path, small):
    marker = tmp_path / "PWNED"
    payload = pickle.dumps(Evil(marker), protocol=2)
    # the payload works: a plain pickle.load in another process creates the marker
    probe = tmp_path / "probe.pkl"
    probe.write_bytes(pickle.dumps(Evil(tmp_path / "probe-marker"), protocol=2))
    subprocess.run([sys.executable, "-c", f"import pickle; pickle.load(open({str(probe)!r}, 'rb'))"], check=True)
    assert (tmp_path / "probe-marker").exists()

    evil_torch = tmp_path / "evil-torch.pt"  # torch.save's zip format with the payload inside data.pkl
    torch.save({"state_dict": Evil(marker), "info": {}}, evil_torch)
    files = {
        "raw.pt": payload, "raw.pth": payload, "raw.safetensors": payload, "raw.npz": payload,
        "torch.pt": evil_torch.read_bytes(), "torch.pth": evil_torch.read_bytes(),
        "torch.safetensors": evil_torch.read_bytes(), "torch.npz": evil_torch.read_bytes(),
        "torch.bin": evil_torch.read_bytes(), "raw.ckpt": payload,
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    good = save_npz(PoisonedData.clean(small[0].head(100)), tmp_path / "good.npz")

    runs: list[tuple[list, str]] = []
    for name in files:
        p = tmp_path / name
        if name.endswith(".npz"):
            runs += [(["train", "--data", p, "--epochs", "1", "--out", tmp_path / f"o-{name}", "--quiet"], "npz"),
                     (["detect", "--detector", "ss", "--data", p, "--out", tmp_path / f"{name}.csv"], "npz"),
                     (["poison", "--dataset", "npz", "--data-root", p, "--out", tmp_path / f"p-{name}"], "npz"),
                     (["predict", "--model", tmp_path / "raw.safetensors", "--data", p, "--out", tmp_path / "x.csv"],
                      "safetensors")]
            continue
        for allow in ([], ["--allow-pickle-weights"]):
            why = "pickle-based model files can run code" if p.suffix in (".pt", ".pth", ".bin", ".ckpt") and not allow \
                else "weights_only|not a safetensors|refused"
            runs += [(["evaluate", "--model", p, "--test-size", "50", *allow], why),
                     (["predict", "--model", p, "--data", good, "--out", tmp_path / "x.csv", *allow], why)]
    for args, why in runs:
        code, err = run_main(capsys, args)
        assert code == 2, (args, err)
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert re.search(why, err) or "npz" in err, (args, err)
        assert not marker.exists(), f"payload executed by {args}"
    assert len(runs) >= 30
    # the refusal of a .pt explains why
    code, err = run_main(capsys, ["evaluate", "--model", tmp_path / "raw.pt"])
    assert "can run code" in err and "--allow-pickle-weights" in err and "safetensors" in err
    # and through the installed script too
    r = subprocess.run(cli_cmd() + ["predict", "--model", str(tmp_path / "torch.pt"), "--allow-pickle-weights",
                                    "--data", str(good), "--out", str(tmp_path / "y.csv")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "weights_only" in r.stderr
    assert not marker.exists() and not (tmp_path / "x.csv").exists() and not (tmp_path / "y.csv").exists()


def test_allow_pickle_weights_loads_a_plain_state_dict(capsys, tmp_path, small):
    """The opt-in works for an honest file (tensors only), read with weights_only=True."""
    from cleantrain.models import make_model

    torch.manual_seed(0)
    m = make_model("small-cnn", 1, 10, 28)
    info = {"model": "small-cnn", "in_channels": 1, "num_classes": 10, "image_size": 28,
            "classes": [str(i) for i in range(10)]}
    torch.save({"state_dict": m.state_dict(), "info": info}, tmp_path / "m.pt")
    good = save_npz(PoisonedData.clean(small[0].head(50)), tmp_path / "good.npz")
    code, err = run_main(capsys, ["predict", "--model", tmp_path / "m.pt", "--data", good, "--out", tmp_path / "p.csv"])
    assert code == 2 and "can run code" in err
    code, err = run_main(capsys, ["predict", "--model", tmp_path / "m.pt", "--allow-pickle-weights", "--data", good,
                                  "--out", tmp_path / "p.csv"])
    assert code == 0, err
    assert len((tmp_path / "p.csv").read_text().splitlines()) == 51


# ------------------------------------------------------------ atomic writes
def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    p = tmp_path / "result.json"
    p.write_text('{"old": 1}')

    def half(tmp):
        Path(tmp).write_text('{"new": ')
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(p, half)
    assert p.read_text() == '{"old": 1}'
    assert sorted(x.name for x in tmp_path.iterdir()) == ["result.json"]  # no temp file left


WRITERS = {"write_text", "write_bytes", "save_file", "savez", "savez_compressed", "save", "savefig", "dump"}
SAFE = re.compile(r"\btmp\b|atomic_write|mkstemp|BytesIO|StringIO|os\.replace|\bbuf\b")


def _write_calls(tree):
    """(call, innermost enclosing function or None) for every call that may write a file."""
    import ast

    def visit(node, fn):
        for child in ast.iter_child_nodes(node):
            inner = child if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) else fn
            if isinstance(child, ast.Call):
                f = child.func
                name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
                mode = [a.value for a in child.args[1:2] if isinstance(a, ast.Constant)]
                if name in WRITERS or (name == "open" and mode and isinstance(mode[0], str) and "w" in mode[0]):
                    yield child, fn
            yield from visit(child, inner)

    yield from visit(tree, None)


def test_every_writer_in_the_package_goes_through_a_temp_file():
    """Static audit: each call in src/ that writes a file does so inside a function that writes a temp
    path which is then renamed into place (`atomic_write`, `mkstemp` + `os.replace`) or into a buffer."""
    import ast

    probe = "def save(p):\n    Path(p).write_text('x')\n\ndef ok(p):\n    atomic_write(p, lambda tmp: Path(tmp).write_text('x'))\n"
    assert [c.lineno for c, fn in _write_calls(ast.parse(probe))
            if not SAFE.search(ast.get_source_segment(probe, fn))] == [2]  # the audit can fail
    bad = []
    for f in sorted((ROOT / "src" / "cleantrain").rglob("*.py")):
        text = f.read_text()
        for call, fn in _write_calls(ast.parse(text)):
            scope = ast.get_source_segment(text, fn) if fn is not None else ast.get_source_segment(text, call)
            if SAFE.search(scope or ""):
                continue
            bad.append(f"{f.relative_to(ROOT)}:{call.lineno}: {ast.get_source_segment(text, call)[:80]}")
    assert not bad, "writes that are not temp file + rename:\n" + "\n".join(bad)


# ------------------------------------------------------------ the run store
def _writer(db: str, who: int, n: int) -> None:
    store = RunStore(db, timeout=120)
    for i in range(n):
        rid = store.start(f"runs/{who}-{i}", {"who": who, "i": i})
        store.finish(rid, {"clean_acc": i / n, "who": who})


def test_store_two_processes_write_at_once(tmp_path):
    db = str(tmp_path / "runs.db")
    RunStore(db)
    ctx = mp.get_context("spawn")
    n = 80
    procs = [ctx.Process(target=_writer, args=(db, w, n)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
        assert p.exitcode == 0
    rows = RunStore(db).rows()
    assert len(rows) == 2 * n
    assert {(r["config"]["who"], r["config"]["i"]) for r in rows} == {(w, i) for w in range(2) for i in range(n)}
    assert all(r["status"] == "done" and r["metrics"]["who"] == r["config"]["who"] for r in rows)
    import sqlite3

    con = sqlite3.connect(db)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


# ------------------------------------------------------------ crash and resume
TRAIN = ["train", "--attack", "badnets", "--rate", "0.1", "--train-size", "800", "--test-size", "200",
         "--epochs", "3", "--set", "train.threads=1", "--set", "train.eval_every=0", "--seed", "3", "--quiet"]


def _metrics(r: dict) -> dict:
    return {k: r[k] for k in ("clean_acc", "asr", "robust_acc", "detection", "n_train", "poison_counts")}


def _losses(r: dict) -> list:
    return [(h["stage"], h["epoch"], h["loss"]) for h in r["history"]]


def test_sigkill_then_resume_gives_the_uninterrupted_result(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", CLEANTRAIN_NO_APT="1")
    ref = tmp_path / "ref"
    subprocess.run(cli_cmd() + TRAIN + ["--out", str(ref)], check=True, env=env, capture_output=True, timeout=600)
    ref_r = json.loads((ref / "result.json").read_text())

    out = tmp_path / "crash"
    cmd = cli_cmd() + TRAIN + ["--out", str(out)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = out / "checkpoints" / "stage001.json"
    deadline = time.time() + 600
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "run ended before it could be killed"
    meta = json.loads(ckpt.read_text())
    done, before_kill = meta["epochs_done"], meta["elapsed"]
    assert 1 <= done < 3 and not (out / "result.json").exists()
    epochs_before_kill = sum(h["seconds"] for h in meta["history"])

    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    res = json.loads((out / "result.json").read_text())
    assert [h["epoch"] for h in res["history"]] == [1, 2, 3]  # earlier epochs kept
    assert _losses(res) == _losses(ref_r)
    assert _metrics(res) == _metrics(ref_r)
    assert (out / "model.safetensors").is_file() and not (out / "checkpoints").exists()
    # the killed process's time up to its checkpoint counts in the resumed run's wall time
    assert before_kill >= epochs_before_kill > 0
    assert 0 < res["carried_seconds"] <= before_kill  # less by what this process did before the restore
    assert res["cpu_seconds"] >= meta["cpu_elapsed"] > 0
    assert res["wall_seconds"] >= before_kill + sum(h["seconds"] for h in res["history"][done:])


# ------------------------------------------------------------ determinism
@pytest.mark.parametrize("defense,opts", [
    ("vanilla", []),
    ("abl", ["--defense-opt", "isolation_epochs=1", "--defense-opt", "finetune_epochs=1",
             "--defense-opt", "unlearn_epochs=1"]),
])
def test_same_seed_same_result(capsys, tmp_path, defense, opts):
    base = ["train", "--attack", "badnets", "--rate", "0.1", "--train-size", "600", "--test-size", "200",
            "--epochs", "1", "--set", "train.threads=1", "--defense", defense, *opts, "--seed", "7", "--quiet"]
    results = []
    for name in ("a", "b"):
        code, err = run_main(capsys, base + ["--out", tmp_path / name])
        assert code == 0, err
        results.append(json.loads((tmp_path / name / "result.json").read_text()))
    a, b = results
    assert _metrics(a) == _metrics(b)
    assert _losses(a) == _losses(b) and len(a["history"]) >= 1
    timeless = lambda d: {k: v for k, v in d.items() if not k.endswith("seconds")}  # noqa: E731
    assert timeless(a["defense_info"]) == timeless(b["defense_info"])
    from safetensors.torch import load_file

    wa, wb = load_file(str(tmp_path / "a" / "model.safetensors")), load_file(str(tmp_path / "b" / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
