"""What the worker holds for one stream: ring, timeline, clip grid, pending clips, gate, memory,
monitors.

Every stage reads and updates `StreamState`; nothing else about a stream lives in the worker.
"""

from __future__ import annotations

import time
from collections import deque
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from streams.timeline import PieceLog

from ..constants import SAMPLE_RATE as SR
from ..gate import Gate, GateReading
from ..memory import StreamMemory
from ..monitors import MonitorState
from ..ring import Ring
from ..windows import ClipScheduler, ClipSpec, clips_for

if TYPE_CHECKING:
    from ..config import Settings, StreamConfig

HEARD_CLIPS = 360  # clips of level/novelty history kept per stream (an hour at a 10-s hop)


def utc(t: float | None) -> datetime:
    return datetime.fromtimestamp(t if t is not None else time.time(), tz=timezone.utc)


class StreamState:
    """Everything the pipeline holds for one stream."""

    def __init__(self, cfg: StreamConfig, settings: Settings) -> None:
        a = settings.audio
        self.id: str = cfg.id
        self.cfg = cfg
        self.labels: dict[str, str] = dict(cfg.labels)
        self.clip_len = round(a.clip * SR)
        self.hop = round(a.hop * SR)
        self.memory_clips = clips_for(a.memory, a.clip, a.hop)
        capacity = round((a.memory + a.clip + a.ring_margin) * SR)
        self.ring = Ring(capacity, SR)
        self.timeline = PieceLog(SR)  # sample index -> UTC, filled from the frames' pieces
        self.clips = ClipScheduler(self.id, self.clip_len, self.hop,
                                   min_partial=round(a.flush_partial * SR))
        g = settings.gate
        self.gate = Gate(SR, warmup_clips=g.warmup_clips, segment_s=g.segment, adapt=g.adapt,
                         adapt_below=g.adapt_below, min_std_db=g.min_std_db)
        self.memory = StreamMemory(self.memory_clips)
        self.pending: deque[ClipSpec] = deque()
        self.monitors = [MonitorState(m) for m in settings.monitors_for(self.id)]
        self.ended = False  # set when a finite source has delivered everything
        self.flushed = False
        self.last_reading: GateReading | None = None
        # (clip slot, UTC end, reading, gap samples) of the clips heard lately (the web page)
        self.heard: deque[tuple[int, float | None, GateReading, int]] = deque(maxlen=HEARD_CLIPS)

    def next_unprocessed(self) -> int:
        if self.pending:
            return self.pending[0].start
        return self.clips.bounds(self.clips.next_index)[0]

    def t_rel(self, index: int) -> float:
        return (index - (self.ring.origin or 0)) / SR

    def span(self, start: int, end: int) -> tuple[datetime, datetime]:
        """UTC span of the samples ``[start, end)``."""
        return utc(self.timeline.utc_of(start)), utc(self.timeline.utc_end(end))

    def clip_utc(self, spec: ClipSpec) -> tuple[float | None, float | None]:
        """UTC of a clip's start and end, both on the piece its audio is on (a clip cut by a
        break ends where its own piece says, not on the piece after the break)."""
        p = self.timeline.piece_at(spec.held_end - 1)
        return self.timeline.utc_of(spec.start), (None if p is None else p.utc_of(spec.end))

    def clip_span(self, spec: ClipSpec) -> tuple[datetime, datetime]:
        a, b = self.clip_utc(spec)
        return utc(a), utc(b)

    def gap_in(self, spec: ClipSpec) -> int:
        """Samples of a clip that are not captured audio (gap silence, a cut tail)."""
        return self.ring.gap_in(spec.start, spec.held_end) + (spec.end - spec.held_end)

    def offsets(self, start: int, end: int) -> list[float]:
        """Where ``[start, end)`` lies in the stream's audio, in seconds (a file's position)."""
        return [round(self.t_rel(start), 3), round(self.t_rel(end), 3)]
