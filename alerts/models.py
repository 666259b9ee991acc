"""The alert record: what subscribers, the webhook and the history all receive.

An `Alert` is raised by the rule engine (`alerts.rules`) from one positive
`edge.results.MonitorResult`. Its JSON form (`Alert.to_json`) is the payload of
``<prefix>/events`` and of the webhook body, and is documented field by field in
``docs/MQTT.md``. Subscribers rely on:

* ``id`` — unique and stable: a replayed alert (after a broker outage or a restart)
  carries the same id, so consumers de-duplicate on it;
* ``boot_id`` + ``seq`` — ``seq`` counts alerts from 1 within one daemon boot, so a
  gap in ``seq`` for one ``boot_id`` means a lost alert;
* ``schema_version`` — bumped on incompatible payload changes;
* ``replayed`` — False on the first delivery attempt; True when the payload is sent
  again (after a disconnect, a broker refusal, or by a later run than the one that
  raised it). ``raised_at`` always stays the original time.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from edge.results import MonitorResult

SCHEMA_VERSION = 1


def new_boot_id() -> str:
    """A fresh id for one run of the daemon."""
    return uuid.uuid4().hex


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _iso(d: datetime) -> str:
    if d.tzinfo is None:
        d = d.replace(tzinfo=timezone.utc)
    return d.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class Alert:
    id: str
    boot_id: str
    seq: int
    stream: str
    monitor: str
    severity: str
    verdict: str
    answer: str
    question: str
    start: datetime
    end: datetime
    model_id: str
    latency_s: float
    raised_at: datetime
    choice: str | None = None
    level_dbfs: float | None = None
    score: float | None = None  # scored monitors: the probability that raised the alert
    clip_flac: str | None = None  # path relative to the clips directory
    clip_png: str | None = None
    schema_version: int = SCHEMA_VERSION
    extra: dict[str, Any] = field(default_factory=dict)
    replayed: bool = False

    @classmethod
    def from_result(
        cls, result: MonitorResult, *, boot_id: str, seq: int, raised_at: datetime | None = None
    ) -> Alert:
        return cls(
            id=str(uuid.uuid4()),
            boot_id=boot_id,
            seq=seq,
            stream=result.stream,
            monitor=result.monitor,
            severity=result.severity,
            verdict=result.verdict,
            answer=result.answer,
            question=result.question,
            start=result.start,
            end=result.end,
            model_id=result.model_id,
            latency_s=float(result.latency_s),
            raised_at=raised_at or utcnow(),
            choice=result.choice,
            level_dbfs=result.level_dbfs,
            score=result.score,
            extra=dict(result.extra),
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("start", "end", "raised_at"):
            d[k] = _iso(d[k])
        # Home Assistant's MQTT `event` entity reads the event type from this key.
        d["event_type"] = self.monitor
        return d

    def to_json(self) -> str:
        return _dumps(self.to_dict())

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Alert:
        d = dict(d)
        d.pop("event_type", None)
        for k in ("start", "end", "raised_at"):
            d[k] = datetime.fromisoformat(d[k].replace("Z", "+00:00"))
        return cls(**d)


def _dumps(d: dict[str, Any]) -> str:
    return json.dumps(d, separators=(",", ":"), sort_keys=True, default=str)


def as_replayed(payload: str) -> str:
    """The alert JSON ``payload`` with ``replayed: true`` (everything else unchanged)."""
    d = json.loads(payload)
    d["replayed"] = True
    return _dumps(d)
