"""The MQTT sink: one thread owns one paho-mqtt 2.x client and does all its I/O.

Other threads never touch the client. They hand over work through thread-safe,
non-blocking calls that only update in-memory state and wake the thread:

* `set_state` / `set_answer`: retained "latest value" topics; the latest value of each
  is kept and republished on every (re)connect, intermediate values are sent while
  connected and discarded while not (bounded by ``live_queue_size``);
* `set_level`: the latest dBFS per stream, sent QoS 0 at most every
  ``level_min_interval_s``, never queued;
* `set_score`: a scored monitor's latest score (retained ``<prefix>/<stream>/<monitor>/score``,
  percent, like a state: the latest value republished on every (re)connect);
* `declare`: a (stream, monitor) pair for Home Assistant discovery (``scored``: it also
  gets a score sensor);
* `wake`: there are new rows in the outbox.

Alerts are never handed over directly: the thread reads them from the SQLite
`alerts.outbox.Outbox` in row order and publishes each one QoS 1 to
``<prefix>/<stream>/event`` (Home Assistant's event entity, first) and
``<prefix>/events``. Each topic's PUBACK is recorded durably per alert
(`Outbox.record_topic`) the moment it arrives, so a topic that acknowledged an alert is
never sent it again, not after a disconnect, a refusal of the other topic or a crash;
the row is deleted when both topics are done. At most ``max_inflight`` rows are in
flight. After a disconnect the paho client is discarded (so paho never re-sends
anything behind our back) and the next connection replays, in order, every topic that
has not acknowledged. A re-sent payload carries ``"replayed": true`` (and the original
``raised_at``). The at-least-once edge that remains: a publish the broker took whose
PUBACK was lost with the connection (or with the process) is sent again.

Connection handling: Last Will ``<prefix>/status`` = ``offline`` (retained, QoS 1).
On every successful connect, and whenever Home Assistant announces itself
(``homeassistant/status`` = ``online``), the thread *announces*: discovery configs
(empty retained configs for entities to remove), then the retained state and answer
of every known monitor; only when the broker acknowledged all of those does it
publish ``online`` (retained; MQTT 5 user property ``boot_id``) and ``<prefix>/info``,
and only then live traffic and the outbox. A subscriber therefore never sees
``online`` next to a state this run did not compute (e.g. an ``ON`` retained by a run
that crashed). Failures (TCP, TLS verification, CONNACK refusal: bad credentials /
not authorised) are logged once per attempt with the reason and retried with
exponential backoff (``backoff_initial_s`` .. ``backoff_max_s``, +-20 % jitter).
With MQTT 5, a PUBACK/SUBACK reason code >= 0x80 (e.g. 0x87 *Not authorized* from a
broker ACL) is logged as an error and counted in ``fe_alerts_failed{sink="mqtt"}``;
only the refused topic is retried (with that alert's own backoff: other alerts are not
held back), at most ``max_refusals`` times per alert, then given up (``fe_alerts_dropped{reason="refused"}``).
MQTT 3.1.1 cannot report ACL denials at all.
"""

from __future__ import annotations

import json
import random
import ssl
import threading
import time
from collections import deque
from typing import Any

import paho.mqtt.client as mqtt
import structlog
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from alerts.config import AlertsConfig
from alerts.discovery import discovery_entities
from alerts.entities import Entity, EntityIds
from alerts.models import as_replayed
from alerts.outbox import Outbox
from alerts.topics import Topics
from edge import __version__
from edge.metrics import Metrics
from edge.mqtt_client import MqttConfig, new_client

log = structlog.get_logger(__name__)

SINK = "mqtt"


def _close_client(c: mqtt.Client) -> None:
    try:
        c._sock_close()  # no public API closes a half-open paho socket without a network round trip
    except Exception:  # noqa: BLE001, S110 - best effort  # pragma: no cover
        pass


