"""Home Assistant entity ids: collision-free, stable, remembered; and which ones to remove.

Every announced entity is an `Entity`: a discovery *component* (``binary_sensor``,
``sensor``, ``event``; ``device`` for the per-stream device identifier), a *kind*
(``monitor``, ``level``, ``alert``, ``device``, ...) and the stream / monitor names it
belongs to. Its object id (the discovery topic's ``<object_id>``; ``unique_id`` is
``<node_id>_<object_id>``) comes from `EntityIds.object_id`:

* the **legacy** id, the one releases before this registry used: the names with
  anything but letters, digits, ``_`` and ``-`` replaced by ``_``, joined with ``_``
  (``<stream>_<monitor>``, ``<stream>_level``, ``<stream>_alert``), when no other
  entity of the same component holds it; so existing installs keep their ids wherever
  their names were already unique;
* otherwise the legacy id plus ``_`` and the first 8 hex digits of the SHA-256 of the
  exact names (longer if even that is taken): streams ``a.b`` and ``a_b``, or stream
  ``x`` + monitor ``y_z`` and stream ``x_y`` + monitor ``z``, get distinct ids.

When several new entities want one legacy id at once, the one whose names need no
escaping (no ``.``) wins, then the smallest names: the choice does not depend on the
order names arrive in. Assignments are stored in the history database (table
``entities``) and never change afterwards; an entity removed from the config keeps its
row (``removed`` set) and gets its old id back if it returns. Without a history
database the assignment is recomputed from the names at every start (stable as long as
the set of names does not change).

The same table is the record of what was announced, which `stale` compares with the
current configuration to find the entities to remove from Home Assistant (an empty
retained discovery config).
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

_ID_BAD = re.compile(r"[^a-zA-Z0-9_-]")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entities (
    component TEXT NOT NULL,
    object_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    stream TEXT NOT NULL,
    monitor TEXT NOT NULL,
    config_topic TEXT,
    first_seen REAL NOT NULL,
    removed REAL,
    PRIMARY KEY (component, object_id),
    UNIQUE (component, kind, stream, monitor)
);
"""


def legacy_fragment(name: str) -> str:
    """A name as the legacy ids wrote it: anything but letters, digits, '_' and '-' -> '_'."""
    return _ID_BAD.sub("_", name) or "_"


@dataclass(frozen=True, order=True)
class Entity:
    component: str  # "binary_sensor" | "sensor" | "event" | "device"
    kind: str  # "monitor" | "level" | "alert" | "device" (| "score", ...)
    stream: str
    monitor: str = ""  # "" for per-stream entities

    def legacy_id(self) -> str:
        sid = legacy_fragment(self.stream)
        if self.kind == "device":
            return sid
        if self.kind == "monitor":
            return f"{sid}_{legacy_fragment(self.monitor)}"
        if self.monitor:
            return f"{sid}_{legacy_fragment(self.monitor)}_{self.kind}"
        return f"{sid}_{self.kind}"

    def _rank(self) -> tuple[bool, str, str, str]:
        # names that need no escaping keep their legacy id first, then by name
        return ("." in self.stream or "." in self.monitor, self.kind, self.stream, self.monitor)

    def hashed_id(self, digits: int = 8) -> str:
        h = hashlib.sha256("\0".join((self.kind, self.stream, self.monitor)).encode()).hexdigest()
        return f"{self.legacy_id()}_{h[:digits]}"


def config_topic(discovery_prefix: str, node_id: str, component: str, object_id: str) -> str:
    """Where Home Assistant reads one entity's discovery config."""
    return f"{discovery_prefix}/{component}/{node_id}/{object_id}/config"


def stream_entities(stream: str, monitors: Iterable[str], scored: Iterable[str] = ()) -> list[Entity]:
    """The entities of one stream with these monitors (what discovery announces): a
    ``binary_sensor`` per monitor and, for the ``scored`` ones, a ``sensor`` of kind
    ``score`` (legacy id ``<stream>_<monitor>_score``)."""
    out = [Entity("device", "device", stream), Entity("sensor", "level", stream), Entity("event", "alert", stream),
           Entity("sensor", "input", stream)]
    out += [Entity("binary_sensor", "monitor", stream, m) for m in monitors]
    out += [Entity("sensor", "score", stream, m) for m in scored]
    return out


