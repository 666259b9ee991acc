"""MQTT audio source (paho-mqtt 2.x, callback API v2).

Audio arrives on ``<prefix>/audio/<stream_id>``, one `streams.protocol` frame per message.
Per stream the source keeps the sequence number and a `streams.timeline.Timeline`:

- the source subscribes to ``<prefix>/audio/+``: a frame for a stream id that is not
  configured is counted (``fe_frames_dropped{stream="_unknown", reason="unknown_stream"}``);
- a frame that fails validation is dropped and counted by reason (``fe_frames_dropped``);
  every such rejection is also logged (``audio frame rejected``, warning, naming the stream or
  topic and the reason), at most once per ``REJECT_LOG_INTERVAL_S`` per (topic, reason) with
  the number of rejections since the last line;
- the next sequence number is accepted; a jump forward of ``n+1`` means ``n`` frames were lost:
  the timeline turns a short loss into silence on the sample clock (``fe_gap_samples``) and a
  loss longer than ``max_gap_s`` into a new timeline piece with a fresh clip grid;
- the same sequence number again is a ``duplicate``, an older one (within ``late_window``) is
  ``late``; both are dropped;
- a jump backwards beyond ``late_window``, or any jump backwards whose capture time is later
  than the last accepted frame's, means the publisher restarted: the sequence is
  re-synchronised and the timeline is told of the break, so the time the publisher was away
  (by its capture times) becomes silence or, if longer than ``max_gap_s``, a new piece;
- the publisher's capture times place every frame in UTC: they correct slow drift, and a
  capture time that jumps on contiguous audio is a clock step (a new piece, same clip grid);
  capture times further than ``max_skew_s`` from this machine's clock are not trusted.

Nothing in a message can raise out of `handle`: the paho network thread must survive anything.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import structlog

from edge.mqtt_client import MqttConfig, new_client

from .base import SAMPLE_RATE, Converter, Emit, Frame, Source
from .protocol import MAX_FRAME_BYTES, AudioFrame, FrameError, decode_frame
from .timeline import Timeline

log = structlog.get_logger(__name__)

UNKNOWN_STREAM = "_unknown"
REJECT_LOG_INTERVAL_S = 60.0
#: dropped by sequence number, not invalid: a QoS 1 redelivery is a duplicate; counted, not logged
QUIET_REASONS = frozenset({"duplicate", "late"})


class RejectLog:
    """Logs rejected frames without flooding: the first of each (topic, reason) at once, then
    at most one line per ``interval_s`` carrying how many were rejected since the last line."""

    def __init__(self, interval_s: float = REJECT_LOG_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._last: dict[tuple[str, str], tuple[float, int]] = {}  # -> (logged at, since then)
        self._lock = threading.Lock()

    def __call__(self, stream: str | None, topic: str, reason: str, detail: str = "") -> None:
        now = self._clock()
        key = (topic, reason)
        with self._lock:
            at, n = self._last.get(key, (None, 0))
            n += 1
            if at is not None and now - at < self.interval_s:
                self._last[key] = (at, n)
                return
            self._last[key] = (now, 0)
            if len(self._last) > 4096:  # many distinct bad topics: keep the newest
                for k in list(self._last)[:1024]:
                    del self._last[k]
        kw = {"stream": stream, "topic": topic, "reason": reason, "count": n}
        if detail:
            kw["detail"] = detail
        if reason == "unknown_stream":
            kw["hint"] = "no stream with this id is configured (streams[].id, source: mqtt)"
        log.warning("audio frame rejected", **kw)


@dataclass
class _StreamClock:
    timeline: Timeline
    last_seq: int | None = None
    rate: int = 0
    conv: Converter | None = None
    last_ns: int | None = None  # capture time of the last accepted frame (publisher's clock)
    lost: int = 0  # 16 kHz samples lost since the last placed frame
    brk: str | None = None  # a break not yet placed (the resampler held the frame back)


class MqttAudioSource(Source):
    def __init__(
        self,
        streams: list[str] | tuple[str, ...],
        mqtt: MqttConfig,  # the broker (the `alerts.mqtt` settings): credentials, tls, topic_prefix
        metrics=None,
        max_bytes: int = MAX_FRAME_BYTES,
        late_window: int = 1024,
        max_gap_s: float = 60.0,
        max_skew_s: float | None = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.streams = tuple(streams)
        self.cfg = mqtt
        self.metrics = metrics
        self.max_bytes = max_bytes
        self.late_window = late_window
        self.max_gap_s = float(max_gap_s)
        self.prefix = mqtt.topic_prefix.strip("/")
        self._clocks = {s: _StreamClock(Timeline(SAMPLE_RATE, max_gap_s=max_gap_s,
                                                 max_skew_s=max_skew_s, clock=clock))
                        for s in self.streams}
        self._emit: Emit | None = None
        self.rejects: dict[str, int] = {}
        self.accepted = 0
        self.gaps = 0
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.log_reject = RejectLog()
        self._stopping = False
        self._refused: str | None = None  # the last CONNACK refusal, until a connect succeeds
        self._failed: str | None = None  # the last connection failure logged (once per change)
        self.state = "connecting"  # connecting | connected | disconnected (edge/health.py)
        self._client = None

    def topic(self, stream: str) -> str:
        return f"{self.prefix}/audio/{stream}"

    def status(self) -> dict[str, dict]:
        """Per stream, the broker connection its audio depends on (for /healthz)."""
        s = {"state": self.state, "broker": f"{self.cfg.host}:{self.cfg.port}"}
        return {sid: dict(s) for sid in self.streams}

    def timeline(self, stream: str) -> Timeline:
        return self._clocks[stream].timeline

    # ------------------------------------------------------------ message handling
    def _reject(self, stream: str, reason: str, topic: str | None = None, detail: str = "") -> None:
        self.rejects[reason] = self.rejects.get(reason, 0) + 1
        if self.metrics is not None:
            self.metrics.frames_dropped.labels(stream, reason).inc()
        if reason in QUIET_REASONS:  # sequence bookkeeping (QoS 1 redelivery): counted only
            return
        known = stream if stream != UNKNOWN_STREAM else None
        self.log_reject(known, topic or (self.topic(stream) if known else "?"), reason, detail)

    def handle(self, topic: str, payload: bytes) -> None:
        """Validate, sequence and emit one message. Never raises."""
        try:
            self._handle(topic, payload)
        except Exception:  # pragma: no cover - defensive: a bug must not kill paho's thread
            log.exception("audio message could not be handled", topic=topic)
            self._reject(UNKNOWN_STREAM, "internal", topic)

    def _handle(self, topic: str, payload: bytes) -> None:
        head, _, stream = topic.rpartition("/")
        if head != f"{self.prefix}/audio" or stream not in self._clocks:
            self._reject(UNKNOWN_STREAM, "unknown_stream", topic)
            return
        try:
            f = decode_frame(payload, max_bytes=self.max_bytes)
        except FrameError as e:
            self._reject(stream, e.reason, topic, str(e))
            return
        c = self._clocks[stream]
        if c.conv is None or f.sample_rate != c.rate:
            c.rate = f.sample_rate
            c.conv = Converter(f.sample_rate, SAMPLE_RATE)
        reason = self._sequence(stream, c, f)
        if reason is not None:
            self._reject(stream, reason)
            return
        self.accepted += 1
        y = c.conv(f.pcm)
        if y.size == 0:  # the resampler keeps very short frames in its pipeline
            return
        if not np.isfinite(y).all():  # cannot happen after validation; belt and braces
            self._reject(stream, "non_finite")
            return
        self._place(stream, c, f, y)

    def _sequence(self, stream: str, c: _StreamClock, f: AudioFrame) -> str | None:
        """Check ``f``'s sequence number against the stream's: None to accept it (noting lost
        frames or a restart on ``c``), else the reason to drop it."""
        if c.last_seq is not None:
            d = (f.seq - c.last_seq) & 0xFFFFFFFF
            if d >= 1 << 31:
                d -= 1 << 32
            if d == 0:
                return "duplicate"
            if d < 0:
                # a late frame was captured before the last accepted one; a restarted
                # publisher (sequence from 0 again) captures after it
                later = c.last_ns is not None and f.capture_time_ns > c.last_ns
                if -d <= self.late_window and not later:
                    return "late"
                log.info("publisher restarted: sequence re-synchronised", stream=stream,
                         last_seq=c.last_seq, seq=f.seq)
                c.brk = "restart"
                c.lost = 0
            elif d > 1:
                self.gaps += 1
                assert c.conv is not None
                c.lost += (d - 1) * c.conv.out_length(f.frames)
        c.last_seq = f.seq
        c.last_ns = f.capture_time_ns
        return None

    def _place(self, stream: str, c: _StreamClock, f: AudioFrame, y: np.ndarray) -> None:
        tl = c.timeline
        pieces, untrusted = tl.pieces, tl.untrusted
        pl = tl.place(y.shape[0], f.capture_time, lost=c.lost, brk=c.brk)
        c.lost, c.brk = 0, None
        if pl.piece is not None and tl.pieces > 1:
            log.info("new timeline piece", stream=stream, cause=pl.piece.cause,
                     gap_s=round(pl.piece.gap_s, 3), sample=pl.index)
        if self.metrics is not None:
            if tl.pieces > pieces and pl.piece is not None:
                self.metrics.timeline_pieces.labels(stream, pl.piece.cause).inc()
            if tl.untrusted > untrusted:
                self.metrics.clock_untrusted.labels(stream).inc()
        if self._emit is not None:
            self._emit(Frame(stream, pl.index, pl.utc, f.seq, y, pl.piece))

    # ------------------------------------------------------------ paho plumbing
    def _make_client(self):
        cfg = self.cfg
        client = new_client(cfg, f"{cfg.client_id or 'flamingo-edge'}-audio-{uuid.uuid4().hex[:8]}")
        client.reconnect_delay_set(int(max(1, cfg.backoff_initial_s)), int(max(1, cfg.backoff_max_s)))
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        return client

    def _on_connect(self, client, userdata, flags, reason_code, properties=None):
        if getattr(reason_code, "is_failure", False):
            # a refusal is an operator's problem (credentials, ACL); logged once per change
            reason = str(reason_code)
            if reason != self._refused:
                log.error("audio MQTT connection refused by the broker; retrying with backoff",
                          host=self.cfg.host, port=self.cfg.port, reason=reason,
                          user=self.cfg.username, settings="mqtt.username/password (or "
                          "alerts.mqtt.* when mqtt is unset)")
            self._refused = reason
            return
        self._refused = self._failed = None
        self.connected.set()
        self.state = "connected"
        # every stream id, so frames for a stream not configured are counted, not invisible
        client.subscribe([(f"{self.prefix}/audio/+", 0)])
        log.info("audio MQTT connected", host=self.cfg.host, port=self.cfg.port,
                 streams=len(self.streams))

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties=None):
        if any(getattr(rc, "is_failure", False) for rc in reason_codes):
            log.error("audio MQTT subscription refused by the broker", topic=f"{self.prefix}/audio/+",
                      reason=", ".join(str(rc) for rc in reason_codes))
        else:
            self.subscribed.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties=None):
        was = self.connected.is_set()
        self.connected.clear()
        self.subscribed.clear()
        self.state = "disconnected"
        if self._stopping:
            log.info("audio MQTT closed", host=self.cfg.host, port=self.cfg.port)
        elif was:  # a refused CONNACK was logged as such; its socket closing is no news
            log.warning("audio MQTT connection lost; reconnecting with backoff",
                        host=self.cfg.host, port=self.cfg.port, reason=str(reason_code))
        elif self._refused is None:  # closed before CONNACK: say why if TLS can tell
            self._connection_failed(f"connection closed before CONNACK: {reason_code}")

    def _on_connect_fail(self, client, userdata):
        self.state = "disconnected"
        self._connection_failed(self._why_unreachable())

    def _why_unreachable(self) -> str:
        """paho does not pass on why its connect failed: one TCP connect says (as the alert
        sink words it); only after a failure, in paho's thread, which is retrying anyway."""
        import socket

        try:
            with socket.create_connection((self.cfg.host, self.cfg.port),
                                          timeout=self.cfg.connect_timeout_s):
                return "cannot connect to the broker"
        except ConnectionRefusedError:
            return "TCP connection refused (is the broker running?)"
        except socket.gaierror as e:
            return f"cannot resolve the broker's host name: {e}"
        except OSError as e:  # incl. a timeout
            return f"cannot reach the broker: {e or type(e).__name__}"

    def _connection_failed(self, what: str) -> None:
        """One error line per distinct cause (paho retries with backoff meanwhile)."""
        error, hint = what, None
        if self.cfg.tls.enabled:
            from edge.mqtt_tls import CLIENT_CERT_REQUIRED, client_cert_hint, diagnose_tls_close

            why = diagnose_tls_close(self.cfg.host, self.cfg.port, self.cfg.tls)
            if why == CLIENT_CERT_REQUIRED:
                error, hint = "client certificate required", client_cert_hint("mqtt (or alerts.mqtt)")
            elif why:
                error = why
        if error == self._failed:
            return
        self._failed = error
        kw = {"hint": hint} if hint else {}
        log.error("audio MQTT connection failed", retry="with backoff", host=self.cfg.host,
                  port=self.cfg.port, error=error, **kw)

    def _on_message(self, client, userdata, msg):
        self.handle(msg.topic, msg.payload)

    def run(self, emit: Emit, stop: threading.Event) -> None:
        self._emit = emit
        client = self._client = self._make_client()
        client.connect_async(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive_s)
        client.loop_start()
        try:
            stop.wait()
        finally:
            self._stopping = True
            try:
                client.disconnect()
            finally:
                client.loop_stop()

    def describe(self) -> str:
        return f"mqtt {self.cfg.host}:{self.cfg.port} {self.prefix}/audio/{{{','.join(self.streams)}}}"
