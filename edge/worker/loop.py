"""The single inference worker: one thread owns the model and turns the stages.

Each `InferenceWorker.step`:

1. **collect** (`edge.worker.collect`): clips that became complete on every stream join
   their stream's pending queue (oldest dropped and counted when encoding falls behind);
2. if clips are pending, **encode** (`edge.worker.encode`) up to ``encode_batch`` of them in
   one call (the gate runs on each), **remember** them (`edge.worker.remember`), and ask every
   monitor of the clip's stream whether it is due (`edge.worker.queries`): gate monitors
   answer at once, AF2 monitors queue one query group per (stream, clip);
3. otherwise run the oldest query group (`edge.worker.execute`) if it is still in time.

Results are built and handed to the sink by `edge.worker.emit`. `run` loops `step` until
stopped, calling ``on_turn`` after every step so a watchdog sees the worker turning.
In ``lossless`` mode (replay) nothing is dropped and deadlines do not apply; the source is
slowed down instead (`wait_for_capacity`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..metrics import Metrics
from ..sinks import ResultSink
from .collect import Collector
from .emit import Emitter, gate_result
from .encode import ClipEncoder, Encoding, HeardClip, take_batch
from .execute import MemoryHook, QueryExecution, QueryModel
from .queries import QueryGroup, QueryQueue, due_monitors, make_group
from .remember import remember
from .state import StreamState

if TYPE_CHECKING:
    from ..config import Settings

log = logging.getLogger("flamingo_edge.scheduler")


class InferenceWorker:
    def __init__(
        self,
        streams: dict[str, StreamState],
        settings: Settings,
        model: QueryModel | None = None,
        sink: ResultSink | None = None,
        metrics: Metrics | None = None,
        lossless: bool = False,
        on_memory: MemoryHook | None = None,
        encoder: ClipEncoder | None = None,
    ) -> None:
        self.streams = streams
        self.settings = settings
        self.model = model
        self.metrics = metrics or Metrics()
        self.lossless = lossless
        a = settings.audio
        # the encoder backend (edge.encoder_backends); default: the model's own `encode`
        self.encoder: ClipEncoder | None = encoder if encoder is not None else model  # type: ignore[assignment]
        self.collector = Collector(a, self.metrics, lossless)
        self.encoding = Encoding(self.encoder if model is not None else None, a.loudness,
                                 self.metrics, sink)
        self.queries = QueryQueue(self.metrics, lossless)
        self.execution = (QueryExecution(model, a, self.metrics, on_memory)
                          if model is not None else None)
        self.emit = Emitter(sink)
        self._lock = threading.Lock()
        self._cv = threading.Condition(self._lock)
        self._busy = False
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
        """Turn `step` until ``stop`` is set; ``on_turn`` is called after every step."""
        while not stop.is_set():
            try:
                worked = self.step()
            except Exception:  # a bad batch must not kill the worker
                self.errors += 1
                log.exception("inference step failed")
                worked = False
            if on_turn is not None:
                on_turn()
            if not worked:
                with self._cv:
                    self._cv.wait(0.05)

    # ------------------------------------------------------------ the step
    def collect(self) -> None:
        with self._lock:
            self.collector.collect(self.streams.values())

    def step(self) -> bool:
        self.collect()
        with self._lock:
            batch = take_batch(self.streams.values(), self.settings.audio.encode_batch)
            q = self.queries.pop() if not batch else None
            self._busy = bool(batch or q)
        try:
            if batch:
                for h in self.encoding.run(batch):
                    self._heard(h)
                return True
            if q is not None:
                self._run_group(q)
                return True
            return False
        finally:
            with self._cv:
                self._busy = False
                self._cv.notify_all()

    def _heard(self, h: HeardClip) -> None:
        """One clip through the memory stage and the monitors."""
        now = time.monotonic()
        self.clips_processed += 1
        if h.tokens is not None:
            remember(h, self.metrics)
        gate, af2 = due_monitors(h, with_model=self.model is not None)
        for cfg, due in gate:
            self.emit(gate_result(h, cfg, due), h.audio)
        if af2:
            with self._lock:
                self.queries.add(make_group(h, af2, now), now)

    def _run_group(self, q: QueryGroup) -> None:
        assert self.execution is not None
        monitors = self.queries.still_in_time(q, time.monotonic())
        self.execution.run(self.streams[q.stream], q, monitors, self.emit)
