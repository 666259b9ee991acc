"""The supervisor: owns every thread of the running service.

    sources (one thread each, MQTT on paho's thread) --emit--> per-stream Ring
    InferenceWorker thread: ready clips -> gate -> batched encode -> memory -> monitors -> queries
    results -> result sinks (log, the alert pipeline, caller-supplied)
    http (/metrics, /healthz), systemd notify + watchdog

`Daemon.run` returns when every finite source (a file without ``loop``) has been played and
the worker has drained, or when `stop` is called / SIGTERM arrives. A source that raises is
restarted with backoff; a worker step that raises is logged and the worker carries on.
"""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import numpy as np
import structlog

from streams.base import Frame, Source
from streams.timeline import Piece

from .config import Settings
from .metrics import Metrics
from .results import MonitorResult
from .scheduler import InferenceWorker, StreamState

log = structlog.get_logger("edge.daemon")

WEIGHTS_HINT = (
    "no AF2 weights given: only the model-free level/novelty gate runs. To run the AF2 "
    "monitors too, fetch a checkpoint with `flamingo-edge model fetch 0.5B --dir models/af2-0.5b` "
    "(needs the `hub` extra; see docs/MODELS.md) and pass `--model models/af2-0.5b` "
    "(or set model.dir / FLAMINGO_EDGE_MODEL__DIR)"
)


def mmss(seconds: float) -> str:
    """12.0 -> '0:12.0', 59.99999 -> '1:00.0'."""
    m, s = divmod(round(seconds, 1), 60)
    return f"{int(m)}:{s:04.1f}"


class LogSink:
    """Logs every result (one line each)."""

    def __init__(self, logger: Any = None) -> None:
        self.log = logger or structlog.get_logger("edge.results")

    def submit(self, r: MonitorResult, audio: np.ndarray | None, sample_rate: int) -> None:
        kw: dict[str, Any] = dict(stream=r.stream, monitor=r.monitor, verdict=r.verdict,
                                  start=r.start.isoformat(timespec="seconds"),
                                  end=r.end.isoformat(timespec="seconds"))
        off = r.extra.get("offset_s")  # position in the stream's audio (a file's offset)
        if off:
            kw["at"] = f"{mmss(off[0])}-{mmss(off[1])}"
        if r.answer:
            kw["answer"] = r.answer
        if r.level_dbfs is not None:
            kw["level_dbfs"] = round(r.level_dbfs, 1)
        if r.novelty is not None:
            kw["novelty"] = round(r.novelty, 2)
        if r.model_id != "level-gate":
            kw["latency_s"] = round(r.latency_s, 2)
        kw["reason"] = r.extra.get("reason")
        self.log.info("monitor result", **kw)

    def publish_level(self, stream: str, dbfs: float) -> None:
        pass


class CallbackSink:
    def __init__(self, fn: Callable[[MonitorResult, np.ndarray | None, int], None]) -> None:
        self.fn = fn

    def submit(self, r, audio, sample_rate) -> None:
        self.fn(r, audio, sample_rate)

    def publish_level(self, stream: str, dbfs: float) -> None:
        pass


class FanoutSink:
    def __init__(self, sinks: list[Any]) -> None:
        self.sinks = sinks

    def submit(self, r, audio, sample_rate) -> None:
        for s in self.sinks:
            try:
                s.submit(r, audio, sample_rate)
            except Exception:
                log.exception("result sink failed", sink=type(s).__name__)

    def publish_level(self, stream: str, dbfs: float) -> None:
        for s in self.sinks:
            try:
                s.publish_level(stream, dbfs)
            except Exception:
                log.exception("level sink failed", sink=type(s).__name__)


