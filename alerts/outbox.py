"""Durable store-and-forward queue of alerts, one row per (alert, sink), in SQLite.

Every alert is written here (``synchronous=FULL``, committed) *before* any sink sees
it. A sink reads its pending rows in insertion order (`pending`), and deletes a row only
once the delivery is acknowledged (`mark_sent`: the MQTT PUBACK, a webhook 2xx). Rows
left after a crash or a broker outage are therefore replayed, in order, by the next
connection or the next process: delivery is at-least-once, and the alert id in the
payload is stable so consumers de-duplicate.

A sink that publishes one alert to several destinations (MQTT: ``<prefix>/events`` and
``<prefix>/<stream>/event``) records each destination's outcome durably in the row's
``delivery`` column (`record_topic`): a destination that acknowledged is never sent the
alert again, not even after a crash, and one that keeps refusing is given up after a
bounded number of refusals. The row is deleted once every destination acknowledged or
was given up.

The queue is bounded by age and by row count per sink (`OutboxConfig`). `enforce_bounds`
drops the oldest rows beyond those bounds; every drop is counted in
``fe_alerts_dropped{reason="age"|"count"}`` and logged with the alert id.

Thread-safe: one connection guarded by a lock; the pipeline worker inserts while sink
threads read and acknowledge.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import structlog

from alerts.config import OutboxConfig
from edge.metrics import Metrics

log = structlog.get_logger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    row_id INTEGER PRIMARY KEY AUTOINCREMENT,
    alert_id TEXT NOT NULL,
    sink TEXT NOT NULL,
    created REAL NOT NULL,
    payload TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    delivery TEXT NOT NULL DEFAULT '{}',
    UNIQUE (alert_id, sink)
);
CREATE INDEX IF NOT EXISTS outbox_sink ON outbox (sink, row_id);
"""


@dataclass(frozen=True)
class OutboxRow:
    row_id: int
    alert_id: str
    sink: str
    created: float
    payload: str
    attempts: int
    delivery_json: str = "{}"

    @property
    def delivery(self) -> dict[str, dict[str, int | bool]]:
        """Per destination (topic): ``{"acked": bool, "refused": n, "gave_up": bool}``."""
        try:
            d = json.loads(self.delivery_json or "{}")
        except ValueError:
            return {}
        return d if isinstance(d, dict) else {}

    def done_topics(self) -> set[str]:
        """Destinations that need nothing more: acknowledged, or given up."""
        return {t for t, s in self.delivery.items() if s.get("acked") or s.get("gave_up")}


@dataclass(frozen=True)
class TopicOutcome:
    refusals: int  # refusals of this destination for this alert so far
    gave_up: bool  # this destination reached the refusal bound and is not retried
    done: bool  # every required destination acknowledged or was given up: the row is gone
    given_up: tuple[str, ...]  # all destinations given up, once done
    missing: bool = False  # the row was already gone (finished, or dropped by the bounds and counted there)


