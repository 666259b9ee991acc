"""The supervisor: builds the parts of the running service and owns their threads.

    sources (one thread each, MQTT on paho's thread) --emit--> per-stream Ring
    InferenceWorker thread (edge.worker): collect -> gate + batched encode -> memory ->
        monitors -> queries -> results
    results -> result sinks (edge.sinks: log, the alert pipeline, caller-supplied)
    http (the web page, /api/, /metrics, /healthz: edge.http, edge.web), systemd notify + watchdog

`Daemon.start` builds the parts in order (sinks, worker, sources, HTTP, watchdog, threads,
health watcher, the allocator trimmer: `edge.allocator`, glibc's ``malloc_trim`` every
``allocator.trim_every`` so the memory PyTorch frees goes back to the system);
`Daemon.run` returns when every finite source (a file without ``loop``) has been played and
the worker has drained, or when `stop` is called / SIGTERM arrives. A source that raises is
restarted with backoff (`edge.sources.SourceRunner`); a worker step that raises is logged
and the worker carries on.

`Daemon.stop` goes in data-path order: stop the sources -> let the worker finish queued work
until ``worker.drain_share`` of the timeout -> stop and join it, counting and logging what
was abandoned -> flush the alert pipeline -> stop HTTP, the watchdog and the trimmer.

Health: the systemd watchdog is fed while the worker turns (every step, every model call, and
inside a model call every decoded token, scored question, encoded clip and audio-transformer
layer);
a stream without audio for its ``silent_after`` is *silent* or *reconnecting*
(`edge.health`: ``/healthz``, ``fe_stream_*``, the stream's MQTT availability), a state to
report, never a reason for a restart.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from streams.base import Frame, Source
from streams.timeline import Piece

from .allocator import Trimmer
from .config import Settings
from .health import HealthWatcher, StreamHealth, health_report, stream_health
from .http import HttpEndpoint
from .metrics import Metrics
from .sdnotify import Notifier, ProgressGate, Watchdog
from .sinks import FanoutSink, LogSink, ResultSink
from .sources import SourceRunner, build_sources
from .worker import InferenceWorker, StreamState
from .worker.encode import ClipEncoder
from .worker.execute import MemoryHook
from .worker.loop import WorkerModel

if TYPE_CHECKING:
    from alerts.pipeline import AlertPipeline

    from .model import AF2
    from .web.live import LiveResults

log = structlog.get_logger(__name__)

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
        model: WorkerModel | None = None,
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
        watchdog_max_age: float = 120.0,
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
        self._watchdog_max_age = watchdog_max_age  # no worker turn for this long: stuck
        self.streams = {s.id: StreamState(s, settings) for s in settings.streams}
        # the parts, built by start()
        self.sink: FanoutSink | None = None
        self.alerts_pipeline: AlertPipeline | None = None
        self.worker: InferenceWorker | None = None
        self.sources: list[Source] = []
        self.http_endpoint: HttpEndpoint | None = None
        self.live: LiveResults | None = None  # what the web page shows of the monitors
        if self._want_http:
            from .web.live import LiveResults

            self.live = LiveResults(settings.alerts)
        self._notifier: Notifier | None = None
        self._progress: ProgressGate | None = None
        self._watchdog: Watchdog | None = None
        self._health: HealthWatcher | None = None
        self._trimmer: Trimmer | None = None
        self._worker_thread: threading.Thread | None = None
        self._worker_stop = threading.Event()
        self._stopped = False
        self._last_audio: dict[str, float] = {}  # stream -> monotonic time of its last frame
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
        self._last_audio[s.id] = time.monotonic()
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
        self._export_silence()
        self.http_endpoint = self._start_http()
        self._start_watchdog()
        self._start_threads()
        self._health = HealthWatcher(self, on_change=self._stream_changed).start()
        self._start_trimmer()
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
            scored = {sid: [m.name for m in st.monitors_for(sid) if m.has_score] for sid in self.streams}
            self.alerts_pipeline = AlertPipeline(st.alerts, self.metrics, self.boot_id,
                                                 self.data_dir).start(configured=configured,
                                                                      scored=scored)
            sinks.append(self.alerts_pipeline)
        if self.live is not None:
            sinks.append(self.live)
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
            return start_http_server(h.port, self.metrics, self.health, host=h.host,
                                     daemon=self, config=h)
        except OSError as e:
            log.error("http endpoint not started", error=str(e))
            return None

    def _start_watchdog(self) -> None:
        self._notifier = Notifier()
        # WATCHDOG=1 only while the inference loop turns (each step, each token): a stuck
        # model call or a dead worker lets systemd restart us; silent inputs do not
        self._progress = ProgressGate(["worker"], max_age_s=self._watchdog_max_age)
        self._watchdog = Watchdog(self._notifier, self._progress).start()

    def _start_trimmer(self) -> None:
        """Give the memory PyTorch freed back to the system every ``allocator.trim_every``
        (glibc keeps much of it otherwise; edge.allocator)."""
        every = self.settings.allocator.trim_every
        if every > 0:
            self._trimmer = Trimmer(every, observe=self.metrics.malloc_trim.observe).start()

    def progress_ok(self) -> bool:
        """What the watchdog pings on: the worker thread alive and turning."""
        alive = self._worker_thread is not None and self._worker_thread.is_alive()
        return alive and self._progress is not None and self._progress()

    def last_frame_at(self, stream: str) -> float | None:
        """time.monotonic() of the stream's last frame (None: none yet)."""
        return self._last_audio.get(stream)

    def silent_after(self, stream: str) -> float:
        cfg = self.streams[stream].cfg
        own = getattr(cfg, "silent_after", None)
        return float(own if own is not None else self.settings.health.silent_after)

    def worker_alive(self) -> bool:
        return self._worker_thread is not None and self._worker_thread.is_alive()

    def silent(self, stream: str) -> bool:
        """No audio on a live stream for its ``silent_after`` (a finished file is not)."""
        if self.started_at is None:
            return False
        return stream_health(self)[stream].state == "silent"

    def _export_silence(self) -> None:
        from .health import STATES

        at = 0.0  # one computation serves every gauge of a scrape
        cached: dict[str, StreamHealth] = {}

        def one(sid: str) -> StreamHealth:
            nonlocal at, cached
            now = time.monotonic()
            if now - at > 0.2 or sid not in cached:
                at, cached = now, stream_health(self, now)
            return cached[sid]

        def silent(sid: str) -> Callable[[], float]:
            return lambda: 1.0 if self.started_at is not None and one(sid).state == "silent" else 0.0

        def age(sid: str) -> Callable[[], float]:
            def read() -> float:
                last = self._last_audio.get(sid)
                return float("nan") if last is None else time.monotonic() - last
            return read

        def state(sid: str, st: str) -> Callable[[], float]:
            return lambda: 1.0 if self.started_at is not None and one(sid).state == st else 0.0

        for sid in self.streams:
            self.metrics.stream_silent.labels(sid).set_function(silent(sid))
            self.metrics.stream_frame_age.labels(sid).set_function(age(sid))
            for st in STATES:
                self.metrics.stream_state.labels(sid, st).set_function(state(sid, st))

    def _stream_changed(self, h: StreamHealth) -> None:
        """A stream changed state: its MQTT availability and health attributes follow."""
        if self.alerts_pipeline is not None:
            self.alerts_pipeline.set_stream_health(h.stream, h.available, h.as_dict())

    def _start_threads(self) -> None:
        assert self.worker is not None
        progress = self._progress
        on_turn = (lambda: progress.beat("worker")) if progress is not None else None
        self._worker_thread = threading.Thread(
            target=self.worker.run, args=(self._worker_stop,), kwargs={"on_turn": on_turn},
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
                               cache_dir=self.settings.engine_cache_dir(),
                               log_fn=lambda msg: log.info(msg), quantize=ec.quantize)
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

    def stop(self, timeout: float = 10.0) -> dict[str, int]:
        """Shut down in data-path order within about ``timeout`` seconds; returns the work
        abandoned by the worker (each item also counted in the metrics and logged)."""
        if self._stopped:
            return {}
        self._stopped = True
        t0 = time.monotonic()
        if self._notifier is not None:
            self._notifier.stopping()
        # 1. no new audio
        self.stop_event.set()
        sources_until = t0 + 0.1 * timeout
        for r in self._runners:
            r.thread.join(max(0.0, sources_until - time.monotonic()))
        # 2. finish what is queued, until the drain deadline; 3. stop and join the worker
        left = self._stop_worker(t0 + self.settings.worker.drain_share * timeout)
        # 4. flush the alerts; 5. the rest
        if self.alerts_pipeline is not None:
            self.alerts_pipeline.stop(timeout=max(1.0, t0 + timeout - time.monotonic()))
        if self._watchdog is not None:
            self._watchdog.stop()
        if self._health is not None:
            self._health.stop()
        if self.http_endpoint is not None:
            self.http_endpoint.stop()
        if self._trimmer is not None:
            self._trimmer.stop()
        log.info("stopped", seconds=round(time.monotonic() - t0, 2), **left)
        return left

    def _stop_worker(self, drain_until: float) -> dict[str, int]:
        w, t = self.worker, self._worker_thread
        if w is None:
            return {}
        while t is not None and t.is_alive() and time.monotonic() < drain_until:
            w.collect()  # clips completed by the last frames count as queued work too
            if w.idle():
                break
            w.notify()
            time.sleep(0.02)
        self._worker_stop.set()
        w.notify()
        if t is not None:
            t.join(max(0.1, drain_until - time.monotonic()))
        left = w.abandon("shutdown")
        if t is not None:  # a model call still running ends at its next token (worker.Abandoned)
            t.join(2.0)
            if t.is_alive():
                log.warning("worker still inside a model call after the shutdown deadline")
        return left

    def health(self) -> dict[str, Any]:
        """The ``/healthz`` report (`edge.health.health_report`)."""
        return health_report(self)


def load_model(model_dir: str | Path | None, dtype: str = "auto", device: str = "cpu",
               quantize: str = "none", verify: str = "full",
               progress: Callable[[int, int], None] | None = None) -> AF2 | None:
    if model_dir is None:
        return None
    from .model import AF2
    from .model.precision import resolve

    t0 = time.monotonic()
    choice = resolve(dtype, device)
    log.info("loading the AF2 model", dir=str(model_dir), dtype=choice.dtype, verify=verify)
    m = AF2.load(model_dir, dtype=choice.dtype, device=device, quantize=quantize,
                 verify=verify, progress=progress)
    m.encoder_dtype = choice.encoder  # the encoder backend's default (daemon._encoder_backend)
    log.info("model loaded", model=getattr(m, "model_id", "af2"), dir=str(model_dir),
             dtype=choice.dtype, encoder_dtype=choice.encoder, quantize=quantize,
             reason=choice.reason, seconds=round(time.monotonic() - t0, 1))
    return m
