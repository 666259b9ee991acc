"""`AlertPipeline`: the one object the daemon uses to turn monitor results into alerts.

Usage by the daemon supervisor::

    pipeline = AlertPipeline(config.alerts, METRICS, boot_id, data_dir).start()
    pipeline.submit(result, audio, sample_rate)   # per MonitorResult; never blocks
    pipeline.publish_level(stream, dbfs)          # per clip; never blocks
    ...
    pipeline.stop(timeout=10)                     # on SIGTERM, after ingest stopped

Contract the caller relies on:

* **Nothing blocks the caller.** `submit` puts ``(result, audio, sample_rate)`` on a
  bounded queue (``AlertsConfig.queue_size``) and returns False, counting
  ``fe_alert_results_dropped``, when it is full. `publish_level` only overwrites the
  latest value per stream. Everything else runs on the pipeline's threads: one worker
  (rules, history, clips, outbox), one MQTT thread that alone owns the paho client, and
  one webhook thread.
* **Per result** the worker records it in the history, publishes the answer to
  ``<prefix>/<stream>/<monitor>/answer`` (and a scored result's score, in %, to
  ``<prefix>/<stream>/<monitor>/score``), runs the hysteresis rules
  (`alerts.rules`), and when an alert is raised saves the evidence clip (``audio`` is
  the span the result is about; pass None to skip the clip), commits it to the durable
  outbox *before* any sink sends it and before the ON state that goes with it is
  published, records it in the history, then publishes the ON/OFF state change.
  History writes are best effort (logged as ``history write failed``): a broken
  history never costs an alert. ``seq`` restarts at 1 for every ``boot_id``.
* **`stop(timeout)`** stops accepting results, lets the worker finish the queued ones,
  flushes the outbox to MQTT, publishes ``offline`` (retained), disconnects, and returns
  within about ``timeout`` seconds. Alerts not delivered by then stay in the outbox and
  are replayed by the next start. Returns True when everything was delivered.
* `health()` is suitable for ``/healthz`` (``ok`` is False once the worker died or the
  pipeline stopped); `last_progress` (monotonic seconds) moves whenever the worker
  handled a result or ticked, for the systemd watchdog predicate.

Files under ``data_dir``: ``outbox.sqlite3``, ``history.sqlite3``, ``clips/``.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from alerts.clips import ClipStore
from alerts.config import AlertsConfig
from alerts.entities import EntityIds, reconcile
from alerts.history import History
from alerts.models import Alert, utcnow
from alerts.mqtt_sink import MqttSink
from alerts.outbox import Outbox
from alerts.rules import RuleEngine, Transition
from alerts.webhook import WebhookSink
from edge.constants import SAMPLE_RATE
from edge.log import register_secret
from edge.metrics import Metrics
from edge.results import AudioSpan, MonitorResult

log = structlog.get_logger(__name__)

_Item = tuple[MonitorResult, "AudioSpan | np.ndarray | None", int]


def answer_payload(r: MonitorResult) -> dict[str, Any]:
    """The retained answer JSON of ``<prefix>/<stream>/<monitor>/answer`` (docs/MQTT.md)."""
    return {
        "answer": r.answer, "verdict": r.verdict, "severity": r.severity, "choice": r.choice,
        "question": r.question, "start": r.start.isoformat(), "end": r.end.isoformat(),
        "model_id": r.model_id, "latency_s": r.latency_s, "level_dbfs": r.level_dbfs,
        "score": r.score, "threshold": r.threshold, "hysteresis": r.hysteresis, "probs": r.probs,
        "coverage": r.coverage, "explained": bool(r.extra.get("explained", False)),
    }


RAISED_KEPT = 1000


class AlertPipeline:
    def __init__(
        self,
        config: AlertsConfig,
        metrics: Metrics,
        boot_id: str,
        data_dir: Path | str,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.boot_id = boot_id
        self.data_dir = Path(data_dir)
        self._clock = clock
        register_secret(*config.secrets())
        self._queue: queue.Queue[_Item] = queue.Queue(maxsize=config.queue_size)
        self._accepting = False
        self._stopping = threading.Event()
        self._worker: threading.Thread | None = None
        self._seq = 0
        self._rules = RuleEngine(config, clock=clock)
        self.last_progress = time.monotonic()
        self.outbox: Outbox | None = None
        self.history: History | None = None
        self.clips: ClipStore | None = None
        self.mqtt: MqttSink | None = None
        self.webhook: WebhookSink | None = None
        self._sinks: list[str] = []
        # the alerts this run raised, in order (the newest RAISED_KEPT): for a run's summary
        self.raised: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ lifecycle
    def start(self, configured: Mapping[str, Iterable[str]] | None = None,
              scored: Mapping[str, Iterable[str]] | None = None) -> AlertPipeline:
        """Open the stores, start the threads. ``configured``: stream -> monitor names of
        the daemon's config; they are announced (state OFF) before the first connection.
        ``scored``: stream -> the scored ones among them (each also gets a score sensor;
        a monitor that stopped being scored loses its score sensor)."""
        if not self.config.enabled:
            log.info("alerts disabled")
            return self
        self.data_dir.mkdir(parents=True, exist_ok=True)
        c = self.config
        self.outbox = Outbox(self.data_dir / "outbox.sqlite3", c.outbox, self.metrics)
        if c.history.enabled:
            self.history = History(self.data_dir / "history.sqlite3")
        if c.clips.enabled:
            self.clips = ClipStore(self.data_dir / "clips", c.clips)
            self.metrics.clips_bytes.set(self.clips.total_bytes)
        if c.mqtt.enabled:
            ids = self.history.entity_ids() if self.history is not None else EntityIds()
            self.mqtt = MqttSink(c, boot_id=self.boot_id, outbox=self.outbox, metrics=self.metrics, entities=ids)
            self._sinks.append("mqtt")
            known = set(self.history.known_monitors()) if self.history is not None else set()
            want = {(s, m) for s, ms in (configured or {}).items() for m in ms}
            scored_pairs = {(s, m) for s, ms in (scored or {}).items() for m in ms}
            if c.homeassistant.enabled:
                self._entity_lifecycle(ids, known, configured, scored)
            pairs = want if configured is not None else known
            for stream, monitor in sorted(pairs):
                self.mqtt.declare(stream, monitor, scored=(stream, monitor) in scored_pairs)
                # the previous run may have left a retained ON; this run starts OFF
                self.mqtt.initial_state(stream, monitor)
        if self.history is not None:
            for stream, ms in (configured or {}).items():
                for m in ms:
                    self._history("monitor", self.history.record_monitor, stream, m)
        if c.webhook.enabled:
            self.webhook = WebhookSink(c.webhook, outbox=self.outbox, metrics=self.metrics, boot_id=self.boot_id)
            self._sinks.append("webhook")
        self.outbox.enforce_bounds()
        pending = self.outbox.count()
        if self.mqtt:
            self.mqtt.start()
        if self.webhook:
            self.webhook.start()
        self._worker = threading.Thread(target=self._run, name="alert-worker", daemon=True)
        self._worker.start()
        self._accepting = True
        log.info("alert pipeline started", boot_id=self.boot_id, data_dir=str(self.data_dir), sinks=self._sinks,
                 outbox_pending=pending)
        return self

    def _entity_lifecycle(
        self, ids: EntityIds, known: set[tuple[str, str]], configured: Mapping[str, Iterable[str]] | None,
        scored: Mapping[str, Iterable[str]] | None = None,
    ) -> None:
        """Ids for every entity (legacy ids kept where unique), and, when the daemon says
        what is configured, removal of what an earlier run announced and is gone now."""
        assert self.mqtt is not None
        stale = reconcile(
            ids, known, None if configured is None else {s: list(ms) for s, ms in configured.items()},
            discovery_prefix=self.config.homeassistant.discovery_prefix, node_id=self.config.node_id,
            scored=None if scored is None else {s: list(ms) for s, ms in scored.items()},
        )
        if stale:
            log.info("removing home assistant entities no longer configured",
                     entities=[f"{e.component}:{e.stream}/{e.monitor}" if e.monitor else f"{e.component}:{e.stream}"
                               for e, _t in stale])
            self.mqtt.remove(stale)

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop ingest, finish queued results, flush, publish ``offline``; bounded by ``timeout``."""
        deadline = time.monotonic() + timeout
        self._accepting = False
        self._stopping.set()
        if self._worker is not None:
            self._worker.join(max(0.0, timeout * 0.4))
            if self._worker.is_alive():
                log.warning("alert worker did not finish in time", queued=self._queue.qsize())
        delivered = True
        if self.webhook is not None:
            # the webhook has no "offline" message; let it finish what is in flight
            self.webhook.stop(max(0.0, min(self.config.webhook.timeout_s, (deadline - time.monotonic()) * 0.3)))
        if self.mqtt is not None:
            delivered = self.mqtt.stop(max(0.0, deadline - time.monotonic()))
        pending = self.outbox.count() if self.outbox else 0
        # close the databases only when no thread can still use them (a thread that
        # overran its share of the timeout is a daemon thread and dies with the process)
        threads = [self._worker, getattr(self.mqtt, "_thread", None), getattr(self.webhook, "_thread", None)]
        if not any(t is not None and t.is_alive() for t in threads):
            for db in (self.outbox, self.history):
                if db is not None:
                    db.close()
        log.info("alert pipeline stopped", delivered=delivered and pending == 0, outbox_pending=pending)
        return delivered and pending == 0

    # ------------------------------------------------------------------ caller API (non-blocking)
    def submit(self, result: MonitorResult, audio: AudioSpan | np.ndarray | None = None,
               sample_rate: int = SAMPLE_RATE) -> bool:
        """Queue one result (and the audio of its span, for the evidence clip: an `AudioSpan`
        reference is read only when an alert is raised, so the queue holds no copy). Never blocks."""
        if not self._accepting:
            return False
        try:
            self._queue.put_nowait((result, audio, sample_rate))
            return True
        except queue.Full:
            self.metrics.alert_results_dropped.inc()
            log.warning("alert queue full: result dropped", stream=result.stream, monitor=result.monitor)
            return False

    def publish_level(self, stream: str, dbfs: float) -> None:
        """The latest level of a stream, in dBFS, for ``<prefix>/<stream>/level``. Never blocks."""
        if self.mqtt is not None and self._accepting:
            self.mqtt.set_level(stream, dbfs)

    def set_stream_health(self, stream: str, available: bool, payload: dict[str, Any]) -> None:
        """A stream's input state changed (edge/health.py): its Home Assistant availability
        (``<prefix>/<stream>/availability``) and Input sensor (``<prefix>/<stream>/health``)."""
        if self.mqtt is not None:
            self.mqtt.set_stream_health(stream, available, payload)

    def declare(self, stream: str, monitors: Iterable[str], scored: Iterable[str] = ()) -> None:
        """Announce a stream's monitors to Home Assistant before their first result (optional);
        the ``scored`` ones get a score sensor too."""
        sc = set(scored)
        for m in monitors:
            if self.mqtt is not None:
                self.mqtt.declare(stream, m, scored=m in sc)
                self.mqtt.initial_state(stream, m)
            if self.history is not None:
                self.history.record_monitor(stream, m)

    def health(self) -> dict[str, Any]:
        alive = self._worker is not None and self._worker.is_alive()
        h: dict[str, Any] = {
            "ok": (alive and not self._stopping.is_set()) or not self.config.enabled,
            "worker_alive": alive,
            "queued_results": self._queue.qsize(),
            "outbox_pending": self.outbox.count() if self.outbox and alive else None,
        }
        if self.mqtt is not None:
            h["mqtt"] = self.mqtt.health()
        if self.webhook is not None:
            h["webhook"] = self.webhook.health()
        return h

    # ------------------------------------------------------------------ worker thread
    def _run(self) -> None:
        next_tick = 0.0
        next_prune = time.monotonic() + 5.0
        while True:
            try:
                item = self._queue.get(timeout=0.2)
            except queue.Empty:
                item = None
                if self._stopping.is_set():
                    break
            try:
                if item is not None:
                    self._handle(*item)
                now = time.monotonic()
                if now >= next_tick:
                    next_tick = now + 1.0
                    for tr in self._rules.tick():
                        self._transition(tr)
                if now >= next_prune:
                    next_prune = now + 60.0
                    self._prune()
            except Exception:
                log.exception("alert worker error")
            self.last_progress = time.monotonic()

    def _history(self, what: str, fn: Callable[..., None], *args: Any, **kw: Any) -> None:
        """A history write that may fail without costing an alert (the history is local
        convenience; the outbox is what delivery depends on)."""
        try:
            fn(*args, **kw)
        except Exception as e:  # noqa: BLE001 - a failed history write is logged; the alert still goes out
            log.error("history write failed", what=what, error=f"{type(e).__name__}: {e}")

    def _handle(self, r: MonitorResult, audio: AudioSpan | np.ndarray | None, sample_rate: int) -> None:
        if self.history is not None:
            if self.config.history.record_results:
                self._history("result", self.history.record_result, r, self.boot_id, ts=self._clock())
            self._history("monitor", self.history.record_monitor, r.stream, r.monitor, ts=self._clock())
        if self.mqtt is not None:
            self.mqtt.declare(r.stream, r.monitor, scored=r.score is not None)
            self.mqtt.set_answer(r.stream, r.monitor, answer_payload(r))
            if r.score is not None:  # the score sensor: every score, in %
                self.mqtt.set_score(r.stream, r.monitor, r.score)
        d = self._rules.observe(r)
        if d.raise_alert:
            # the alert is committed to the outbox before the ON state that announces it is
            # published: a crash in between leaves an alert to replay, never an ON without one
            self._raise(r, audio, sample_rate)
        if d.transition is not None:
            self._transition(d.transition)
        if d.suppressed:
            self.metrics.alerts_suppressed.labels(d.suppressed).inc()
            log.info("alert suppressed", stream=r.stream, monitor=r.monitor, reason=d.suppressed)

    def _transition(self, tr: Transition) -> None:
        if self.mqtt is not None:
            self.mqtt.set_state(tr.stream, tr.monitor, tr.state)
        if self.history is not None:
            self._history("transition", self.history.record_transition, tr.stream, tr.monitor, tr.state,
                          tr.reason, ts=tr.at)
        log.info("state changed", stream=tr.stream, monitor=tr.monitor, state=tr.state, reason=tr.reason)

    def _raise(self, r: MonitorResult, span: AudioSpan | np.ndarray | None, sample_rate: int) -> None:
        self._seq += 1
        alert = Alert.from_result(r, boot_id=self.boot_id, seq=self._seq, raised_at=utcnow())
        audio = span.read() if isinstance(span, AudioSpan) and self.clips is not None else span
        if isinstance(span, AudioSpan) and self.clips is not None and audio is None:
            log.warning("evidence clip not saved: its audio has left the ring", alert_id=alert.id)
        if self.clips is not None and isinstance(audio, np.ndarray):
            try:
                flac, png = self.clips.save(alert.id, audio, sample_rate, alert.raised_at)
                alert = dataclasses.replace(alert, clip_flac=flac, clip_png=png)
                self.metrics.clips_bytes.set(self.clips.total_bytes)
            except Exception as e:  # noqa: BLE001 - a clip is evidence, not a reason to lose the alert
                log.error("evidence clip not saved", alert_id=alert.id, error=str(e))
        payload = alert.to_json()
        if self.outbox is not None and self._sinks:
            self.outbox.add(alert.id, payload, self._sinks)
        if self.history is not None:
            self._history("alert", self.history.record_alert, alert)
        self.metrics.alerts_raised.labels(r.stream, r.monitor).inc()
        self.raised.append({"id": alert.id, "stream": r.stream, "monitor": r.monitor,
                            "severity": r.severity, "answer": r.answer,
                            "offset_s": r.extra.get("offset_s"), "raised_at": alert.raised_at})
        del self.raised[:-RAISED_KEPT]
        log.info("alert raised", alert_id=alert.id, seq=alert.seq, stream=r.stream, monitor=r.monitor,
                 severity=r.severity)
        if self.mqtt is not None:
            self.mqtt.wake()
        if self.webhook is not None:
            self.webhook.wake()

    def _prune(self) -> None:
        if self.outbox is not None:
            self.outbox.enforce_bounds()
        if self.history is not None:
            n = self.history.prune(self.config.history.retention_s)
            if n:
                log.info("history retention deleted rows", rows=n)
        if self.clips is not None:
            self.clips.enforce()
            self.metrics.clips_bytes.set(self.clips.total_bytes)
