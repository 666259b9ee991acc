"""Collection stage: complete clips of every stream -> each stream's pending queue.

Each clip index is handed out exactly once (`edge.windows.ClipScheduler`). Per stream at most
``audio.max_pending_clips`` wait: when encoding falls behind real time the **oldest** pending
clips are dropped and counted (``fe_clips_dropped{reason="behind"}``), so ingest never
blocks and the memory stays current. A clip whose samples the ring has already overwritten is dropped the same way
(``reason="overwritten"``).
At the end of a finite source a partial last clip of at least ``audio.flush_partial`` seconds
is padded with silence so it is heard too.

In ``lossless`` mode (replay) nothing is dropped for being behind; the source waits instead.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from ..metrics import Metrics
from .state import SR, StreamState

if TYPE_CHECKING:
    from ..config import AudioConfig


class Collector:
    def __init__(self, audio: AudioConfig, metrics: Metrics, lossless: bool = False) -> None:
        self.max_pending = audio.max_pending_clips
        self.flush_partial_samples = audio.flush_partial * SR
        self.metrics = metrics
        self.lossless = lossless

    def collect(self, streams: Iterable[StreamState]) -> None:
        """Move newly complete clips into ``pending``. The caller holds the worker lock."""
        for s in streams:
            self._flush_tail(s)
            s.pending.extend(s.clips.ready(s.ring.origin, s.ring.write_pos))
            self._drop_excess(s)
            self.metrics.clips_behind.labels(s.id).set(len(s.pending))

    def _flush_tail(self, s: StreamState) -> None:
        ring = s.ring
        if not s.ended or s.flushed:
            return
        end = s.clips.partial_end(ring.write_pos)
        if end is not None:
            tail = ring.write_pos - s.clips.bounds(s.clips.next_index)[0]
            if tail >= self.flush_partial_samples:
                ring.pad_to(end)
        s.flushed = True

    def _drop_excess(self, s: StreamState) -> None:
        oldest = s.ring.oldest
        while s.pending and s.pending[0].start < oldest:
            s.pending.popleft()
            self.metrics.clips_dropped.labels(s.id, "overwritten").inc()
        while not self.lossless and len(s.pending) > self.max_pending:
            s.pending.popleft()
            self.metrics.clips_dropped.labels(s.id, "behind").inc()
