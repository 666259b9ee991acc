"""The single inference worker: one thread owns the model and turns the stages.

Each `InferenceWorker.step` does one unit of work:

1. **collect** (`edge.worker.collect`): clips that became complete on every stream join
   their stream's pending queue (oldest dropped and counted when encoding falls behind);
2. either an **encode turn**: up to ``encode_batch`` pending clips, round robin across the
   streams (`edge.worker.encode`), are read and gated (always), the gate monitors answer at
   once, the batch is encoded in one call, **remembered** (`edge.worker.remember`), and the
   due AF2 monitors of each clip queue one query group (`edge.worker.queries`);
3. or a **query turn**: the group with the earliest deadline runs (`edge.worker.execute`),
   together with the earliest group of every other stream waiting too (up to
   ``worker.query_streams``): their queries run as shared batches.

When both clips and queries wait, the turns alternate by the per-cycle budget
``worker.encode_turns`` / ``worker.query_turns``, so encoding cannot starve the queries nor
the queries the encoding. Results are built and handed to the sink by `edge.worker.emit`.
`run` loops `step` until stopped and calls ``on_turn`` after every step, after every model
call and, inside the model, after every decoded token (`edge.model.progress`), so a watchdog
sees the worker turning even during one long generation. At shutdown the supervisor waits
for `idle` up to a deadline, stops the loop and calls `abandon`, which counts and logs
whatever was left.

In ``lossless`` mode (replay) nothing is dropped and deadlines do not apply; the source is
slowed down instead (`wait_for_capacity`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Protocol

import structlog

from ..answering import QueryModel, TurnOnWatch
from ..metrics import Metrics
from ..sinks import ResultSink
from .collect import Collector
from .emit import Emitter, clip_audio, gate_result
from .encode import ClipEncoder, Encoding, HeardClip, take_batch
from .execute import MemoryHook, QueryExecution
from .failures import BurstLog
from .queries import DueMonitor, QueryGroup, QueryQueue, due_monitors, make_group
from .remember import remember
from .state import StreamState

if TYPE_CHECKING:
    from ..config import Settings
    from ..results import MonitorResult

log = structlog.get_logger(__name__)


class WorkerModel(QueryModel, ClipEncoder, Protocol):
    """The model the worker owns (`edge.model.AF2`): it answers the queries and, without an
    encoder backend, encodes the clips."""


class Abandoned(BaseException):
    """Raised from the worker's progress hook once `InferenceWorker.abandon` has run, so that
    a model call still running at the shutdown deadline ends at its next unit of work. A
    BaseException: the stages' ``except Exception`` (which count failures) let it through."""


