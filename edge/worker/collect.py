"""Collection stage: complete clips of every stream -> each stream's pending queue.

Clip slots come from `edge.windows.ClipScheduler` on the stream's timeline: a timeline piece
with a fresh grid (a gap longer than ``audio.max_gap``) restarts the grid and skips the slots
the gap took, in O(1). Each slot is handed out at most once. Per stream at most
``audio.max_pending_clips`` wait: when encoding falls behind real time the **oldest** pending
clips are dropped and counted (``fe_clips_dropped{reason="behind"}``), so ingest never
blocks and the memory stays current. A clip whose samples the ring has already overwritten is
dropped the same way (``reason="overwritten"``).

A partial clip is handed out with its missing tail as silence (``ClipSpec.data_end``) when it
holds at least ``audio.flush_partial`` seconds and either its source has ended, or (live) no
audio has arrived for as long as the rest of the clip would have taken plus ``FLUSH_GRACE_S``:
the last words before an outage are heard now, not when the audio comes back. A clip cut by a
break (a fresh timeline piece) before ``audio.flush_partial`` seconds of it arrived is not
encoded and is counted (``fe_clips_dropped{reason="too_short"}``).

In ``lossless`` mode (replay) nothing is dropped for being behind; the source waits instead.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

import structlog

from ..metrics import Metrics
from .state import SR, StreamState

if TYPE_CHECKING:
    from ..config import AudioConfig

log = structlog.get_logger(__name__)

FLUSH_GRACE_S = 2.0  # late audio this much after a live clip's expected end is still waited for


class Collector:
    def __init__(self, audio: AudioConfig, metrics: Metrics, lossless: bool = False,
                 clock=time.monotonic) -> None:
        self.max_pending = audio.max_pending_clips
        self.metrics = metrics
        self.lossless = lossless
        self.clock = clock
        self._advanced: dict[str, tuple[int, float]] = {}  # stream -> (write_pos, when it moved)

    def collect(self, streams: Iterable[StreamState]) -> None:
        """Move newly complete clips into ``pending``. The caller holds the worker lock."""
        for s in streams:
            ring = s.ring
            ended = s.ended  # read once: a source may end while we collect
            new = s.clips.ready(ring.origin, ring.write_pos,
                                breaks=s.timeline.fresh_after(s.clips.origin or 0),
                                flush_to=self._flush_to(s, ended))
            short = s.clips.take_short()
            if short:  # cut by a break before audio.flush_partial of it had arrived
                self.metrics.clips_dropped.labels(s.id, "too_short").inc(short)
                log.info("clip cut by a break too short to encode", stream=s.id, clips=short)
            if new:
                s.memory.start(new[0].index)
            s.pending.extend(new)
            if ended:
                s.flushed = True
            self._drop_excess(s)
            self.metrics.clips_behind.labels(s.id).set(len(s.pending))

    def _flush_to(self, s: StreamState, ended: bool) -> int | None:
        """Sample index before which a clip in progress is to be handed out now, or None."""
        pos = s.ring.write_pos
        if ended:
            return pos + s.clip_len  # the source is done: its last partial clip too
        if self.lossless or s.ring.origin is None:
            return None
        now = self.clock()
        last = self._advanced.get(s.id)
        if last is None or last[0] != pos:
            self._advanced[s.id] = (pos, now)
            return None
        waited = now - last[1] - FLUSH_GRACE_S  # silent for this long past the grace
        return pos + int(waited * SR) if waited > 0 else None

    def _drop_excess(self, s: StreamState) -> None:
        oldest = s.ring.oldest
        while s.pending and s.pending[0].start < oldest:
            s.pending.popleft()
            self.metrics.clips_dropped.labels(s.id, "overwritten").inc()
        while not self.lossless and len(s.pending) > self.max_pending:
            s.pending.popleft()
            self.metrics.clips_dropped.labels(s.id, "behind").inc()
