"""Query execution: `QueryGroup`s -> one `MonitorResult` per monitor.

The due monitors of one stream on one clip share one `AF2.memory` computation per window
length and one cross-attention K/V per memory, whatever their decoding settings. The groups
of several streams due in the same cycle (`edge.worker.queries.QueryQueue.pop_cycle`) run
together: all their scored questions as one batched prefill (`AF2.score_batch_kv`, memories
of different lengths padded and masked), their text questions as one decoding batch per
decoding setting (`AF2.ask_batch`), in chunks of the model's ``max_batch`` rows
(`edge.answering.answer_memories`). The answer of each monitor is turned into a result
(`edge.worker.emit.answer_result`, latency from its own group's due time) and handed to
``emit`` with a reference to the window's audio (`edge.results.AudioSpan`, read only for an
evidence clip). ``on_progress`` is called after every model call (and the model ticks after every
token and scored row: `edge.model.progress`), so the watchdog sees a long group make progress.

An exception part-way (memory, a model call, a broken answer) loses only the monitors it
happened to: a failed batched call is retried one query at a time, and what still fails is
counted (``fe_queries_failed``), logged once per burst; the remaining monitors still run.

This is the only place the worker talks to the decoder; its interface is
``QueryExecution.run_many([(stream, group, monitors), ...], emit)`` (``run`` for one group).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import structlog

from ..answering import Job, Outcome, Query, QueryModel, TurnOnWatch, answer_due_many
from ..memory import MemoryView
from ..metrics import Metrics
from ..monitors import Due, render_question
from ..results import AudioSpan, MonitorResult
from .emit import answer_result
from .failures import BurstLog
from .queries import DueMonitor, QueryGroup
from .remember import window
from .state import SR, StreamState, clips_for

if TYPE_CHECKING:
    import torch

    from ..config import AudioConfig

log = structlog.get_logger(__name__)

# -> whether the result was passed on (False: shut down meanwhile; the caller counted it)
EmitFn = Callable[[MonitorResult, "AudioSpan | np.ndarray | None"], bool]
# (stream, clip_index, view, memory)
MemoryHook = Callable[[str, int, MemoryView, "torch.Tensor"], None]


Work = tuple[StreamState, QueryGroup, list[DueMonitor]]


@dataclass
class _Job:
    """One memory (a stream's window up to a group's clip) and the monitors asking about it."""

    s: StreamState
    q: QueryGroup
    view: MemoryView
    memory: torch.Tensor  # AF2.memory of the view
    items: list[DueMonitor]
    audio: AudioSpan


class QueryExecution:
    def __init__(self, model: QueryModel, audio: AudioConfig, metrics: Metrics,
                 on_memory: MemoryHook | None = None,
                 on_progress: Callable[[], None] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 watch: TurnOnWatch | None = None) -> None:
        self.watch = watch  # explain-on-ON of scored monitors (None: never explain)
        self.model = model
        self.window_s = audio.window
        self.clip_s, self.hop_s = audio.clip, audio.hop
        self.metrics = metrics
        self.on_memory = on_memory  # test/debug hook
        self.on_progress = on_progress
        self.clock = clock
        self.model_id = str(getattr(model, "model_id", "af2"))
        self.failures = BurstLog(log, "query")

    def run(self, s: StreamState, q: QueryGroup, monitors: list[DueMonitor], emit: EmitFn) -> None:
        self.run_many([(s, q, monitors)], emit)

    def run_many(self, work: list[Work], emit: EmitFn) -> None:
        """The groups of several streams due in the same cycle (each: its stream, the group,
        its monitors still in time), answered together (see the module doc)."""
        jobs: list[_Job] = []
        for s, q, monitors in work:
            for n, group in sorted(self._by_window(s, monitors).items()):
                try:
                    got = self._memory(s, q, n)
                except Exception:  # noqa: BLE001 - a failed memory fails its queries; the worker goes on
                    self._failed(s, q, group)
                    continue
                if got is None:
                    for cfg, _ in group:
                        self.metrics.queries_missed.labels(s.id, cfg.name).inc()
                    log.warning("no valid audio in memory: queries skipped", stream=s.id,
                                queries=len(group))
                    continue
                view, memory = got
                jobs.append(_Job(s, q, view, memory, group, AudioSpan(view.start, view.held_end, SR,
                                                                       s.ring.read)))
        if not jobs:
            return
        answered: list[set[str]] = [set() for _ in jobs]
        try:
            self._answer(jobs, emit, answered)
        except Exception:  # noqa: BLE001 - a failed batch fails its queries; the worker goes on
            for job, done in zip(jobs, answered):
                self._failed(job.s, job.q, [(c, d) for c, d in job.items if c.name not in done])
        else:
            self.failures.ok()

    def _failed(self, s: StreamState, q: QueryGroup, lost: list[DueMonitor]) -> None:
        if not lost:
            return
        for cfg, _ in lost:
            self.metrics.queries_failed.labels(s.id, cfg.name).inc()
        self.failures.failed(f"{s.id}: {', '.join(c.name for c, _ in lost)} on clip {q.clip_index}")

    def _by_window(self, s: StreamState, monitors: list[DueMonitor]) -> dict[int, list[DueMonitor]]:
        by_window: dict[int, list[DueMonitor]] = {}
        for cfg, due in monitors:
            w = cfg.window if cfg.window is not None else self.window_s
            n = min(clips_for(w, self.clip_s, self.hop_s), s.memory_clips)
            by_window.setdefault(n, []).append((cfg, due))
        return by_window

    def _memory(self, s: StreamState, q: QueryGroup, n: int) -> tuple[MemoryView, torch.Tensor] | None:
        """The window of ``n`` clips up to the group's clip, and its `AF2.memory`; None when no
        clip in the window holds real audio."""
        import torch

        view = window(s, q.clip_index, n)
        if view is None:
            return None
        with torch.inference_mode():
            memory = self.model.memory(view.tokens, view.mask)
        if self.on_memory is not None:
            self.on_memory(s.id, q.clip_index, view, memory)
        return view, memory

    def _answer(self, jobs: list[_Job], emit: EmitFn, answered: list[set[str]]) -> None:
        """All due monitors of all jobs through `edge.answering.answer_due_many`: one cross
        K/V per memory whatever their decoding settings, shared batches across memories;
        yes_no/choice scored, text generated, a scored monitor turning ON explained in words."""
        m = self.metrics
        calls: list[Job] = []
        for job in jobs:
            s, q, view = job.s, job.q, job.view
            window_s = (view.end - view.start) / SR
            queries = [Query(cfg, render_question(cfg.question or "", s.id, cfg.name, window_s, s.labels))
                       for cfg, _ in job.items]
            dues = {cfg.name: due for cfg, due in job.items}

            def make_result(query: Query, o: Outcome, s: StreamState = s, q: QueryGroup = q,
                            view: MemoryView = view, dues: dict[str, Due] = dues) -> MonitorResult:
                return answer_result(s, q, view, query.cfg, dues[query.cfg.name], query.question, o,
                                     self.clock() - q.due_wall, self.model_id)

            calls.append((job.memory, view.mask, queries, make_result))

        import torch

        t0 = time.perf_counter()
        with torch.inference_mode():
            per_job = answer_due_many(self.model, calls, self.watch)
        dt = time.perf_counter() - t0
        if self.on_progress is not None:
            self.on_progress()
        ntok = sum(len(r.token_ids) for results in per_job for r in results)
        if dt > 0 and ntok:
            m.tokens_per_second.set(ntok / dt)
        for job, results, done in zip(jobs, per_job, answered):
            s = job.s
            for res in results:
                done.add(res.monitor)
                if not emit(res, job.audio):  # after the shutdown deadline: counted as missed
                    continue
                m.queries.labels(s.id, res.monitor).inc()
                m.query_latency.labels(res.monitor).observe(res.latency_s)
                if res.score is not None:
                    m.monitor_score.labels(s.id, res.monitor).set(res.score)
            # the model failed on the others (logged by edge.answering)
            self._failed(s, job.q, [(c, d) for c, d in job.items if c.name not in done])