class InferenceWorker:
    def __init__(
        self,
        streams: dict[str, StreamState],
        settings: Settings,
        model: WorkerModel | None = None,
        sink: ResultSink | None = None,
        metrics: Metrics | None = None,
        lossless: bool = False,
        on_memory: MemoryHook | None = None,
        encoder: ClipEncoder | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.streams = streams
        self.settings = settings
        self.model = model
        self.metrics = metrics or Metrics()
        self.lossless = lossless
        self.clock = clock  # deadlines and latencies (tests drive it)
        a, w = settings.audio, settings.worker
        # the encoder backend (edge.encoder_backends); default: the model's own `encode`
        self.encoder: ClipEncoder | None = encoder if encoder is not None else model
        self.collector = Collector(a, self.metrics, lossless, clock=clock)
        self.encoding = Encoding(self.encoder if model is not None else None, a.loudness,
                                 self.metrics, sink)
        self.queries = QueryQueue(self.metrics, lossless)
        self.on_progress: Callable[[], None] | None = None
        self._asker_waiting = False  # a query turn answers an "ask now" asker (_model_tick)
        self.execution = (QueryExecution(model, a, self.metrics, on_memory,
                                         on_progress=self._progress, clock=clock,
                                         watch=TurnOnWatch(settings.alerts))
                          if model is not None else None)
        self.emit = Emitter(sink, self.metrics)
        self._budget = {"encode": w.encode_turns, "query": w.query_turns}
        self._turn, self._turns_in_row = "encode", 0
        self._rr = 0  # round-robin start for the next encode batch
        self._lock = threading.Lock()
        self._cv = threading.Condition(self._lock)
        self._busy = False
        self._in_flight: list[QueryGroup] = []
        self._in_flight_left: set[tuple[str, str]] = set()  # (stream, monitor) not answered yet
        self._encoding: list = []  # (stream, clip) of the batch being encoded, until remembered
        self._query_failures = BurstLog(log, "queries of a clip whose encoding failed")
        self.clips_processed = 0
        self.errors = 0

    @property
    def results_count(self) -> int:
        return self.emit.count

    # ------------------------------------------------------------ coordination
    def notify(self) -> None:
        with self._cv:
            self._cv.notify_all()

    def idle(self) -> bool:
        with self._lock:
            return (not self._busy and not self.queries
                    and all(not s.pending for s in self.streams.values()))

    def drained(self) -> bool:
        """All streams ended, every clip processed, every query answered."""
        if not all(s.ended for s in self.streams.values()):
            return False
        self.collect()
        return self.idle() and all(s.flushed for s in self.streams.values())

    def wait_for_capacity(self, stream: str, stop: threading.Event) -> None:
        """Lossless mode: block the caller (a source) until the worker has caught up."""
        s = self.streams[stream]
        limit = self.settings.audio.max_pending_clips * s.hop + s.clip_len
        with self._cv:
            while not stop.is_set() and (
                s.ring.write_pos - s.next_unprocessed() > limit or len(self.queries) >= 4
            ):
                self._cv.notify_all()
                self._cv.wait(0.05)

    def run(self, stop: threading.Event, on_turn: Callable[[], None] | None = None) -> None:
        """Turn `step` until ``stop`` is set; ``on_turn`` is called after every step, after
        every model call of a query group, and inside the model's loops after every decoded
        token, scored question, encoded clip and audio-transformer layer
        (`edge.model.progress`), so one model call
        longer than the watchdog interval still shows the worker turning."""
        self.on_progress = on_turn
        with self._model_progress():
            try:
                self._run(stop)
            except Abandoned:  # past the shutdown deadline: the model call was cut short
                log.info("worker stopped inside a model call after the shutdown deadline")

    def _model_progress(self) -> AbstractContextManager[None]:
        if self.model is None or self.on_progress is None:
            return nullcontext()
        from ..model.progress import reporting  # torch: only with a model

        return reporting(self._model_tick)

    def _run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                worked = self.step()
            except Exception:  # a bad batch must not kill the worker
                self.errors += 1
                log.exception("inference step failed")
                worked = False
            self._progress()
            if not worked:
                with self._cv:
                    self._cv.wait(0.05)

    def abandon(self, reason: str = "shutdown") -> dict[str, int]:
        """Stop passing results on and count (and log, once) all work left: pending clips
        (``fe_clips_dropped{reason}``), queued query groups and the monitors of a group still
        running (``fe_queries_missed``). Called by the supervisor after the drain deadline."""
        m = self.metrics
        with self._lock:  # closed with the running group's monitors counted: see _query_turn
            self.emit.close()
            clips = 0
            for s in self.streams.values():
                clips += len(s.pending)
                if s.pending:
                    m.clips_dropped.labels(s.id, reason).inc(len(s.pending))
                s.pending.clear()
            for s, _ in self._encoding:  # a batch still in the encoder: never remembered now
                m.clips_dropped.labels(s.id, reason).inc()
                clips += 1
            self._encoding = []
            groups = self.queries.abandon()
            queued = sum(len(g.monitors) for g in groups)
            for stream, name in sorted(self._in_flight_left):
                m.queries_missed.labels(stream, name).inc()
            running = len(self._in_flight_left)
        left = {"clips": clips, "queries_queued": queued, "queries_running": running}
        if any(left.values()):
            log.warning("work abandoned", at=reason, clips_not_encoded=clips,
                        queries_queued=queued, queries_running=running)
        return left

    def _model_tick(self) -> None:
        """The model's progress hook: a watchdog beat, and the end of a model call that runs
        past the shutdown deadline. `abandon` has then counted its queries as missed, so the
        call stops at its next token or clip instead of finishing minutes of work nobody
        receives (and a thread still inside torch when the interpreter exits aborts the
        process). An "ask now" asker still waiting for this call keeps it running."""
        if self.emit.closed and not self._asker_waiting:
            raise Abandoned
        self._progress()

    def _progress(self) -> None:
        if self.on_progress is not None:
            self.on_progress()

    # ------------------------------------------------------------ the step
    def collect(self) -> None:
        with self._lock:
            self.collector.collect(self.streams.values())

    def step(self) -> bool:
        self.collect()
        with self._lock:
            batch, qs = self._next_turn()
            self._busy = bool(batch or qs)
            self._in_flight = qs
            self._in_flight_left = {(q.stream, cfg.name) for q in qs for cfg, _ in q.monitors}
            self._encoding = list(batch)
        try:
            if batch:
                self._encode_turn(batch)
                return True
            if qs:
                self._query_turn(qs)
                return True
            return False
        finally:
            with self._cv:
                self._busy = False
                self._in_flight = []
                self._encoding = []
                self._cv.notify_all()

    def _next_turn(self) -> tuple[list, list[QueryGroup]]:
        """Pick this step's work by the per-cycle budget. The caller holds the lock."""
        clips_wait = any(s.pending for s in self.streams.values())
        queries_wait = len(self.queries) > 0
        turn = self._turn
        idle = turn == "encode" and not clips_wait or turn == "query" and not queries_wait
        spent = self._turns_in_row >= self._budget[turn] and clips_wait and queries_wait
        if idle or spent:  # nothing of this kind waits, or its budget is spent while both wait
            turn = "query" if turn == "encode" else "encode"
        if turn != self._turn:
            self._turn, self._turns_in_row = turn, 0
        if turn == "query" and queries_wait:
            qs = self.queries.pop_cycle(self.clock(), self.settings.worker.query_streams)
            if qs:
                self._turns_in_row += 1
                return [], qs
            if not clips_wait:  # every waiting group had expired (counted)
                return [], []
            self._turn, self._turns_in_row = "encode", 0
        if clips_wait:
            self._turns_in_row += 1
            batch = take_batch(self.streams.values(), self.settings.audio.encode_batch, self._rr)
            self._rr += 1
            return batch, []
        return [], []

    def _encode_turn(self, batch: list) -> None:
        heard = self.encoding.hear(batch)
        with self._lock:
            self._encoding = [(h.stream, h.spec) for h in heard]  # (lost reads are counted)
        due: list[list[DueMonitor]] = []
        for h in heard:  # the gate always runs, whatever the encoder does
            gate, af2 = due_monitors(h, with_model=self.model is not None)
            for cfg, d in gate:
                self.emit(gate_result(h, cfg, d), clip_audio(h))
            due.append(af2)
        self.encoding.encode(heard)
        with self._lock:
            abandoned = self.emit.closed  # shut down meanwhile: abandon() counted the clips
            self._encoding = []
        now = self.clock()
        if abandoned:
            for h, af2 in zip(heard, due):
                if af2:
                    self._queue(h, af2, now)  # counted as missed
            return
        for h, af2 in zip(heard, due):
            self.clips_processed += 1
            if h.tokens is not None:
                remember(h, self.metrics)
            if af2:
                self._queue(h, af2, now)

    def _queue(self, h: HeardClip, af2: list[DueMonitor], now: float) -> None:
        if self.emit.closed:  # shut down while this clip was encoded: abandoned
            for cfg, _ in af2:
                self.metrics.queries_missed.labels(h.stream.id, cfg.name).inc()
            log.warning("queries abandoned at shutdown", stream=h.stream.id,
                        monitors=",".join(cfg.name for cfg, _ in af2))
            return
        if h.encode_failed:
            for cfg, _ in af2:
                self.metrics.queries_failed.labels(h.stream.id, cfg.name).inc()
            self._query_failures.failed(f"{h.stream.id} clip {h.spec.index}: "
                                        f"{', '.join(cfg.name for cfg, _ in af2)}")
            return
        self._query_failures.ok()
        with self._lock:
            self.queries.add(make_group(h, af2, now, self.settings.worker.trigger_deadline), now)

    def _query_turn(self, qs: list[QueryGroup]) -> None:
        assert self.execution is not None
        now = self.clock()
        work = [(self.streams[q.stream], q, self.queries.still_in_time(q, now)) for q in qs]
        with self._lock:
            self._in_flight_left = {(q.stream, cfg.name) for _, q, ms in work for cfg, _ in ms}

        def emit(res, audio) -> bool:
            with self._lock:
                closed = self.emit.closed  # abandon() counted this monitor as missed
                if not closed:
                    self._in_flight_left.discard((res.stream, res.monitor))
            q = by_stream[res.stream]
            if q.reply is not None:  # "ask now": to the asker, not the sinks (who still waits)
                taken = q.reply(res)
                if not taken and not closed:  # the asker stopped waiting: too late for anyone
                    self.metrics.queries_missed.labels(res.stream, res.monitor).inc()
                    log.warning("answer came after its asker stopped waiting",
                                stream=res.stream, monitor=res.monitor,
                                latency_s=round(res.latency_s, 3))
                return taken and not closed
            if closed:
                return False
            return self.emit(res, audio)  # closed meanwhile: counted as a dropped result

        by_stream = {q.stream: q for q in qs}  # one group per stream in a cycle (pop_cycle)
        self._asker_waiting = any(q.reply is not None for q in qs)
        try:
            self.execution.run_many([w for w in work if w[2]], emit)
        finally:
            self._asker_waiting = False
        for _, q, ms in work:
            if q.reply is not None:
                q.reply(None, "failed" if ms else "deadline")  # no-op once answered

    def ask(self, stream: str, question: str, *, answer: str = "text",
            choices: list[str] | None = None, window_s: float | None = None,
            deadline_s: float = 30.0, max_waiting: int = 4) -> Future[MonitorResult]:
        """Queue a question about ``stream``'s memory (`edge.worker.ask`); returns at once."""
        from .ask import ASK_MONITOR, AskError, ask_config, ask_group

        if self.execution is None:
            raise AskError("no_model", "no AF2 model loaded: only the level/novelty gate runs")
        s = self.streams[stream]
        w = min(window_s or self.settings.audio.window, self.settings.audio.memory)
        cfg = ask_config(question, answer, list(choices or []), w, deadline_s)
        fut: Future[MonitorResult] = Future()
        now = self.clock()
        with self._lock:
            if sum(1 for g in self.queries.groups() if g.reply is not None) >= max_waiting:
                raise AskError("busy", f"{max_waiting} questions are already waiting")
            self.queries.add(ask_group(s, cfg, now, deadline_s, fut), now)
        self.notify()
        log.info("question queued", stream=stream, monitor=ASK_MONITOR, window_s=w)
        return fut
