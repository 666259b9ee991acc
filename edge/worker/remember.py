"""Memory stage: encoded clips -> each stream's `edge.memory.StreamMemory`, and windows out.

`remember` stores one encoded clip under its slot (its tokens, span on the sample clock and
in UTC). Clips that are (almost) all gap silence never get here: they are not encoded, and
their slot stays empty. `window` cuts the slot range ``upto-n+1..upto`` into the
``(L, 64, D)`` tokens and ``(L,)`` mask that `AF2.memory` takes; empty slots (dropped, lost
to a gap, all silence) are masked.
"""

from __future__ import annotations

from ..memory import ClipEncoding, MemoryView
from ..metrics import Metrics
from .encode import HeardClip
from .state import StreamState


def remember(h: HeardClip, metrics: Metrics) -> None:
    s, spec = h.stream, h.spec
    assert h.tokens is not None, "only an encoded clip is remembered"
    gap = s.gap_in(spec)
    t_start, t_end = s.clip_utc(spec)
    s.memory.add(ClipEncoding(
        index=spec.index, start=spec.start, end=spec.end, t_start=t_start, t_end=t_end,
        tokens=h.tokens, valid=gap < 0.99 * (spec.end - spec.start),
        reading=h.reading, held_end=spec.data_end,
    ))
    metrics.clips_encoded.labels(s.id).inc()


def window(s: StreamState, upto: int, n: int) -> MemoryView | None:
    """Slots ``upto-n+1..upto`` (from the stream's first slot); None if none holds real audio."""
    return s.memory.build(upto=upto, n=n)
