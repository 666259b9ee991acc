"""Local history of monitor results, state transitions and alerts (SQLite, WAL).

Written by the alert worker; read by ``flamingo-edge alerts list|show`` (a separate
process: WAL lets it read while the daemon writes). Rows older than
``HistoryConfig.retention_s`` are deleted by `prune`, which the pipeline calls
periodically. The history is also where the pipeline remembers which
(stream, monitor) pairs exist, so Home Assistant discovery is republished for all of
them after a restart.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from alerts.entities import EntityIds
from alerts.models import Alert
from edge.results import MonitorResult

_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    boot_id TEXT NOT NULL,
    stream TEXT NOT NULL,
    monitor TEXT NOT NULL,
    verdict TEXT NOT NULL,
    severity TEXT NOT NULL,
    answer TEXT NOT NULL,
    start TEXT NOT NULL,
    "end" TEXT NOT NULL,
    latency_s REAL NOT NULL,
    model_id TEXT NOT NULL,
    payload TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS results_ts ON results (ts);
CREATE TABLE IF NOT EXISTS transitions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    stream TEXT NOT NULL,
    monitor TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS transitions_ts ON transitions (ts);
CREATE TABLE IF NOT EXISTS alerts (
    id TEXT PRIMARY KEY,
    ts REAL NOT NULL,
    boot_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    stream TEXT NOT NULL,
    monitor TEXT NOT NULL,
    severity TEXT NOT NULL,
    answer TEXT NOT NULL,
    payload TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS alerts_ts ON alerts (ts);
CREATE TABLE IF NOT EXISTS monitors (
    stream TEXT NOT NULL,
    monitor TEXT NOT NULL,
    last_seen REAL NOT NULL,
    PRIMARY KEY (stream, monitor)
);
"""


class History:
    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = Path(path)
        if readonly:
            uri = f"file:{self.path}?mode=ro"
            self._db = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.Lock()

    def entity_ids(self) -> EntityIds:
        """The Home Assistant entity id registry, stored in this database."""
        return EntityIds(self._db, self._lock)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # --- writes (alert worker) ---
    def record_result(self, r: MonitorResult, boot_id: str, ts: float | None = None) -> None:
        with self._lock:
            self._db.execute(
                'INSERT INTO results (ts, boot_id, stream, monitor, verdict, severity, answer, start, "end",'
                " latency_s, model_id, payload) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    time.time() if ts is None else ts, boot_id, r.stream, r.monitor, r.verdict, r.severity,
                    r.answer, r.start.isoformat(), r.end.isoformat(), r.latency_s, r.model_id,
                    json.dumps(r.to_json_dict(), default=str),
                ),
            )

    def record_monitor(self, stream: str, monitor: str, ts: float | None = None) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO monitors (stream, monitor, last_seen) VALUES (?,?,?) "
                "ON CONFLICT (stream, monitor) DO UPDATE SET last_seen=excluded.last_seen",
                (stream, monitor, time.time() if ts is None else ts),
            )

    def record_transition(self, stream: str, monitor: str, state: str, reason: str, ts: float | None = None) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO transitions (ts, stream, monitor, state, reason) VALUES (?,?,?,?,?)",
                (time.time() if ts is None else ts, stream, monitor, state, reason),
            )

    def record_alert(self, a: Alert, ts: float | None = None) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO alerts (id, ts, boot_id, seq, stream, monitor, severity, answer, payload)"
                " VALUES (?,?,?,?,?,?,?,?,?)",
                (a.id, a.raised_at.timestamp() if ts is None else ts, a.boot_id, a.seq, a.stream, a.monitor,
                 a.severity, a.answer, a.to_json()),
            )

    def prune(self, retention_s: float, now: float | None = None) -> int:
        """Delete results, transitions and alerts older than ``retention_s``; returns rows deleted."""
        cutoff = (time.time() if now is None else now) - retention_s
        n = 0
        with self._lock:
            for table in ("results", "transitions", "alerts"):
                n += self._db.execute(f"DELETE FROM {table} WHERE ts < ?", (cutoff,)).rowcount
        return n

    # --- reads (CLI, pipeline start) ---
    def known_monitors(self) -> list[tuple[str, str]]:
        with self._lock:
            return [(r[0], r[1]) for r in self._db.execute("SELECT stream, monitor FROM monitors ORDER BY 1, 2")]

    def list_alerts(
        self, *, stream: str | None = None, monitor: str | None = None, since: float | None = None,
        limit: int = 50,
    ) -> list[dict[str, Any]]:
        where, args = _filters(stream, monitor)
        q = "SELECT payload FROM alerts WHERE 1=1" + where
        if since is not None:
            q += " AND ts>=?"
            args.append(since)
        q += " ORDER BY ts DESC, seq DESC LIMIT ?"
        args.append(limit)
        with self._lock:
            return [json.loads(r[0]) for r in self._db.execute(q, args)]

    def page_alerts(
        self, *, stream: str | None = None, monitor: str | None = None,
        severity: str | None = None, since: float | None = None, until: float | None = None,
        limit: int = 20, offset: int = 0,
    ) -> tuple[list[dict[str, Any]], int]:
        """One page of alerts, newest first, and how many match the filters in all."""
        where, args = _filters(stream, monitor)
        for clause, val in ((" AND severity=?", severity), (" AND ts>=?", since),
                            (" AND ts<?", until)):
            if val is not None:
                where += clause
                args.append(val)
        with self._lock:
            total = self._db.execute("SELECT COUNT(*) FROM alerts WHERE 1=1" + where, args).fetchone()[0]
            rows = self._db.execute(
                "SELECT payload FROM alerts WHERE 1=1" + where + " ORDER BY ts DESC, seq DESC"
                " LIMIT ? OFFSET ?", [*args, limit, offset]).fetchall()
        return [json.loads(r[0]) for r in rows], int(total)

    def get_alert(self, id_prefix: str) -> dict[str, Any] | None:
        """The alert whose id is or starts with ``id_prefix``; None if none or ambiguous."""
        with self._lock:
            rows = self._db.execute(
                "SELECT payload FROM alerts WHERE id LIKE ? ESCAPE '\\' LIMIT 2",
                (id_prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%",),
            ).fetchall()
        return json.loads(rows[0][0]) if len(rows) == 1 else None

    def list_results(self, *, stream: str | None = None, monitor: str | None = None, limit: int = 50) -> list[dict]:
        where, args = _filters(stream, monitor)
        q = ("SELECT ts, stream, monitor, verdict, severity, answer,"
             " json_extract(payload, '$.score') AS score FROM results WHERE 1=1" + where)
        q += " ORDER BY id DESC LIMIT ?"
        args.append(limit)
        with self._lock:
            return [dict(r) for r in self._db.execute(q, args)]

    def count(self, table: str) -> int:
        assert table in ("results", "transitions", "alerts", "monitors")
        with self._lock:
            return self._db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]


def _filters(stream: str | None, monitor: str | None) -> tuple[str, list[Any]]:
    """SQL `AND` clauses and their arguments for the optional stream / monitor filters."""
    where, args = "", []
    for col, val in (("stream", stream), ("monitor", monitor)):
        if val:
            where += f" AND {col}=?"
            args.append(val)
    return where, args
