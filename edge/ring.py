"""Per-stream ring buffer on a sample-exact clock.

One writer (the stream's source) appends frames; one reader (the inference worker) copies
clips out. Positions are absolute sample indices on the stream's 16 kHz clock, so a clip is
named by ``[start, end)`` forever, whether or not its samples are still in the buffer.

- ``append`` is O(frame length): a frame that starts after the write position means samples
  were lost upstream, and the hole is written as silence and recorded as a gap; a frame
  that starts before the write position overlaps what we have, and the overlapping part is
  dropped (late or duplicate audio never rewrites the past).
- A gap longer than the buffer costs O(capacity), not O(gap).
- ``read`` returns a copy, or None if the span is not (or no longer) in the buffer.

UTC is not the ring's business: the stream's timeline (`streams.timeline.PieceLog`) maps
sample indices to UTC.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

import numpy as np

from .constants import SAMPLE_RATE


@dataclass(frozen=True)
class AppendResult:
    written: int  # real samples written
    gap: int  # silence samples inserted before them
    dropped: int  # samples dropped because they overlapped what was already written


class Ring:
    def __init__(self, capacity: int, sample_rate: int = SAMPLE_RATE, max_gaps: int = 4096) -> None:
        if capacity <= 0:
            raise ValueError("capacity must be positive")
        self.capacity = int(capacity)
        self.sample_rate = int(sample_rate)
        self._buf = np.zeros(self.capacity, dtype=np.float32)
        self._lock = threading.Lock()
        self.origin: int | None = None  # sample index of the first sample ever written
        self.write_pos = 0  # absolute index one past the last written sample
        self.gap_samples = 0
        self.dropped_samples = 0
        self.closed = False  # the source ended; no more samples will come
        self._gaps: deque[tuple[int, int]] = deque(maxlen=max_gaps)

    # ---------------------------------------------------------------- writer side
    def append(self, sample_index: int, samples: np.ndarray) -> AppendResult:
        x = np.asarray(samples, dtype=np.float32).reshape(-1)
        n = x.shape[0]
        with self._lock:
            if self.origin is None:
                self.origin = self.write_pos = int(sample_index)
            gap = dropped = 0
            start = int(sample_index)
            if start < self.write_pos:  # overlap: keep only what is new
                skip = min(n, self.write_pos - start)
                dropped = skip
                x = x[skip:]
                start += skip
            if start > self.write_pos:
                gap = start - self.write_pos
                self._gaps.append((self.write_pos, start))
                self._write_zeros(gap)
            if x.shape[0]:
                self._write(x)
            self.gap_samples += gap
            self.dropped_samples += dropped
            return AppendResult(written=int(x.shape[0]), gap=gap, dropped=dropped)

    def _write(self, x: np.ndarray) -> None:
        n = x.shape[0]
        if n >= self.capacity:
            x = x[n - self.capacity:]
            self.write_pos += n - self.capacity
            n = self.capacity
        i = self.write_pos % self.capacity
        first = min(n, self.capacity - i)
        self._buf[i:i + first] = x[:first]
        if first < n:
            self._buf[: n - first] = x[first:]
        self.write_pos += n

    def _write_zeros(self, n: int) -> None:
        if n >= self.capacity:
            self._buf[:] = 0.0
            self.write_pos += n
            return
        i = self.write_pos % self.capacity
        first = min(n, self.capacity - i)
        self._buf[i:i + first] = 0.0
        if first < n:
            self._buf[: n - first] = 0.0
        self.write_pos += n

    # ---------------------------------------------------------------- reader side
    @property
    def oldest(self) -> int:
        """Oldest absolute index still held."""
        base = self.origin if self.origin is not None else 0
        return max(base, self.write_pos - self.capacity)

    def read(self, start: int, end: int) -> np.ndarray | None:
        with self._lock:
            if start < self.oldest or end > self.write_pos or end < start:
                return None
            n = end - start
            out = np.empty(n, dtype=np.float32)
            i = start % self.capacity
            first = min(n, self.capacity - i)
            out[:first] = self._buf[i:i + first]
            if first < n:
                out[first:] = self._buf[: n - first]
            return out

    def gap_in(self, start: int, end: int) -> int:
        """Silence samples inserted for gaps within ``[start, end)`` (for recent spans)."""
        with self._lock:
            gaps = list(self._gaps)
        return sum(max(0, min(e, end) - max(s, start)) for s, e in gaps)
