"""Every run recorded in one SQLite database (WAL mode, busy timeout)."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    out TEXT NOT NULL,
    kind TEXT NOT NULL DEFAULT 'train',
    status TEXT NOT NULL,
    started REAL NOT NULL,
    finished REAL,
    config TEXT NOT NULL,
    metrics TEXT,
    error TEXT
);
CREATE INDEX IF NOT EXISTS runs_out ON runs(out);
"""


class RunStore:
    def __init__(self, path: str | Path, timeout: float = 60.0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.timeout = timeout
        with self._connect() as db:
            db.executescript(SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA busy_timeout={int(self.timeout * 1000)}")
        return db

    def _write(self, sql: str, args: tuple) -> int:
        db = self._connect()
        try:
            db.execute("BEGIN IMMEDIATE")
            cur = db.execute(sql, args)
            db.execute("COMMIT")
            return int(cur.lastrowid or 0)
        finally:
            db.close()

    def start(self, out: str | Path, config: dict[str, Any], kind: str = "train") -> int:
        return self._write(
            "INSERT INTO runs (out, kind, status, started, config) VALUES (?, ?, 'running', ?, ?)",
            (str(out), kind, time.time(), json.dumps(config, sort_keys=True, default=str)),
        )

    def finish(self, run_id: int, metrics: dict[str, Any]) -> None:
        self._write("UPDATE runs SET status='done', finished=?, metrics=? WHERE id=?",
                    (time.time(), json.dumps(metrics, default=str), run_id))

    def fail(self, run_id: int, error: str) -> None:
        self._write("UPDATE runs SET status='failed', finished=?, error=? WHERE id=?", (time.time(), error, run_id))

    def rows(self, where: str = "", args: tuple = ()) -> list[dict[str, Any]]:
        db = self._connect()
        db.row_factory = sqlite3.Row
        try:
            rows = db.execute(f"SELECT * FROM runs {where} ORDER BY id", args).fetchall()
        finally:
            db.close()
        out = []
        for r in rows:
            d = dict(r)
            for k in ("config", "metrics"):
                d[k] = json.loads(d[k]) if d[k] else None
            out.append(d)
        return out