class EntityIds:
    """Object ids per entity, assigned once (see the module doc); thread-safe.

    ``db``: an open SQLite connection holding the ``entities`` table (the history
    database), or None to keep the assignment in memory only."""

    def __init__(self, db: sqlite3.Connection | None = None, lock: threading.Lock | None = None) -> None:
        self._db = db
        self._db_lock = lock or threading.Lock()
        self._lock = threading.Lock()
        self._ids: dict[Entity, str] = {}
        self._taken: dict[tuple[str, str], Entity] = {}
        self._topics: dict[Entity, str | None] = {}
        self._removed: set[Entity] = set()
        if db is not None:
            with self._db_lock:
                db.executescript(_SCHEMA)
                rows = db.execute(
                    "SELECT component, object_id, kind, stream, monitor, config_topic, removed FROM entities"
                ).fetchall()
            for component, oid, kind, stream, monitor, topic, removed in rows:
                e = Entity(component, kind, stream, monitor)
                self._ids[e] = oid
                self._taken[(component, oid)] = e
                self._topics[e] = topic
                if removed is not None:
                    self._removed.add(e)

    # ------------------------------------------------------------------ ids
    def assign(self, entities: Iterable[Entity]) -> None:
        """Give every new entity its id (legacy if free, else hashed); stored at once."""
        with self._lock:
            new = sorted({e for e in entities if e not in self._ids}, key=Entity._rank)
            rows = []
            for e in new:
                oid = e.legacy_id()
                digits = 8
                while (e.component, oid) in self._taken:
                    oid = e.hashed_id(digits)
                    digits += 4
                self._ids[e] = oid
                self._taken[(e.component, oid)] = e
                rows.append((e.component, oid, e.kind, e.stream, e.monitor, None, time.time()))
        if rows and self._db is not None:
            with self._db_lock:
                self._db.executemany(
                    "INSERT OR IGNORE INTO entities (component, object_id, kind, stream, monitor, config_topic,"
                    " first_seen) VALUES (?,?,?,?,?,?,?)", rows,
                )

    def object_id(self, e: Entity) -> str:
        with self._lock:
            known = self._ids.get(e)
        if known is None:
            self.assign([e])
            with self._lock:
                known = self._ids[e]
        return known

    # ------------------------------------------------------------------ lifecycle
    def announced(self, e: Entity, config_topic: str | None) -> None:
        """Remember that ``e`` was announced on ``config_topic`` (None for devices)."""
        with self._lock:
            self._topics[e] = config_topic
            self._removed.discard(e)
        if self._db is not None:
            # written even when this process already knew it: `alerts prune` (another
            # process) may have marked it removed since, and this announcement undid that
            with self._db_lock:
                self._db.execute(
                    "UPDATE entities SET config_topic=?, removed=NULL WHERE component=? AND kind=? AND stream=?"
                    " AND monitor=? AND (removed IS NOT NULL OR config_topic IS NOT ?)",
                    (config_topic, e.component, e.kind, e.stream, e.monitor, config_topic),
                )

    def adopt(self, e: Entity, config_topic: str) -> None:
        """An entity a run before this registry announced (known from the history's
        monitors): record its config topic unless one is recorded already."""
        with self._lock:
            if self._topics.get(e) or e in self._removed:
                return
        self.announced(e, config_topic)

    def removed(self, e: Entity) -> None:
        """``e``'s empty config was acknowledged by the broker: it is gone from Home Assistant."""
        with self._lock:
            self._removed.add(e)
        if self._db is not None:
            with self._db_lock:
                self._db.execute(
                    "UPDATE entities SET removed=? WHERE component=? AND kind=? AND stream=? AND monitor=?",
                    (time.time(), e.component, e.kind, e.stream, e.monitor),
                )
                if e.kind == "monitor":
                    self._db.execute("DELETE FROM monitors WHERE stream=? AND monitor=?", (e.stream, e.monitor))

    def stale(self, configured: dict[str, list[str]], scored: dict[str, list[str]] | None = None
              ) -> list[tuple[Entity, str]]:
        """(entity, config topic) announced before and not configured now. With ``scored``
        (stream -> its scored monitors), a score sensor is also stale when its monitor is
        still configured but no longer scored (e.g. turned into a ``text`` monitor)."""
        streams = {s for s, ms in configured.items() if ms}
        pairs = {(s, m) for s, ms in configured.items() for m in ms}
        scored_pairs = None if scored is None else {(s, m) for s, ms in scored.items() for m in ms}

        def wanted(e: Entity) -> bool:  # by names, whatever the kind (other kinds may be added)
            if e.kind == "score" and scored_pairs is not None:
                return (e.stream, e.monitor) in scored_pairs and (e.stream, e.monitor) in pairs
            return (e.stream, e.monitor) in pairs if e.monitor else e.stream in streams

        with self._lock:
            return sorted(
                (e, t) for e, t in self._topics.items()
                if t and e not in self._removed and not wanted(e)
            )

    def rows(self) -> list[dict[str, Any]]:
        with self._lock:
            return [
                {"component": e.component, "kind": e.kind, "stream": e.stream, "monitor": e.monitor,
                 "object_id": oid, "config_topic": self._topics.get(e), "removed": e in self._removed}
                for e, oid in sorted(self._ids.items())
            ]


def reconcile(
    ids: EntityIds, known: Iterable[tuple[str, str]], configured: dict[str, list[str]] | None, *,
    discovery_prefix: str, node_id: str, scored: dict[str, list[str]] | None = None,
) -> list[tuple[Entity, str]]:
    """Give ids to every entity of the ``known`` (stream, monitor) pairs (the history's:
    announced by earlier runs) and of ``configured``, record the pairs announced by a run
    that predates the registry under their legacy topics, and return the (entity, config
    topic) announced before and no longer configured ([] when ``configured`` is None);
    ``scored``: stream -> its scored monitors (score sensors), see `EntityIds.stale`."""
    by_stream: dict[str, list[str]] = {}
    for s, m in sorted(set(known)):
        by_stream.setdefault(s, []).append(m)
    earlier = [e for s, ms in by_stream.items() for e in stream_entities(s, ms)]
    now = {s: sorted(set(ms)) for s, ms in (configured or {}).items()}
    sc = {s: sorted(set(ms)) for s, ms in (scored or {}).items()}
    ids.assign(earlier + [e for s, ms in now.items() if ms for e in stream_entities(s, ms, sc.get(s, ()))])
    for e in earlier:
        if e.component != "device":
            ids.adopt(e, config_topic(discovery_prefix, node_id, e.component, ids.object_id(e)))
    return [] if configured is None else ids.stale(now, None if scored is None else sc)
