"""Where monitor results go: the `ResultSink` protocol and the sinks the daemon composes.

The worker hands every `MonitorResult` with an `AudioSpan` (a reference to the audio of its
span in the stream's ring, read only for an evidence clip; queues never hold a copy) to one
sink; the daemon makes that a `FanoutSink` over the log, the alert pipeline
(`alerts.pipeline.AlertPipeline`, which has the same two methods) and caller-supplied sinks.
A sink that raises is logged and the others still get the result.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np
import structlog

from .results import AudioSpan, MonitorResult

log = structlog.get_logger(__name__)

Audio = AudioSpan | np.ndarray  # what a sink gets for a result's span (tests may pass arrays)


class ResultSink(Protocol):
    def submit(self, result: MonitorResult, audio: Audio | None, sample_rate: int) -> object:
        """Never blocks; what it returns is ignored (the alert pipeline: whether it queued)."""

    def publish_level(self, stream: str, dbfs: float) -> None: ...


def mmss(seconds: float) -> str:
    """12.0 -> '0:12.0', 59.99999 -> '1:00.0'."""
    m, s = divmod(round(seconds, 1), 60)
    return f"{int(m)}:{s:04.1f}"


class LogSink:
    """Logs every result (one line each)."""

    def __init__(self, logger: structlog.stdlib.BoundLogger | None = None) -> None:
        self.log = logger or structlog.get_logger(f"{__name__}.results")

    def submit(self, r: MonitorResult, audio: Audio | None, sample_rate: int) -> None:
        kw: dict[str, object] = {"stream": r.stream, "monitor": r.monitor, "verdict": r.verdict,
                              "start": r.start.isoformat(timespec="seconds"),
                              "end": r.end.isoformat(timespec="seconds")}
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
    """Calls ``fn(result, audio, sample_rate)`` for every result (tests, `replay`)."""

    def __init__(self, fn: Callable[[MonitorResult, Audio | None, int], None]) -> None:
        self.fn = fn

    def submit(self, r: MonitorResult, audio: Audio | None, sample_rate: int) -> None:
        self.fn(r, audio, sample_rate)

    def publish_level(self, stream: str, dbfs: float) -> None:
        pass


class FanoutSink:
    """Every result to every sink; one sink failing does not stop the others."""

    def __init__(self, sinks: Sequence[ResultSink]) -> None:
        self.sinks = list(sinks)

    def submit(self, r: MonitorResult, audio: Audio | None, sample_rate: int) -> None:
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
