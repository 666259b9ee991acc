"""Result building: a `edge.results.MonitorResult` from a gate reading or a model answer,
and the hand-off to the result sink (`edge.sinks`). A sink that raises is logged; the
worker carries on.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import numpy as np
import structlog

from ..answering import Outcome
from ..memory import MemoryView
from ..metrics import Metrics
from ..monitors import Due
from ..results import AudioSpan, MonitorResult
from ..sinks import ResultSink
from .encode import HeardClip
from .queries import QueryGroup
from .state import SR, StreamState, utc

if TYPE_CHECKING:
    from ..config import MonitorConfig

log = structlog.get_logger(__name__)
GATE_MODEL_ID = "level-gate"


def gate_result(h: HeardClip, cfg: MonitorConfig, due: Due) -> MonitorResult:
    s, spec, reading = h.stream, h.spec, h.reading
    return MonitorResult(
        stream=s.id, monitor=cfg.name,
        question=cfg.question or " or ".join(cfg.triggers),
        answer="", token_ids=(),
        verdict="positive" if due.positive else "negative",
        start=s.clip_span(spec)[0], end=s.clip_span(spec)[1],
        latency_s=0.0, model_id=GATE_MODEL_ID, severity=cfg.severity,
        level_dbfs=reading.level_dbfs, novelty=reading.novelty,
        extra={"reason": due.reason, "clip": spec.index, "peak_dbfs": reading.peak_dbfs,
               "offset_s": s.offsets(spec.start, spec.end)},
    )


def answer_result(s: StreamState, q: QueryGroup, view: MemoryView, cfg: MonitorConfig, due: Due,
                  question: str, o: Outcome, latency_s: float, model_id: str) -> MonitorResult:
    """A model monitor's result; ``o`` is its answer (`edge.answering.Outcome`: scored, or
    generated and parsed)."""
    return MonitorResult(
        stream=q.stream, monitor=cfg.name, question=question, answer=o.answer,
        token_ids=o.token_ids, verdict=o.verdict,
        start=utc(view.t_start), end=utc(view.t_end),
        latency_s=latency_s, model_id=model_id,
        severity=cfg.severity, choice=o.choice,
        level_dbfs=q.reading.level_dbfs if q.reading else None,
        novelty=q.reading.novelty if q.reading else None,
        extra={"reason": due.reason, "clip": q.clip_index,
               "clips": [c.index for c in view.clips],
               "masked": int((view.mask == 0).sum()),
               "offset_s": s.offsets(view.start, view.end),
               "explained": o.explained},
        score=o.score,
        threshold=cfg.threshold if o.score is not None else None,
        hysteresis=cfg.hysteresis if o.score is not None else None,
        probs=o.probs, coverage=o.coverage,
    )


def clip_audio(h: HeardClip) -> AudioSpan:
    """A reference to a clip's audio in its ring (no copy)."""
    return AudioSpan(h.spec.start, h.spec.held_end, SR, h.stream.ring.read)  # real samples only


class Emitter:
    """Counts results and passes each to the sink with (a reference to) the audio of its span.
    After `close` (shutdown: the sinks are being flushed) results are not passed on; each one
    refused is counted (``fe_results_dropped{reason="shutdown"}``) and logged. A result is
    either passed on or counted, never both: `close` waits for a hand-off in progress."""

    def __init__(self, sink: ResultSink | None, metrics: Metrics | None = None) -> None:
        self.sink = sink
        self.metrics = metrics
        self.count = 0
        self.closed = False
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self.closed = True

    def __call__(self, res: MonitorResult, audio: AudioSpan | np.ndarray | None) -> bool:
        """Pass ``res`` on -> True; after `close` count it as dropped -> False."""
        with self._lock:
            if self.closed:
                if self.metrics is not None:
                    self.metrics.results_dropped.labels(res.stream, res.monitor, "shutdown").inc()
                log.info("result after the shutdown deadline not passed on", stream=res.stream,
                         monitor=res.monitor)
                return False
            self.count += 1
            if self.sink is not None:
                try:
                    self.sink.submit(res, audio, SR)
                except Exception:
                    log.exception("result sink failed")
            return True
