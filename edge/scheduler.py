"""The single inference worker: encoding first, queries after.

One thread owns the model. Each `step`:

1. collects the clips that have become complete on every stream (each clip index exactly
   once, `edge.windows.ClipScheduler`); per stream at most ``max_pending_clips`` wait: when
   encoding falls behind real time the **oldest** pending clips are dropped and counted
   (``fe_clips_dropped``), so ingest never blocks and the memory stays current;
2. if clips are pending, reads up to ``encode_batch`` of them (all streams together) from the
   rings, runs the model-free gate on each, applies the loudness policy + int16 round trip
   and encodes them in **one** batched call, appends the tokens to each stream's memory and
   asks every monitor of the stream whether it is due; gate monitors answer at once, AF2
   monitors queue one query group per (stream, clip);
3. otherwise runs the oldest query group: the monitors of one stream that fell due on the same
   clip share one `AF2.memory` computation per window length and one cross-attention K/V
   (`AF2.ask_many`) per decoding setting. A query not started within its deadline is skipped
   and counted (``fe_queries_missed``).

In ``lossless`` mode (replay) nothing is dropped and deadlines do not apply; the source is
slowed down instead (`wait_for_capacity`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Protocol

import numpy as np

from streams.timeline import PieceLog

from .gate import Gate, GateReading
from .memory import ClipEncoding, StreamMemory
from .metrics import Metrics
from .monitors import Due, MonitorState, parse_answer, render_question
from .results import MonitorResult
from .ring import Ring
from .windows import ClipScheduler, ClipSpec, prepare_clip

log = logging.getLogger("flamingo_edge.scheduler")
SR = 16000
GATE_MODEL_ID = "level-gate"


class ResultSink(Protocol):
    def submit(self, result: MonitorResult, audio: np.ndarray | None, sample_rate: int) -> None: ...

    def publish_level(self, stream: str, dbfs: float) -> None: ...


def clips_for(span_s: float, clip_s: float, hop_s: float) -> int:
    """Number of clips whose spans cover ``span_s`` seconds (clip length, hop spacing)."""
    return max(1, int(round((span_s - clip_s) / hop_s)) + 1)


def utc(t: float | None) -> datetime:
    return datetime.fromtimestamp(t if t is not None else time.time(), tz=timezone.utc)


class StreamState:
    """Everything the pipeline holds for one stream."""

    def __init__(self, cfg: Any, settings: Any) -> None:
        a = settings.audio
        self.id: str = cfg.id
        self.cfg = cfg
        self.labels: dict[str, str] = dict(cfg.labels)
        self.clip_len = int(round(a.clip * SR))
        self.hop = int(round(a.hop * SR))
        self.memory_clips = clips_for(a.memory, a.clip, a.hop)
        capacity = int(round((a.memory + a.clip + a.ring_margin) * SR))
        self.ring = Ring(capacity, SR)
        self.timeline = PieceLog(SR)  # sample index -> UTC, filled from the frames' pieces
        self.clips = ClipScheduler(self.id, self.clip_len, self.hop)
        g = settings.gate
        self.gate = Gate(SR, warmup_clips=g.warmup_clips, segment_s=g.segment, adapt=g.adapt,
                         adapt_below=g.adapt_below, min_std_db=g.min_std_db)
        self.memory = StreamMemory(self.memory_clips)
        self.pending: deque[ClipSpec] = deque()
        self.monitors = [MonitorState(m) for m in settings.monitors_for(self.id)]
        self.ended = False  # set when a finite source has delivered everything
        self.flushed = False
        self.last_reading: GateReading | None = None

    def next_unprocessed(self) -> int:
        if self.pending:
            return self.pending[0].start
        return self.clips.bounds(self.clips.next_index)[0]

    def t_rel(self, index: int) -> float:
        return (index - (self.ring.origin or 0)) / SR

    def span(self, start: int, end: int) -> tuple[datetime, datetime]:
        """UTC span of the samples ``[start, end)``."""
        return utc(self.timeline.utc_of(start)), utc(self.timeline.utc_end(end))

    def offsets(self, start: int, end: int) -> list[float]:
        """Where ``[start, end)`` lies in the stream's audio, in seconds (a file's position)."""
        return [round(self.t_rel(start), 3), round(self.t_rel(end), 3)]


@dataclass
class QueryGroup:
    stream: str
    clip_index: int
    monitors: list[tuple[Any, Due]]
    due_wall: float
    reading: GateReading | None
    clip_span: tuple[int, int]
    deadlines: dict[str, float] = field(default_factory=dict)


class InferenceWorker:
    def __init__(
        self,
        streams: dict[str, StreamState],
        settings: Any,
        model: Any = None,
        sink: ResultSink | None = None,
        metrics: Metrics | None = None,
        lossless: bool = False,
        on_memory: Any = None,
        encoder: Any = None,
    ) -> None:
        self.streams = streams
        self.settings = settings
        self.model = model
        # the encoder backend (edge.encoder_backends); default: the model's own `encode`
        self.encoder = encoder if encoder is not None else model
        self.sink = sink
        self.metrics = metrics or Metrics()
        self.lossless = lossless
        self.on_memory = on_memory  # test/debug hook: f(stream, clip_index, view, memory)
        self.queries: deque[QueryGroup] = deque()
        self._lock = threading.Lock()
        self._cv = threading.Condition(self._lock)
        self._busy = False
        self.results_count = 0
        self.clips_processed = 0
        self.errors = 0
        a = settings.audio
        self._clip_s, self._hop_s = a.clip, a.hop
        self._loud = a.loudness

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
        self._collect()
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

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                worked = self.step()
            except Exception:  # a bad batch must not kill the worker
                self.errors += 1
                log.exception("inference step failed")
                worked = False
            if not worked:
                with self._cv:
                    self._cv.wait(0.05)

    # ------------------------------------------------------------ the step
    def step(self) -> bool:
        self._collect()
        with self._lock:
            batch = self._take_batch()
            q = self.queries.popleft() if (not batch and self.queries) else None
            self._busy = bool(batch or q)
        try:
            if batch:
                self._process(batch)
                return True
            if q is not None:
                self._run_queries(q)
                return True
            return False
        finally:
            with self._cv:
                self._busy = False
                self._cv.notify_all()

    def _collect(self) -> None:
        m = self.metrics
        with self._lock:
            for s in self.streams.values():
                ring = s.ring
                if s.ended and not s.flushed:
                    end = s.clips.partial_end(ring.write_pos)
                    if end is not None:
                        tail = ring.write_pos - s.clips.bounds(s.clips.next_index)[0]
                        if tail >= self.settings.audio.flush_partial * SR:
                            ring.pad_to(end)
                    s.flushed = True
                new = s.clips.ready(ring.origin, ring.write_pos)
                s.pending.extend(new)
                oldest = ring.oldest
                while s.pending and (
                    s.pending[0].start < oldest
                    or (not self.lossless and len(s.pending) > self.settings.audio.max_pending_clips)
                ):
                    s.pending.popleft()
                    m.clips_dropped.labels(s.id).inc()
                m.clips_behind.labels(s.id).set(len(s.pending))

    def _take_batch(self) -> list[tuple[StreamState, ClipSpec]]:
        cands = [(spec.index, s.id) for s in self.streams.values() for spec in s.pending]
        if not cands:
            return []
        cands.sort()
        take = cands[: self.settings.audio.encode_batch]
        out = []
        for _, sid in take:
            s = self.streams[sid]
            out.append((s, s.pending.popleft()))
        return out

    def _process(self, batch: list[tuple[StreamState, ClipSpec]]) -> None:
        m = self.metrics
        items = []
        for s, spec in batch:
            x = s.ring.read(spec.start, spec.end)
            if x is None:  # overwritten before we got to it
                m.clips_dropped.labels(s.id).inc()
                continue
            reading = s.gate.process(x)
            s.last_reading = reading
            m.level_dbfs.labels(s.id).set(reading.level_dbfs)
            if reading.novelty is not None:
                m.novelty.labels(s.id).set(reading.novelty)
            if self.sink is not None:
                try:
                    self.sink.publish_level(s.id, reading.level_dbfs)
                except Exception:
                    log.exception("sink.publish_level failed")
            items.append((s, spec, x, reading))
        if not items:
            return
        tokens = None
        if self.model is not None:
            import torch

            lp = self._loud
            clips = np.stack([prepare_clip(x, lp.policy, lp.max_gain_db, lp.gain_db)
                              for _, _, x, _ in items])
            t0 = time.perf_counter()
            with torch.inference_mode():
                tokens = self.encoder.encode(torch.from_numpy(clips))
            m.encode_latency.observe(time.perf_counter() - t0)
        now = time.monotonic()
        for i, (s, spec, x, reading) in enumerate(items):
            self.clips_processed += 1
            if tokens is not None:
                gap = s.ring.gap_in(spec.start, spec.end)
                s.memory.add(ClipEncoding(
                    index=spec.index, start=spec.start, end=spec.end,
                    t_start=s.timeline.utc_of(spec.start), t_end=s.timeline.utc_end(spec.end),
                    tokens=tokens[i].clone(), valid=gap < 0.99 * (spec.end - spec.start),
                    reading=reading,
                ))
                m.clips_encoded.labels(s.id).inc()
            self._evaluate(s, spec, x, reading, now)

    def _evaluate(self, s: StreamState, spec: ClipSpec, x: np.ndarray, reading: GateReading,
                  now: float) -> None:
        t = s.t_rel(spec.end)
        values = reading.values()
        due_af2: list[tuple[Any, Due]] = []
        for ms in s.monitors:
            cfg = ms.cfg
            if cfg.kind == "af2" and self.model is None:
                continue
            due = ms.due(t, values)
            if due is None:
                continue
            if cfg.kind == "gate":
                res = MonitorResult(
                    stream=s.id, monitor=cfg.name,
                    question=cfg.question or " or ".join(cfg.triggers),
                    answer="", token_ids=(),
                    verdict="positive" if due.positive else "negative",
                    start=s.span(spec.start, spec.end)[0], end=s.span(spec.start, spec.end)[1],
                    latency_s=0.0, model_id=GATE_MODEL_ID, severity=cfg.severity,
                    level_dbfs=reading.level_dbfs, novelty=reading.novelty,
                    extra={"reason": due.reason, "clip": spec.index, "peak_dbfs": reading.peak_dbfs,
                           "offset_s": s.offsets(spec.start, spec.end)},
                )
                self._emit(res, x)
            else:
                due_af2.append((cfg, due))
        if due_af2:
            deadlines = {}
            for cfg, _ in due_af2:
                d = cfg.deadline if cfg.deadline is not None else max(30.0, cfg.every or cfg.cooldown)
                deadlines[cfg.name] = now + d
            with self._lock:
                self._prune_expired(now)
                self.queries.append(QueryGroup(s.id, spec.index, due_af2, now, reading,
                                               (spec.start, spec.end), deadlines))

    def _prune_expired(self, now: float) -> None:
        """Drop (and count) query groups none of whose monitors can still meet its deadline,
        so the queue stays bounded while encoding keeps the worker busy. Caller holds the lock."""
        if self.lossless:
            return
        keep: deque[QueryGroup] = deque()
        for g in self.queries:
            if all(now > g.deadlines[cfg.name] for cfg, _ in g.monitors):
                for cfg, _ in g.monitors:
                    self.metrics.queries_missed.labels(g.stream, cfg.name).inc()
                log.warning("queries %s/%s skipped: past their deadline", g.stream,
                            ",".join(cfg.name for cfg, _ in g.monitors))
            else:
                keep.append(g)
        self.queries = keep

    def _run_queries(self, q: QueryGroup) -> None:
        import torch

        m = self.metrics
        s = self.streams[q.stream]
        now = time.monotonic()
        mons = []
        for cfg, due in q.monitors:
            if not self.lossless and now > q.deadlines[cfg.name]:
                m.queries_missed.labels(s.id, cfg.name).inc()
                log.warning("query %s/%s skipped: past its deadline", s.id, cfg.name)
                continue
            mons.append((cfg, due))
        by_window: dict[int, list[tuple[Any, Due]]] = {}
        for cfg, due in mons:
            w = cfg.window if cfg.window is not None else self.settings.audio.window
            n = min(clips_for(w, self._clip_s, self._hop_s), s.memory_clips)
            by_window.setdefault(n, []).append((cfg, due))
        model_id = str(getattr(self.model, "model_id", "af2"))
        for n, group in sorted(by_window.items()):
            view = s.memory.build(upto=q.clip_index, n=n)
            if view is None:
                for cfg, _ in group:
                    m.queries_missed.labels(s.id, cfg.name).inc()
                log.warning("no valid audio in memory for %s; %d queries skipped", s.id, len(group))
                continue
            with torch.inference_mode():
                memory = self.model.memory(view.tokens, view.mask)
            if self.on_memory is not None:
                self.on_memory(s.id, q.clip_index, view, memory)
            audio = s.ring.read(view.start, view.end)
            span = (utc(view.clips[0].t_start), utc(view.clips[-1].t_end))
            by_dec: dict[Any, list[tuple[Any, Due]]] = {}  # Sampling -> monitors
            for cfg, due in group:
                by_dec.setdefault(cfg.decoding.sampling(), []).append((cfg, due))
            window_s = (view.end - view.start) / SR
            for dec, items in by_dec.items():
                questions = [render_question(cfg.question, s.id, cfg.name, window_s, s.labels)
                             for cfg, _ in items]
                t0 = time.perf_counter()
                answers = self._ask(memory, view.mask, questions, dec)
                dt = time.perf_counter() - t0
                ntok = sum(len(a.token_ids) for a in answers)
                if dt > 0 and ntok:
                    m.tokens_per_second.set(ntok / dt)
                done = time.monotonic()
                for (cfg, due), qtext, ans in zip(items, questions, answers):
                    parsed = parse_answer(cfg, ans.text)
                    latency = done - q.due_wall
                    m.queries.labels(s.id, cfg.name).inc()
                    m.query_latency.labels(cfg.name).observe(latency)
                    res = MonitorResult(
                        stream=s.id, monitor=cfg.name, question=qtext, answer=ans.text,
                        token_ids=tuple(int(t) for t in ans.token_ids), verdict=parsed.verdict,
                        start=span[0], end=span[1], latency_s=latency, model_id=model_id,
                        severity=cfg.severity, choice=parsed.choice,
                        level_dbfs=q.reading.level_dbfs if q.reading else None,
                        novelty=q.reading.novelty if q.reading else None,
                        extra={"reason": due.reason, "clip": q.clip_index,
                               "clips": [c.index for c in view.clips],
                               "masked": int((view.mask == 0).sum()),
                               "offset_s": s.offsets(view.start, view.end)},
                    )
                    self._emit(res, audio)

    def _ask(self, memory: Any, mask: Any, questions: list[str], sampling: Any) -> list[Any]:
        import torch

        with torch.inference_mode():
            return list(self.model.ask_many(memory, mask, questions, sampling))

    def _emit(self, res: MonitorResult, audio: np.ndarray | None) -> None:
        self.results_count += 1
        if self.sink is not None:
            try:
                self.sink.submit(res, audio, SR)
            except Exception:
                log.exception("result sink failed")
