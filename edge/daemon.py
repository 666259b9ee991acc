"""The supervisor: builds the parts of the running service and owns their threads.

    sources (one thread each, MQTT on paho's thread) --emit--> per-stream Ring
    InferenceWorker thread (edge.worker): collect -> gate + batched encode -> memory ->
        monitors -> queries -> results
    results -> result sinks (edge.sinks: log, the alert pipeline, caller-supplied)
    http (/metrics, /healthz), systemd notify + watchdog

`Daemon.start` builds the parts in order (sinks, worker, sources, HTTP, watchdog, threads);
`Daemon.run` returns when every finite source (a file without ``loop``) has been played and
the worker has drained, or when `stop` is called / SIGTERM arrives. A source that raises is
restarted with backoff (`edge.sources.SourceRunner`); a worker step that raises is logged
and the worker carries on.
"""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from streams.base import Frame, Source
from streams.timeline import Piece

from .config import Settings
from .http import HttpEndpoint
from .metrics import Metrics
from .sdnotify import Notifier, ProgressGate, Watchdog
from .sinks import FanoutSink, LogSink, ResultSink
from .sources import SourceRunner, build_sources
from .worker import InferenceWorker, StreamState
from .worker.encode import ClipEncoder
from .worker.execute import MemoryHook, QueryModel

if TYPE_CHECKING:
    from alerts.pipeline import AlertPipeline

log = structlog.get_logger("edge.daemon")

WEIGHTS_HINT = (
    "no AF2 weights given: only the model-free level/novelty gate runs. To run the AF2 "
    "monitors too, fetch a checkpoint with `flamingo-edge model fetch 0.5B --dir models/af2-0.5b` "
    "(needs the `hub` extra; see docs/MODELS.md) and pass `--model models/af2-0.5b` "
    "(or set model.dir / FLAMINGO_EDGE_MODEL__DIR)"
)


class Daemon:
    def __init__(
        self,
        settings: Settings,
        *,
        model: QueryModel | None = None,
        sources: list[Source] | None = None,
        sinks: list[ResultSink] | None = None,
        metrics: Metrics | None = None,
        lossless: bool = False,
        alerts: bool = True,
        http: bool | None = None,
        log_results: bool = True,
        speed: float | None = None,
        loop: bool | None = None,
        on_memory: MemoryHook | None = None,
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
        self._on_memory = on_memory
        self._backoff = source_backoff
        self.streams = {s.id: StreamState(s, settings) for s in settings.streams}
        # the parts, built by start()
        self.sink: FanoutSink | None = None
        self.alerts_pipeline: AlertPipeline | None = None
        self.worker: InferenceWorker | None = None
        self.sources: list[Source] = []
        self.http_endpoint: HttpEndpoint | None = None
        self._notifier: Notifier | None = None
        self._progress: ProgressGate | None = None
        self._watchdog: Watchdog | None = None
        self._worker_thread: threading.Thread | None = None
        self._runners: list[SourceRunner] = []
        self._finished: set[int] = set()  # id() of the sources whose thread ended
        self._lock = threading.Lock()
        self.started_at: float | None = None

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

    def _source_done(self, src: Source) -> None:
        with self._lock:
            self._finished.add(id(src))
            if src.finite:
                for sid in src.streams:
                    self.streams[sid].ended = True
        if self.worker is not None:
            self.worker.notify()

    # ------------------------------------------------------------ lifecycle
    def start(self) -> Daemon:
        self.started_at = time.monotonic()
        self._log_mode()
        self.sink = self._build_sinks()
        self.worker = InferenceWorker(self.streams, self.settings, model=self.model,
                                      sink=self.sink, metrics=self.metrics,
                                      lossless=self.lossless, on_memory=self._on_memory,
                                      encoder=self._encoder_backend())
        self.sources = self._build_sources()
        self.http_endpoint = self._start_http()
        self._start_watchdog()
        self._start_threads()
        if self._notifier is not None:
            self._notifier.ready(f"{len(self.streams)} stream(s), "
                                 f"{len(self.settings.monitors)} monitor(s)")
        return self

    def _log_mode(self) -> None:
        if self.model is None and any(m.kind == "af2" for m in self.settings.monitors):
            log.warning(WEIGHTS_HINT)
        elif self.model is None:
            log.info("model-free mode: level and novelty gate only")

    def _build_sinks(self) -> FanoutSink:
        """The log, the alert pipeline (started here) and the caller's sinks, in that order."""
        sinks: list[ResultSink] = []
        if self._log_results:
            sinks.append(LogSink())
        if self._want_alerts:
            from alerts.pipeline import AlertPipeline

            st = self.settings
            # the configured monitors are announced (OFF) before the first connection, and
            # entities of monitors no longer configured are removed from Home Assistant
            configured = {sid: [m.name for m in st.monitors_for(sid)] for sid in self.streams}
            self.alerts_pipeline = AlertPipeline(st.alerts, self.metrics, self.boot_id,
                                                 self.data_dir).start(configured=configured)
            sinks.append(self.alerts_pipeline)
        sinks.extend(self._extra_sinks)
        return FanoutSink(sinks)

    def _build_sources(self) -> list[Source]:
        if self._sources_arg is not None:
            sources = list(self._sources_arg)
        else:
            sources = build_sources(self.settings, self.metrics, self.data_dir, self._speed,
                                    self._loop)
        fed = {sid for src in sources for sid in src.streams}
        for sid, s in self.streams.items():
            if sid not in fed:
                log.warning("stream has no source", stream=sid)
                s.ended = True
        return sources

    def _start_http(self) -> HttpEndpoint | None:
        if not self._want_http:
            return None
        from .http import start_http_server

        h = self.settings.http
        try:
            return start_http_server(h.port, self.metrics, self.health, host=h.host)
        except OSError as e:
            log.error("http endpoint not started", error=str(e))
            return None

    def _start_watchdog(self) -> None:
        self._notifier = Notifier()
        # WATCHDOG=1 only while audio arrives (any stream, within 2 min) and the inference
        # loop turns; a stuck model call or a dead source lets systemd restart us
        self._progress = ProgressGate(["worker", "audio"], max_age_s=120.0)
        self._watchdog = Watchdog(self._notifier, self._progress).start()

    def _start_threads(self) -> None:
        assert self.worker is not None
        progress = self._progress
        on_turn = (lambda: progress.beat("worker")) if progress is not None else None
        self._worker_thread = threading.Thread(
            target=self.worker.run, args=(self.stop_event,), kwargs={"on_turn": on_turn},
            name="inference", daemon=True)
        self._worker_thread.start()
        for i, src in enumerate(self.sources):
            r = SourceRunner(src, self.emit, self.stop_event, self._source_done,
                             backoff=self._backoff, name=f"source-{i}")
            self._runners.append(r.start())

    def _encoder_backend(self) -> ClipEncoder | None:
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

    def finished(self) -> bool:
        """Every source is finite and done, and everything they produced is processed."""
        if self.worker is None:
            return False
        with self._lock:
            all_done = (len(self._finished) == len(self.sources)
                        and all(s.finite for s in self.sources))
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
        threads = [self._worker_thread] if self._worker_thread is not None else []
        threads += [r.thread for r in self._runners]
        for t in threads:
            t.join(max(0.0, t_end - time.monotonic()))
        if self._watchdog is not None:
            self._watchdog.stop()
        if self.alerts_pipeline is not None:
            self.alerts_pipeline.stop(timeout=timeout / 2)
        if self.http_endpoint is not None:
            self.http_endpoint.stop()

    def health(self) -> dict[str, Any]:
        alive = self._worker_thread is not None and self._worker_thread.is_alive()
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