def build_sources(settings: Settings, metrics: Metrics, data_dir: Path,
                  speed: float | None = None, loop: bool | None = None,
                  mic_factory: Any = None) -> list[Source]:
    """One source per file/mic stream, one MQTT client for all MQTT streams."""
    from streams.file import FileSource

    out: list[Source] = []
    mqtt_streams = []
    for s in settings.streams:
        if s.source == "file":
            path = str(s.path)
            if path.startswith("builtin:"):
                from .demo import BUILTIN_DEMO, demo_recording

                if path != BUILTIN_DEMO:
                    raise ValueError(f"stream {s.id}: unknown built-in recording {path!r}")
                path = str(demo_recording(data_dir))
            out.append(FileSource(path, s.id, speed=s.speed if speed is None else speed,
                                  loop=s.loop if loop is None else loop, metrics=metrics))
        elif s.source == "mic":
            from streams.mic import MicSource

            out.append(MicSource(s.id, device=s.device, samplerate=s.samplerate,
                                 channels=s.channels, metrics=metrics, stream_factory=mic_factory))
        else:
            mqtt_streams.append(s.id)
    if mqtt_streams:
        from streams.mqtt import MqttAudioSource

        out.append(MqttAudioSource(mqtt_streams, settings.audio_mqtt, metrics=metrics))
    return out


