"""Memory stage: encoded clips -> each stream's `edge.memory.StreamMemory`, and windows out.

`remember` appends one encoded clip (its tokens, span on the sample clock and in UTC, and
whether it is real audio or (almost) only gap silence, which the window mask hides).
`window` cuts the ``n`` most recent clips up to a clip index into the ``(L, 64, D)`` tokens
and ``(L,)`` mask that `AF2.memory` takes.
"""

from __future__ import annotations

from ..memory import ClipEncoding, MemoryView
from ..metrics import Metrics
from .encode import HeardClip
from .state import StreamState


def remember(h: HeardClip, metrics: Metrics) -> None:
    s, spec = h.stream, h.spec
    gap = s.ring.gap_in(spec.start, spec.end)
    s.memory.add(ClipEncoding(
        index=spec.index, start=spec.start, end=spec.end,
        t_start=s.timeline.utc_of(spec.start), t_end=s.timeline.utc_end(spec.end),
        tokens=h.tokens, valid=gap < 0.99 * (spec.end - spec.start),
        reading=h.reading,
    ))
    metrics.clips_encoded.labels(s.id).inc()


def window(s: StreamState, upto: int, n: int) -> MemoryView | None:
    """The last ``n`` remembered clips with index <= ``upto``; None if none holds real audio."""
    return s.memory.build(upto=upto, n=n)