def new_alert_client(cfg: MqttConfig, client_id: str, *, max_inflight: int = 64) -> mqtt.Client:
    """The broker's client (edge.mqtt_client.new_client) with what alert publishing adds:
    exceptions in callbacks raised instead of swallowed, `max_inflight` QoS 1 messages in
    flight, no cap on queued ones; not connected. The sink and `alerts prune` use it."""
    c = new_client(cfg, client_id)
    c.suppress_exceptions = False
    c.max_inflight_messages_set(max_inflight)
    c.max_queued_messages_set(0)
    return c


def removal_topics(topics: Topics, e: Entity) -> list[str]:
    """The retained topics besides the discovery config that go with an entity removed
    from Home Assistant (emptied, so no stale value stays on the broker)."""
    if e.kind == "monitor":
        return [topics.state(e.stream, e.monitor), topics.answer(e.stream, e.monitor)]
    if e.kind == "score":
        return [topics.score(e.stream, e.monitor)]
    if e.kind == "input":  # the stream is gone: its retained input topics too
        return [topics.health(e.stream), topics.availability(e.stream)]
    return []


class MqttSink:
    def __init__(
        self, config: AlertsConfig, *, boot_id: str, outbox: Outbox, metrics: Metrics, version: str = __version__,
        entities: EntityIds | None = None,
    ) -> None:
        self.entities = entities or EntityIds()
        self._cfg = config.mqtt
        self._ha = config.homeassistant
        self._node_id = config.node_id
        self._boot_id = boot_id
        self._outbox = outbox
        self._metrics = metrics
        self._version = version
        self.topics = Topics(self._cfg.topic_prefix)
        self.client_id = self._cfg.client_id or f"flamingo-edge-{config.node_id}"
        self._started_at = time.time()
        # --- shared with other threads (under _lock) ---
        self._lock = threading.Lock()
        self._live: deque[tuple[str, str, int, bool]] = deque()
        self._retained: dict[str, str] = {}
        self._streams: dict[str, set[str]] = {}
        self._scored: dict[str, set[str]] = {}  # stream -> monitors with a score sensor
        self._removals: dict[str, Entity] = {}  # config topic -> entity to remove from Home Assistant
        self._discovery_dirty = True
        self._levels: dict[str, float] = {}
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._flush_deadline = 0.0
        self._thread: threading.Thread | None = None
        self.live_dropped = 0
        # --- owned by the sink thread ---
        self._client: mqtt.Client | None = None
        self._connected = False
        self._refused: str | None = None
        self._dropped: str | None = None
        self._backoff = self._cfg.backoff_initial_s
        self._next_attempt = 0.0
        self._inflight: dict[int, tuple[int, str]] = {}  # mid -> (outbox row, topic)
        self._row_topics: dict[int, set[str]] = {}  # outbox row -> topics in flight
        self._row_required: dict[int, tuple[str, ...]] = {}
        self._attempted: set[int] = set()  # rows this process published at least once
        self._announce_mids: set[int] = set()
        self._online = False  # `online` published for the current announcement
        self._cursor = 0
        self._retry_at: dict[int, float] = {}  # outbox row -> when its refused topic may be retried
        self._control_mids: dict[int, str] = {}
        self._offline_mid: int | None = None
        self._offline_acked = False
        self._level_sent_at: dict[str, float] = {}
        self.last_error: str | None = None
        self._down_since: float | None = time.monotonic()  # not connected since (monotonic); None: connected
        self.connects = 0
        self.flushed_on_stop: bool | None = None

    # ------------------------------------------------------------------ public, any thread
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="mqtt-sink", daemon=True)
        self._thread.start()

    def stop(self, timeout: float) -> bool:
        """Flush the outbox (up to ``timeout``), publish ``offline``, disconnect.

        Returns True when everything pending was acknowledged and ``offline`` was
        published; False otherwise (undelivered alerts stay in the outbox)."""
        self._flush_deadline = time.monotonic() + max(timeout, 0.0)
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout + 2.0)
        return bool(self.flushed_on_stop)

    @property
    def connected(self) -> bool:
        return self._connected

    def health(self) -> dict[str, Any]:
        down = self._down_since
        return {"connected": self._connected, "last_error": self.last_error, "pending": self._outbox.count(SINK),
                "broker": f"{self._cfg.host}:{self._cfg.port}",
                "disconnected_for_s": None if down is None else round(time.monotonic() - down, 1)}

    def wake(self) -> None:
        self._wake.set()

    def declare(self, stream: str, monitor: str, scored: bool = False) -> None:
        with self._lock:
            if stream not in self._streams:
                # available until someone reports its input lost (set_stream_health)
                self._retain_locked(self.topics.availability(stream), "online", only_if_unset=True)
            mons = self._streams.setdefault(stream, set())
            if monitor not in mons:
                mons.add(monitor)
                self._discovery_dirty = True
                self._wake.set()
            if scored:
                sc = self._scored.setdefault(stream, set())
                if monitor not in sc:
                    sc.add(monitor)
                    self._discovery_dirty = True
                    self._wake.set()

    def remove(self, entities: list[tuple[Entity, str]]) -> None:
        """Remove these (entity, config topic) from Home Assistant: an empty retained config
        (and, for a monitor, empty retained state and answer) at the next announcement."""
        with self._lock:
            for e, topic in entities:
                self._removals[topic] = e

    def set_state(self, stream: str, monitor: str, state: str) -> None:
        self._set_retained(self.topics.state(stream, monitor), state)

    def initial_state(self, stream: str, monitor: str, state: str = "OFF") -> None:
        """Publish ``state`` unless this run already has one for the pair: a new run's rules
        start OFF, and the broker may still hold the last run's retained ``ON``."""
        self._set_retained(self.topics.state(stream, monitor), state, only_if_unset=True)

    def set_score(self, stream: str, monitor: str, score: float) -> None:
        """A scored monitor's latest score (probability 0-1), published in percent."""
        self._set_retained(self.topics.score(stream, monitor), f"{100.0 * float(score):.2f}")

    def set_answer(self, stream: str, monitor: str, payload: dict[str, Any]) -> None:
        self._set_retained(self.topics.answer(stream, monitor), json.dumps(payload, separators=(",", ":"), default=str))

    def set_stream_health(self, stream: str, available: bool, payload: dict[str, Any]) -> None:
        """The stream's input state: retained availability (``online`` / ``offline``) for its
        entities and the health JSON for its Input sensor; republished on connect."""
        self._set_retained(self.topics.health(stream), json.dumps(payload, separators=(",", ":"), default=str))
        self._set_retained(self.topics.availability(stream), "online" if available else "offline")

    def set_level(self, stream: str, dbfs: float) -> None:
        with self._lock:
            self._levels[stream] = float(dbfs)

    def _set_retained(self, topic: str, payload: str, only_if_unset: bool = False) -> None:
        with self._lock:
            if not self._retain_locked(topic, payload, only_if_unset):
                return
        self._wake.set()

    def _retain_locked(self, topic: str, payload: str, only_if_unset: bool = False) -> bool:
        """`_set_retained` with ``_lock`` held, without waking the thread; False: kept the old."""
        if only_if_unset and topic in self._retained:
            return False
        self._retained[topic] = payload
        if len(self._live) >= self._cfg.live_queue_size:
            self._live.popleft()
            self.live_dropped += 1
        self._live.append((topic, payload, 1, True))
        return True

    # ------------------------------------------------------------------ the sink thread
    def _run(self) -> None:
        while True:
            now = time.monotonic()
            if self._stopping.is_set() and self._finish(now):
                break
            if self._client is None:
                if self._stopping.is_set():
                    break
                if now < self._next_attempt:
                    self._wake.wait(min(0.5, self._next_attempt - now))
                    self._wake.clear()
                    continue
                self._connect()
                continue
            try:
                rc = self._client.loop(timeout=0.05)
            except Exception as e:  # a callback raised, or the socket broke mid-read
                log.exception("mqtt loop error")
                rc = MQTTErrorCode.MQTT_ERR_UNKNOWN
                self._dropped = f"{type(e).__name__}: {e}"
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or self._dropped:
                self._lost(rc)
                continue
            if self._connected:
                try:
                    self._service(time.monotonic())
                except Exception:
                    log.exception("mqtt service error")
        self._metrics.mqtt_connected.set(0)

    def _make_client(self) -> mqtt.Client:
        c = new_alert_client(self._cfg, self.client_id, max_inflight=2 * self._cfg.max_inflight + 64)
        c.will_set(self.topics.status, "offline", qos=1, retain=True)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        c.on_subscribe = self._on_subscribe
        c.on_message = self._on_message
        return c

    def _connect(self) -> None:
        self._refused = self._dropped = None
        try:
            c = self._make_client()
        except (OSError, ssl.SSLError, ValueError) as e:  # unreadable CA/cert/key file
            self._fail("tls_config", f"cannot load TLS files: {e}")
            return
        self._client = c
        try:
            if self._cfg.protocol == "5":
                c.connect(self._cfg.host, self._cfg.port, self._cfg.keepalive_s, clean_start=True)
            else:
                c.connect(self._cfg.host, self._cfg.port, self._cfg.keepalive_s)
        except ssl.SSLCertVerificationError as e:
            self._fail("tls_verify", f"TLS certificate verification failed: {e.verify_message}")
        except ssl.SSLError as e:
            from edge.mqtt_tls import client_cert_hint, is_client_cert_alert

            if not self._cfg.tls.cert_file and is_client_cert_alert(f"{e.reason} {e}"):
                self._fail("tls_client_cert", client_cert_hint("alerts.mqtt"))
            else:
                self._fail("tls", f"TLS handshake failed: {e.reason or e}")
        except ConnectionRefusedError:
            self._fail("refused", "TCP connection refused (is the broker running?)")
        except (TimeoutError, OSError) as e:
            self._fail("network", f"cannot reach broker: {e}")

    def _fail(self, reason: str, message: str) -> None:
        """A connection attempt failed: log it clearly, back off, retry later."""
        if self._client is not None:
            _close_client(self._client)
        self._client = None
        self._connected = False
        self._metrics.mqtt_connected.set(0)
        self._metrics.mqtt_connect_failures.labels(reason).inc()
        delay = self._backoff * random.uniform(0.8, 1.2)
        self._next_attempt = time.monotonic() + delay
        self._backoff = min(self._backoff * 2, self._cfg.backoff_max_s)
        self.last_error = message
        log.error(
            "mqtt connection failed", reason=reason, error=message, host=self._cfg.host, port=self._cfg.port,
            retry_in_s=round(delay, 2),
        )

    def _lost(self, rc: MQTTErrorCode) -> None:
        was_connected = self._connected
        self._reset_inflight()
        if self._refused is not None:
            self._fail("auth" if "authori" in self._refused.lower() or "password" in self._refused.lower()
                       else "refused_connack", f"broker refused the connection: {self._refused}")
            return
        reason = self._dropped or mqtt.error_string(rc)
        if not was_connected:
            if self._cfg.tls.enabled:  # paho only says "connection lost": ask TLS why
                from edge.mqtt_tls import CLIENT_CERT_REQUIRED, client_cert_hint, diagnose_tls_close

                why = diagnose_tls_close(self._cfg.host, self._cfg.port, self._cfg.tls)
                if why == CLIENT_CERT_REQUIRED:
                    self._fail("tls_client_cert", client_cert_hint("alerts.mqtt"))
                    return
                if why:
                    self._fail("tls", f"the broker ended the TLS session before CONNACK: {why}")
                    return
            self._fail("lost_before_connack", f"connection closed before CONNACK: {reason}")
            return
        if self._client is not None:
            _close_client(self._client)
        self._client = None
        self._connected = False
        self._down_since = time.monotonic()
        self._metrics.mqtt_connected.set(0)
        self.last_error = f"connection lost: {reason}"
        self._next_attempt = time.monotonic() + self._cfg.backoff_initial_s * random.uniform(0.5, 1.0)
        log.warning("mqtt connection lost", error=reason, retry_in_s=round(self._next_attempt - time.monotonic(), 2))

    def _reset_inflight(self) -> None:
        self._inflight.clear()
        self._row_topics.clear()
        self._row_required.clear()
        self._control_mids.clear()
        self._announce_mids.clear()
        self._online = False
        self._cursor = 0

    def _publish(self, topic: str, payload: str, qos: int, retain: bool, props: Properties | None = None) -> int | None:
        assert self._client is not None
        info = self._client.publish(topic, payload, qos=qos, retain=retain, properties=props)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._dropped = f"publish failed: {mqtt.error_string(info.rc)}"
            return None
        return info.mid

    def _control(self, topic: str, payload: str, retain: bool, props: Properties | None = None) -> int | None:
        mid = self._publish(topic, payload, 1, retain, props)
        if mid is not None:
            self._control_mids[mid] = topic
        return mid

    # --- paho callbacks (run inside client.loop(), i.e. on the sink thread) ---
    def _on_connect(self, client: mqtt.Client, _u: Any, _flags: Any, reason_code: Any, _props: Any) -> None:
        if reason_code.is_failure:
            self._refused = str(reason_code)
            return
        self._connected = True
        self._down_since = None
        self.connects += 1
        self._metrics.mqtt_connected.set(1)
        self._backoff = self._cfg.backoff_initial_s
        self.last_error = None
        self._reset_inflight()
        self._retry_at.clear()  # a new connection retries refused topics at once
        log.info("mqtt connected", host=self._cfg.host, port=self._cfg.port, client_id=self.client_id,
                 boot_id=self._boot_id)
        if self._ha.enabled:
            client.subscribe(f"{self._ha.discovery_prefix}/status", qos=1)
        self._announce()

    def _announce(self) -> None:
        """Discovery, then every retained state/answer this run computed; `online` follows
        once the broker acknowledged them all (`_on_publish` -> `_go_online`)."""
        self._online = False
        self._announce_mids.clear()
        with self._lock:
            self._discovery_dirty = True
            snapshot = list(self._retained.items())
            self._live.clear()
        if self._ha.enabled:
            self._announce_mids.update(self._publish_removals())
            self._announce_mids.update(self._publish_discovery())
        for topic, payload in snapshot:
            mid = self._publish(topic, payload, 1, True)
            if mid is not None:
                self._announce_mids.add(mid)
        if not self._announce_mids:
            self._go_online()

    def _go_online(self) -> None:
        if self._offline_mid is not None:
            return  # stopping: `offline` is out and must stay the last word (an announcement was still acked)
        self._online = True
        props = None
        if self._cfg.protocol == "5":
            props = Properties(PacketTypes.PUBLISH)
            props.UserProperty = ("boot_id", self._boot_id)
        self._control(self.topics.status, "online", True, props)
        info = {"state": "online", "boot_id": self._boot_id, "version": self._version, "node_id": self._node_id,
                "started_at": self._started_at, "connected_at": time.time()}
        self._control(self.topics.info, json.dumps(info, separators=(",", ":")), True)

    def _on_disconnect(self, _c: Any, _u: Any, _flags: Any, reason_code: Any, _props: Any) -> None:
        if self._connected and not self._stopping.is_set():
            self._dropped = str(reason_code)

    def _on_publish(self, _c: Any, _u: Any, mid: int, reason_code: Any, _props: Any) -> None:
        failure = bool(getattr(reason_code, "is_failure", False))
        if mid in self._announce_mids:
            self._announce_mids.discard(mid)
            if not self._announce_mids and not self._online:
                self._go_online()
        if mid in self._control_mids:
            topic = self._control_mids.pop(mid)
            if failure:
                log.error("broker refused publish", topic=topic, reason=str(reason_code))
            else:
                with self._lock:
                    gone = self._removals.pop(topic, None)
                if gone is not None:
                    self.entities.removed(gone)
                    log.info("home assistant entity removed", component=gone.component, stream=gone.stream,
                             monitor=gone.monitor or None, config_topic=topic)
            if mid == self._offline_mid:
                self._offline_acked = True
            return
        sent = self._inflight.pop(mid, None)
        if sent is None:
            return
        row, topic = sent
        in_flight = self._row_topics.get(row, set())
        in_flight.discard(topic)
        if not in_flight:
            self._row_topics.pop(row, None)
        out = self._outbox.record_topic(
            row, topic, acked=not failure, required=self._row_required.get(row, (topic,)),
            max_refusals=self._cfg.max_refusals, error=str(reason_code) if failure else None,
        )
        if out.done:
            self._row_required.pop(row, None)
            if out.missing:
                return
            if out.given_up:
                self._metrics.alerts_dropped.labels("refused").inc()
            else:
                self._metrics.alerts_sent.labels(SINK).inc()
        if not failure:
            return
        self._metrics.alerts_failed.labels(SINK).inc()
        # the backoff is this alert's own: other alerts (other streams' topics) are not held back
        backoff = min(self._cfg.backoff_initial_s * 2 ** max(out.refusals - 1, 0), self._cfg.backoff_max_s)
        delay = backoff * random.uniform(0.8, 1.2)
        if not out.done:
            self._retry_at[row] = time.monotonic() + delay
        self.last_error = f"broker refused alert publish: {reason_code}"
        if out.gave_up:
            log.error("broker refused alert publish; giving up on this topic", topic=topic,
                      reason=str(reason_code), outbox_row=row, refusals=out.refusals)
        else:
            log.error("broker refused alert publish", topic=topic, reason=str(reason_code), outbox_row=row,
                      refusals=out.refusals, retry_in_s=round(delay, 2))

    def _on_subscribe(self, _c: Any, _u: Any, _mid: int, reason_codes: Any, _props: Any) -> None:
        for rc in reason_codes:
            if getattr(rc, "is_failure", False):
                log.warning("broker refused subscription", topic=f"{self._ha.discovery_prefix}/status",
                            reason=str(rc))

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == f"{self._ha.discovery_prefix}/status" and msg.payload.strip().lower() == b"online":
            log.info("home assistant is online: republishing discovery, states, then online")
            self._announce()

    # --- work while connected ---
    def _publish_discovery(self) -> list[int]:
        with self._lock:
            if not self._discovery_dirty:
                return []
            self._discovery_dirty = False
            streams = {s: sorted(m) for s, m in self._streams.items()}
            scored = {s: sorted(m) for s, m in self._scored.items()}
        mids = []
        for entity, topic, payload in discovery_entities(
            discovery_prefix=self._ha.discovery_prefix, node_id=self._node_id, topics=self.topics,
            streams=streams, version=self._version, ids=self.entities, scored=scored,
        ):
            mid = self._control(topic, json.dumps(payload, separators=(",", ":"), sort_keys=True), self._ha.retain)
            if mid is not None:
                mids.append(mid)
                self.entities.announced(entity, topic)
        return mids

    def _publish_removals(self) -> list[int]:
        """Empty retained configs for the entities to remove (their state/answer too)."""
        with self._lock:
            removals = list(self._removals.items())
        mids = []
        for topic, e in removals:
            mid = self._control(topic, "", True)
            if mid is not None:
                mids.append(mid)
            for t in removal_topics(self.topics, e):
                self._publish(t, "", 1, True)
        return mids

    def _service(self, now: float) -> None:
        if not self._online:
            return  # announcing: nothing goes out before `online`
        if self._ha.enabled:
            self._publish_discovery()
        with self._lock:
            live = list(self._live)
            self._live.clear()
            levels = {}
            for s in list(self._levels):
                if now - self._level_sent_at.get(s, -1e9) >= self._cfg.level_min_interval_s:
                    levels[s] = self._levels.pop(s)
        for topic, payload, qos, retain in live:
            self._publish(topic, payload, qos, retain)
        for s, v in levels.items():
            self._level_sent_at[s] = now
            self._publish(self.topics.level(s), f"{v:.1f}", 0, False)
        if self._offline_mid is not None:
            return
        due = [r for r, t in self._retry_at.items() if t <= now and r not in self._row_topics]
        if due:  # a refused topic's backoff is over: retry it (only that one) from the head
            for r in due:
                del self._retry_at[r]
            self._cursor = 0
        room = self._cfg.max_inflight - len(self._row_topics)
        if room <= 0:
            return
        for row in self._outbox.pending(SINK, after_row=self._cursor, limit=room):
            self._cursor = row.row_id
            if row.row_id in self._row_topics or row.row_id in self._retry_at:
                continue  # still in flight on this connection, or a refused topic backing off
            try:
                alert = json.loads(row.payload)
                stream, boot = alert["stream"], alert.get("boot_id")
            except (ValueError, KeyError, TypeError):
                self._outbox.drop(row.row_id, "corrupt")
                continue
            # the HA event entity's topic first: if the connection dies between the two
            # PUBACKs, the copy that cannot be de-duplicated is the one more likely recorded
            required = (self.topics.stream_event(stream), self.topics.events)
            done = row.done_topics()
            todo = [t for t in required if t not in done]
            if not todo:  # finished before a crash could delete the row
                self._outbox.mark_sent(row.row_id)
                continue
            payload = row.payload
            if boot != self._boot_id or row.row_id in self._attempted or row.delivery:
                payload = as_replayed(payload)
            self._attempted.add(row.row_id)
            self._row_required[row.row_id] = required
            for topic in todo:
                mid = self._publish(topic, payload, 1, False)
                if mid is None:
                    return
                self._inflight[mid] = (row.row_id, topic)
                self._row_topics.setdefault(row.row_id, set()).add(topic)

    def _finish(self, now: float) -> bool:
        """One step of the stop sequence; True when the thread may exit."""
        deadline = self._flush_deadline
        if not self._connected:
            if self._client is not None and now < deadline:
                return False  # waiting for CONNACK; the flush may still succeed
            if self._client is not None:
                _close_client(self._client)
                self._client = None
            self.flushed_on_stop = False
            return True
        reserve = min(1.0, max(deadline - now, 0) * 0.25)
        if self._offline_mid is None:
            with self._lock:
                live_pending = bool(self._live)
            idle = not live_pending and not self._row_topics and self._outbox.count(SINK) == 0
            if idle or now >= deadline - reserve:
                self.flushed_on_stop = idle
                self._offline_mid = self._control(self.topics.status, "offline", True)
                if self._offline_mid is None:
                    self.flushed_on_stop = False
                    return True
            return False
        if self._offline_acked or now >= deadline:
            if not self._offline_acked:
                self.flushed_on_stop = False
            assert self._client is not None
            self._client.disconnect()
            end = time.monotonic() + 0.5
            while self._client._sock is not None and time.monotonic() < end:  # let DISCONNECT go out
                if self._client.loop(timeout=0.05) != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    break
            _close_client(self._client)
            self._client = None
            self._connected = False
            log.info("mqtt disconnected", offline_published=self._offline_acked)
            return True
        return False