class Outbox:
    def __init__(self, path: Path, config: OutboxConfig, metrics: Metrics) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._config = config
        self._metrics = metrics
        self._lock = threading.Lock()
        self._closed = False
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        cols = {r[1] for r in self._db.execute("PRAGMA table_info(outbox)")}
        if "delivery" not in cols:  # an outbox written before per-destination delivery state
            self._db.execute("ALTER TABLE outbox ADD COLUMN delivery TEXT NOT NULL DEFAULT '{}'")
        self._update_gauge()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._db.close()

    def add(self, alert_id: str, payload: str, sinks: list[str], created: float | None = None) -> None:
        """Persist one alert for each sink; returns once committed to disk."""
        created = time.time() if created is None else created
        with self._lock:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.executemany(
                    "INSERT OR IGNORE INTO outbox (alert_id, sink, created, payload) VALUES (?,?,?,?)",
                    [(alert_id, s, created, payload) for s in sinks],
                )
        self.enforce_bounds()

    def pending(self, sink: str, after_row: int = 0, limit: int = 100) -> list[OutboxRow]:
        with self._lock:
            cur = self._db.execute(
                "SELECT row_id, alert_id, sink, created, payload, attempts, delivery FROM outbox "
                "WHERE sink=? AND row_id>? ORDER BY row_id LIMIT ?",
                (sink, after_row, limit),
            )
            return [OutboxRow(*r) for r in cur.fetchall()]

    def waiting(self, alert_ids: Iterable[str]) -> dict[str, dict[str, dict[str, object]]]:
        """alert id -> sink -> ``{"attempts", "error", "delivery"}`` of the rows still queued
        (an alert/sink pair with no row has been delivered, or dropped by the bounds)."""
        ids = list(alert_ids)
        out: dict[str, dict[str, dict[str, object]]] = {}
        if not ids:
            return out
        with self._lock:
            rows = self._db.execute(
                "SELECT alert_id, sink, attempts, last_error, delivery FROM outbox WHERE alert_id IN "
                f"({','.join('?' * len(ids))})", ids).fetchall()
        for alert_id, sink, attempts, error, delivery in rows:
            try:
                d = json.loads(delivery or "{}")
            except ValueError:
                d = {}
            out.setdefault(alert_id, {})[sink] = {"attempts": attempts, "error": error, "delivery": d}
        return out

    def count(self, sink: str | None = None) -> int:
        """Undelivered alerts (distinct ids), or rows of one sink; -1 once closed."""
        if self._closed:
            return -1
        with self._lock:
            if sink is None:
                return self._db.execute("SELECT COUNT(DISTINCT alert_id) FROM outbox").fetchone()[0]
            return self._db.execute("SELECT COUNT(*) FROM outbox WHERE sink=?", (sink,)).fetchone()[0]

    def mark_sent(self, row_id: int) -> None:
        with self._lock:
            self._db.execute("DELETE FROM outbox WHERE row_id=?", (row_id,))
        self._update_gauge()

    def mark_failed(self, row_id: int, error: str) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE outbox SET attempts=attempts+1, last_error=? WHERE row_id=?", (error[:500], row_id)
            )

    def record_topic(
        self, row_id: int, topic: str, *, acked: bool, required: Iterable[str], max_refusals: int,
        error: str | None = None,
    ) -> TopicOutcome:
        """Durably record one destination's answer for one row (the MQTT PUBACK of one topic).

        ``acked``: the destination has the alert; it is never sent it again. Otherwise a
        refusal: counted, and once ``max_refusals`` is reached the destination is given
        up. When every destination in ``required`` is acknowledged or given up, the row
        is deleted in the same transaction (``done``)."""
        need = set(required)
        with self._lock:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                got = self._db.execute("SELECT delivery FROM outbox WHERE row_id=?", (row_id,)).fetchone()
                if got is None:  # already finished (or dropped by the bounds)
                    return TopicOutcome(0, False, True, (), missing=True)
                d = OutboxRow(row_id, "", "", 0.0, "", 0, got[0]).delivery
                st = d.setdefault(topic, {})
                if acked:
                    st["acked"] = True
                else:
                    st["refused"] = int(st.get("refused", 0)) + 1
                    if st["refused"] >= max_refusals:
                        st["gave_up"] = True
                done_topics = {t for t, s in d.items() if s.get("acked") or s.get("gave_up")}
                done = need <= done_topics
                if done:
                    self._db.execute("DELETE FROM outbox WHERE row_id=?", (row_id,))
                else:
                    self._db.execute(
                        "UPDATE outbox SET delivery=?, attempts=attempts+?, last_error=COALESCE(?, last_error)"
                        " WHERE row_id=?",
                        (json.dumps(d, sort_keys=True), 0 if acked else 1, error[:500] if error else None, row_id),
                    )
        if done:
            self._update_gauge()
        given_up = tuple(sorted(t for t, s in d.items() if s.get("gave_up") and not s.get("acked")))
        return TopicOutcome(int(st.get("refused", 0)), bool(st.get("gave_up")), done, given_up if done else ())

    def drop(self, row_id: int, reason: str) -> None:
        """Give up on one row (e.g. a webhook answered 4xx); counted and logged."""
        with self._lock:
            row = self._db.execute("SELECT alert_id, sink FROM outbox WHERE row_id=?", (row_id,)).fetchone()
            self._db.execute("DELETE FROM outbox WHERE row_id=?", (row_id,))
        if row:
            self._metrics.alerts_dropped.labels(reason).inc()
            log.warning("outbox dropped alert", alert_id=row[0], sink=row[1], reason=reason)
        self._update_gauge()

    def enforce_bounds(self, now: float | None = None) -> int:
        """Drop rows older than ``max_age_s`` and, per sink, the oldest beyond ``max_rows``."""
        now = time.time() if now is None else now
        dropped: list[tuple[str, str, str]] = []
        with self._lock:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                old = self._db.execute(
                    "SELECT row_id, alert_id, sink FROM outbox WHERE created < ?",
                    (now - self._config.max_age_s,),
                ).fetchall()
                excess = []  # per sink: a dead webhook must not eat the MQTT backlog's room
                for sink, n in self._db.execute(
                    "SELECT sink, COUNT(*) FROM outbox WHERE created >= ? GROUP BY sink",
                    (now - self._config.max_age_s,),
                ).fetchall():
                    if n > self._config.max_rows:
                        excess += self._db.execute(
                            "SELECT row_id, alert_id, sink FROM outbox WHERE sink=? AND created >= ?"
                            " ORDER BY row_id LIMIT ?",
                            (sink, now - self._config.max_age_s, n - self._config.max_rows),
                        ).fetchall()
                for reason, rows in (("age", old), ("count", excess)):
                    for row_id, alert_id, sink in rows:
                        self._db.execute("DELETE FROM outbox WHERE row_id=?", (row_id,))
                        dropped.append((reason, alert_id, sink))
        for reason, alert_id, sink in dropped:
            self._metrics.alerts_dropped.labels(reason).inc()
            log.warning("outbox dropped alert", alert_id=alert_id, sink=sink, reason=reason)
        self._update_gauge()
        return len(dropped)

    def _update_gauge(self) -> None:
        self._metrics.alerts_queued.set(self.count())