class Daemon:
    def __init__(
        self,
        settings: Settings,
        *,
        model: Any = None,
        sources: list[Source] | None = None,
        sinks: list[Any] | None = None,
        metrics: Metrics | None = None,
        lossless: bool = False,
        alerts: bool = True,
        http: bool | None = None,
        log_results: bool = True,
        speed: float | None = None,
        loop: bool | None = None,
        on_memory: Any = None,
        boot_id: str | None = None,
        source_backoff: tuple[float, float] = (1.0, 60.0),
    ) -> None:
        self.settings = settings
        self.model = model
        self.metrics = metrics or Metrics()
        self.lossless = lossless
        self.boot_id = boot_id or uuid.uuid4().hex
        self.data_dir = settings.resolved_data_dir()
        self.stop_event = threading.Event()
        self._extra_sinks = list(sinks or [])
        self._want_alerts = alerts and settings.alerts.enabled
        self._want_http = settings.http.enabled if http is None else http
        self._log_results = log_results
        self._sources_arg = sources
        self._speed, self._loop = speed, loop
        self.streams = {s.id: StreamState(s, settings) for s in settings.streams}
        self.alerts_pipeline: Any = None
        self.http_endpoint: Any = None
        self.sources: list[Source] = []
        self._threads: list[threading.Thread] = []
        self._finished: set[int] = set()
        self._lock = threading.Lock()
        self.worker: InferenceWorker | None = None
        self._on_memory = on_memory
        self._notifier: Any = None
        self._watchdog: Any = None
        self._progress: Any = None
        self.started_at: float | None = None
        self._backoff = source_backoff

    # ------------------------------------------------------------ ingest
    def emit(self, frame: Frame) -> None:
        """Called by sources (their threads). O(frame) and non-blocking unless lossless."""
        s = self.streams.get(frame.stream)
        if s is None:
            self.metrics.frames_dropped.labels("_unknown", "unknown_stream").inc()
            return
        if frame.piece is not None:
            s.timeline.add(frame.piece)
        elif not len(s.timeline):  # a source that predates timelines: one piece from its first frame
            s.timeline.add(Piece(frame.sample_index, frame.capture_time))
        r = s.ring.append(frame.sample_index, frame.samples)
        m = self.metrics
        m.frames_in.labels(s.id).inc()
        m.samples_in.labels(s.id).inc(r.written)
        if r.gap:
            m.gap_samples.labels(s.id).inc(r.gap)
        if r.dropped:
            m.frames_dropped.labels(s.id, "overlap").inc()
        if self._progress is not None:
            self._progress.beat("audio")
        assert self.worker is not None
        self.worker.notify()
        if self.lossless:
            self.worker.wait_for_capacity(s.id, self.stop_event)

    def _source_main(self, i: int, src: Source) -> None:
        backoff, backoff_max = self._backoff
        while not self.stop_event.is_set():
            try:
                src.run(self.emit, self.stop_event)
                if src.finite:
                    break
                if not self.stop_event.is_set():
                    log.warning("source returned; restarting", source=src.describe())
            except Exception as e:
                log.error("source failed; restarting", source=src.describe(), error=str(e),
                          retry_s=backoff, exc_info=not isinstance(e, (OSError, RuntimeError)))
                if src.finite:
                    # a file that cannot be read will not become readable: give up on it
                    break
            self.stop_event.wait(backoff)
            backoff = min(backoff * 2, backoff_max)
        with self._lock:
            self._finished.add(i)
            if src.finite:
                for sid in src.streams:
                    self.streams[sid].ended = True
        if self.worker is not None:
            self.worker.notify()

    # ------------------------------------------------------------ lifecycle
    def start(self) -> "Daemon":
        st = self.settings
        self.started_at = time.monotonic()
        if self.model is None and any(m.kind == "af2" for m in st.monitors):
            log.warning(WEIGHTS_HINT)
        elif self.model is None:
            log.info("model-free mode: level and novelty gate only")
        sinks: list[Any] = []
        if self._log_results:
            sinks.append(LogSink())
        if self._want_alerts:
            try:
                from alerts.pipeline import AlertPipeline
            except ImportError as e:  # pragma: no cover - alerts is part of the package
                log.warning("alert pipeline unavailable", error=str(e))
            else:
                # the configured monitors are announced (OFF) before the first connection, and
                # entities of monitors no longer configured are removed from Home Assistant
                configured = {sid: [m.name for m in st.monitors_for(sid)] for sid in self.streams}
                self.alerts_pipeline = AlertPipeline(st.alerts, self.metrics, self.boot_id,
                                                     self.data_dir).start(configured=configured)
                sinks.append(self.alerts_pipeline)
        sinks.extend(self._extra_sinks)
        self.sink = FanoutSink(sinks)
        self.worker = InferenceWorker(self.streams, st, model=self.model, sink=self.sink,
                                      metrics=self.metrics, lossless=self.lossless,
                                      on_memory=self._on_memory, encoder=self._encoder_backend())
        if self._sources_arg is not None:
            self.sources = list(self._sources_arg)
        else:
            self.sources = build_sources(st, self.metrics, self.data_dir, self._speed, self._loop)
        fed = {sid for src in self.sources for sid in src.streams}
        for sid, s in self.streams.items():
            if sid not in fed:
                log.warning("stream has no source", stream=sid)
                s.ended = True
        if self._want_http:
            try:
                from .http import start_http_server

                self.http_endpoint = start_http_server(st.http.port, self.metrics, self.health,
                                                       host=st.http.host)
            except OSError as e:
                log.error("http endpoint not started", error=str(e))
        try:
            from .sdnotify import Notifier, ProgressGate, Watchdog

            self._notifier = Notifier()
            # WATCHDOG=1 only while audio arrives (any stream, within 2 min) and the inference
            # loop turns; a stuck model call or a dead source lets systemd restart us
            self._progress = ProgressGate(["worker", "audio"], max_age_s=120.0)
            self._watchdog = Watchdog(self._notifier, self._progress).start()
        except ImportError:  # pragma: no cover
            pass
        wt = threading.Thread(target=self._worker_main, name="inference", daemon=True)
        self._threads.append(wt)
        wt.start()
        for i, src in enumerate(self.sources):
            t = threading.Thread(target=self._source_main, args=(i, src), name=f"source-{i}",
                                 daemon=True)
            self._threads.append(t)
            t.start()
            log.info("source started", source=src.describe(), streams=list(src.streams))
        if self._notifier is not None:
            self._notifier.ready(f"{len(self.streams)} stream(s), {len(st.monitors)} monitor(s)")
        return self

    def _encoder_backend(self) -> Any:
        """The configured encoder backend for the model, or None (model-free / plain torch)."""
        ec = self.settings.model.encoder
        if self.model is None or not hasattr(self.model, "modules"):
            return None
        from .encoder_backends import make_backend

        dtype = ec.dtype or getattr(self.model, "encoder_dtype", None)  # None: the model's
        backend = make_backend(ec.backend, self.model, device=ec.device, dtype=dtype,
                               max_batch=ec.max_batch,
                               cache_dir=ec.cache_dir or Path(self.data_dir) / "engines",
                               log_fn=lambda msg: log.info(msg))
        log.info("encoder backend", backend=backend.describe(), fallback=backend.fallback_reason)
        return backend

    def _worker_main(self) -> None:
        assert self.worker is not None
        w = self.worker
        while not self.stop_event.is_set():
            try:
                worked = w.step()
            except Exception:
                w.errors += 1
                log.exception("inference step failed")
                worked = False
            if self._progress is not None:
                self._progress.beat("worker")
            if not worked:
                with w._cv:
                    w._cv.wait(0.05)

    def finished(self) -> bool:
        """Every source is finite and done, and everything they produced is processed."""
        if self.worker is None:
            return False
        with self._lock:
            all_done = len(self._finished) == len(self.sources) and all(s.finite for s in self.sources)
        return all_done and self.worker.drained()

    def run(self, timeout: float | None = None) -> bool:
        """Block until finished (True) or stopped / timed out (False)."""
        if self.worker is None:
            self.start()
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.stop_event.is_set():
            if self.finished():
                return True
            if deadline is not None and time.monotonic() > deadline:
                return False
            self.stop_event.wait(0.1)
        return False

    def stop(self, timeout: float = 10.0) -> None:
        if self._notifier is not None:
            self._notifier.stopping()
        self.stop_event.set()
        if self.worker is not None:
            self.worker.notify()
        t_end = time.monotonic() + timeout / 2
        for t in self._threads:
            t.join(max(0.0, t_end - time.monotonic()))
        if self._watchdog is not None:
            self._watchdog.stop()
        if self.alerts_pipeline is not None:
            self.alerts_pipeline.stop(timeout=timeout / 2)
        if self.http_endpoint is not None:
            self.http_endpoint.stop()

    def health(self) -> dict[str, Any]:
        alive = all(t.is_alive() for t in self._threads[:1])
        h: dict[str, Any] = {
            "ok": alive and not self.stop_event.is_set(),
            "worker_alive": alive,
            "model": getattr(self.model, "model_id", None),
            "streams": {
                sid: {
                    "samples": s.ring.write_pos - (s.ring.origin or 0),
                    "clips_pending": len(s.pending),
                    "memory_clips": len(s.memory),
                    "level_dbfs": s.last_reading.level_dbfs if s.last_reading else None,
                    "novelty": s.last_reading.novelty if s.last_reading else None,
                }
                for sid, s in self.streams.items()
            },
        }
        if self.alerts_pipeline is not None:
            a = self.alerts_pipeline.health()
            h["alerts"] = a
            h["ok"] = h["ok"] and bool(a.get("ok", True))
        return h


def load_model(model_dir: str | Path | None, dtype: str = "auto", device: str = "cpu",
               quantize: str = "none") -> Any:
    if model_dir is None:
        return None
    import torch

    from .model import AF2
    from .model.precision import resolve

    t0 = time.monotonic()
    choice = resolve(dtype, device)
    m = AF2.load(model_dir, dtype=getattr(torch, choice.dtype), device=device, quantize=quantize)
    m.encoder_dtype = choice.encoder  # the encoder backend's default (daemon._encoder_backend)
    log.info("model loaded", model=getattr(m, "model_id", "af2"), dir=str(model_dir),
             dtype=choice.dtype, encoder_dtype=choice.encoder, quantize=quantize,
             reason=choice.reason, seconds=round(time.monotonic() - t0, 1))
    return m

