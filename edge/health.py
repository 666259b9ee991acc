"""Health of the running daemon: per-stream input state and the `/healthz` report.

The HTTP layer only serialises what `health_report` returns (``report["http_status"]`` is the
status code to answer with); the MQTT availability of each stream, the ``fe_stream_*``
metrics and the log lines come from the same `stream_health`, so every view agrees.

Per stream, a **state**:

* ``starting``: no audio yet, and ``silent_after`` has not passed since the daemon started;
* ``live``: the last frame arrived less than ``silent_after`` ago;
* ``silent``: the source is up (or has no notion of up) but no frame arrived for
  ``silent_after`` (per stream: ``streams[].silent_after``, default ``health.silent_after``);
* ``reconnecting``: the source says it has lost its input (MQTT broker disconnected, a
  camera being reconnected or retried), reported at once, whatever the last frame's age
  (a source still making its first connection counts as ``starting`` for ``silent_after``);
* ``ended``: a finite source (a file without ``loop``) has been played to its end.

Silence is a state to report, never a reason for a restart (the watchdog follows the worker,
edge/sdnotify.py). The report's ``status`` is ``ok``, ``degraded`` (something to look at:
a stream ``silent`` or ``reconnecting``; each reason in ``reasons``; HTTP **200**, so an
orchestrator does not restart a healthy daemon for a quiet microphone) or ``failing`` (the
worker thread is dead, the daemon is stopping, or the alert stage reports a failure; HTTP
**503**). ``ok`` is false only when failing (as before ``status`` existed), so a check on
``ok`` keeps its meaning; read ``status`` / ``reasons`` for the degraded states.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from .running import RunningDaemon

log = structlog.get_logger(__name__)

STATES = ("starting", "live", "silent", "reconnecting", "ended")
#: states in which a stream's Home Assistant entities are available
AVAILABLE = ("starting", "live", "ended")
#: source-reported states meaning the input is lost and being re-established
SOURCE_DOWN = ("connecting", "retrying", "failed", "disconnected")


@dataclass(frozen=True)
class StreamHealth:
    stream: str
    state: str  # one of STATES
    last_frame_age_s: float | None  # None: no frame yet
    silent_after_s: float
    source_state: str | None = None  # what a network source says (streaming, retrying, ...)

    @property
    def available(self) -> bool:
        return self.state in AVAILABLE

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "state": self.state,
            "last_frame_age_s": None if self.last_frame_age_s is None
            else round(self.last_frame_age_s, 1),
            "silent_after_s": self.silent_after_s,
            "silent": self.state == "silent",
        }
        if self.source_state is not None:
            d["source_state"] = self.source_state
        return d

    def reason(self) -> str | None:
        """One line for ``reasons`` when the stream needs attention."""
        age = "no audio yet" if self.last_frame_age_s is None else \
            f"no audio for {self.last_frame_age_s:.0f} s"
        if self.state == "silent":
            return f"stream {self.stream} is silent: {age} (silent_after {self.silent_after_s:g} s)"
        if self.state == "reconnecting":
            return f"stream {self.stream} is reconnecting ({self.source_state}): {age}"
        return None


def classify(*, age_s: float | None, since_start_s: float, silent_after_s: float, ended: bool,
             source_state: str | None) -> str:
    """The state of one stream from what is known about it (see the module doc)."""
    if ended:
        return "ended"
    quiet_for = since_start_s if age_s is None else age_s
    first_connect = age_s is None and source_state == "connecting" and quiet_for <= silent_after_s
    if source_state in SOURCE_DOWN and not first_connect:
        return "reconnecting"  # the source knows it lost its input: say so at once, not after silent_after
    if quiet_for <= silent_after_s:
        return "starting" if age_s is None else "live"
    return "silent"


ALERT_BROKER_GRACE_S = 15.0  # a first connect or a reconnect after a broker restart is not news


def alert_sink_reasons(alerts: dict[str, Any]) -> list[str]:
    """Degraded reasons from the alert stage's sinks: alerts are kept in the outbox, but no
    dashboard sees them while the broker (or webhook) cannot be reached."""
    out = []
    m = alerts.get("mqtt")
    if m and not m.get("connected") and (m.get("disconnected_for_s") or 0.0) > ALERT_BROKER_GRACE_S:
        out.append(f"alert broker {m.get('broker')} unreachable for {m['disconnected_for_s']:.0f} s "
                   f"({m.get('last_error') or 'not connected'}); {m.get('pending', 0)} alert(s) wait in the outbox")
    w = alerts.get("webhook")
    if w and w.get("last_error") and w.get("pending"):
        out.append(f"webhook failing ({w['last_error']}); {w['pending']} alert(s) wait in the outbox")
    return out


def source_states(d: RunningDaemon) -> dict[str, dict[str, Any]]:
    """stream -> what its source reports about itself (network sources; URLs redacted)."""
    out: dict[str, dict[str, Any]] = {}
    for src in d.sources:
        status = getattr(src, "status", None)
        if callable(status):
            try:
                out.update(status())
            except Exception:  # a report, not a reason to fail the health check
                log.exception("source status failed", source=src.describe())
    return out


def stream_health(d: RunningDaemon, now: float | None = None) -> dict[str, StreamHealth]:
    """The state of every configured stream of daemon ``d`` (``now``: time.monotonic())."""
    now = time.monotonic() if now is None else now
    started = d.started_at if d.started_at is not None else now
    status = source_states(d)
    out = {}
    for sid, s in d.streams.items():
        last = d.last_frame_at(sid)
        src = status.get(sid, {}).get("state")
        after = d.silent_after(sid)
        age = None if last is None else max(0.0, now - last)
        out[sid] = StreamHealth(sid, classify(age_s=age, since_start_s=now - started,
                                              silent_after_s=after, ended=s.ended,
                                              source_state=src), age, after, src)
    return out


def health_report(d: RunningDaemon, now: float | None = None) -> dict[str, Any]:
    """What ``/healthz`` answers: ``status`` ok / degraded / failing, ``reasons``, per-stream
    health and pipeline details, and ``http_status`` (200, or 503 when failing)."""
    alive = d.worker_alive()
    streams = stream_health(d, now)
    sources = source_states(d)
    reasons: list[str] = []
    failing = False
    if not alive:
        failing = True
        reasons.append("the inference worker is not running")
    if d.stop_event.is_set():
        failing = True
        reasons.append("the daemon is stopping")
    alerts = d.alerts_pipeline.health() if d.alerts_pipeline is not None else None
    if alerts is not None and not alerts.get("ok", True):
        failing = True
        reasons.append("the alert stage reports a failure (see alerts)")
    if alerts is not None:
        reasons += alert_sink_reasons(alerts)
    for h in streams.values():
        r = h.reason()
        if r:
            reasons.append(r)
    status = "failing" if failing else ("degraded" if reasons else "ok")
    report: dict[str, Any] = {
        "ok": not failing,
        "status": status,
        "http_status": 503 if failing else 200,
        "reasons": reasons,
        "worker_alive": alive,
        "silent_streams": sorted(sid for sid, h in streams.items() if h.state == "silent"),
        "model": getattr(d.model, "model_id", None),
        "streams": {},
    }
    for sid, s in d.streams.items():
        entry = streams[sid].as_dict()
        entry.update({
            "samples": s.ring.write_pos - (s.ring.origin or 0),
            "clips_pending": len(s.pending),
            "memory_clips": len(s.memory),
            "level_dbfs": s.last_reading.level_dbfs if s.last_reading else None,
            "novelty": s.last_reading.novelty if s.last_reading else None,
        })
        if sid in sources:
            entry["source"] = sources[sid]
        report["streams"][sid] = entry
    if alerts is not None:
        report["alerts"] = alerts
    return report


class HealthWatcher:
    """Turns changes of stream state into one log line each and an ``on_change(health)``
    call (the daemon publishes the MQTT availability from it); checks every ``interval_s``."""

    def __init__(self, d: RunningDaemon, on_change: Callable[[StreamHealth], None] | None = None,
                 interval_s: float = 1.0) -> None:
        self._d = d
        self._on_change = on_change
        self._interval = interval_s
        self._last: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="health", daemon=True)

    def start(self) -> HealthWatcher:
        self.check()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2)

    def check(self, now: float | None = None) -> list[StreamHealth]:
        """Compare with the last check; report and return the streams whose state changed."""
        changed = []
        for sid, h in stream_health(self._d, now).items():
            before = self._last.get(sid)
            if before == h.state:
                continue
            self._last[sid] = h.state
            changed.append(h)
            if before is not None or h.state not in ("starting", "live"):
                kw = {"stream": sid, "state": h.state, "was": before,
                      "last_frame_age_s": h.as_dict()["last_frame_age_s"]}
                if h.state in ("silent", "reconnecting"):
                    log.warning("stream input lost", silent_after_s=h.silent_after_s,
                                source_state=h.source_state, **kw)
                else:
                    log.info("stream state", **kw)
            if self._on_change is not None:
                try:
                    self._on_change(h)
                except Exception:
                    log.exception("stream state hand-off failed", stream=sid)
        return changed

    def _main(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.check()
            except Exception:
                log.exception("health check failed")
