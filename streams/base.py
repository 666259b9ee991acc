"""The common source interface.

A source turns some audio input into `Frame`s: mono float32 at 16 kHz, with the stream id,
the index of the first sample on the stream's own 16 kHz sample index, the UTC of that
sample (UNIX seconds) and a per-stream sequence number. Where the index goes and what UTC
it stands for is decided by the stream's `streams.timeline.Timeline`; the first frame of a
new timeline piece carries that `Piece` (a break, a clock step, a drift correction), which
the consumer records to turn clip indices into UTC. Consumers (the ring buffers) trust the
sample index: a frame whose index is ahead of the ring's write position means a short gap
(filled with silence), one behind means overlap (dropped).

Sources run on their own thread (`run(emit, stop)`) or on a library's thread (MQTT) and
hand frames to ``emit``, which must be cheap and must never block in live mode.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from collections.abc import Callable

import numpy as np

from edge.constants import SAMPLE_RATE

from .timeline import Piece


@dataclass(frozen=True)
class Frame:
    stream: str
    sample_index: int  # first sample, on the stream's 16 kHz clock
    capture_time: float  # UNIX seconds (UTC) of the first sample
    seq: int
    samples: np.ndarray  # (n,) float32 mono 16 kHz
    piece: Piece | None = None  # set on the first frame of a new timeline piece

    @property
    def end_index(self) -> int:
        return self.sample_index + int(self.samples.shape[0])


Emit = Callable[[Frame], None]


class Source(ABC):
    """A producer of frames for one or more streams."""

    #: stream ids this source feeds
    streams: tuple[str, ...] = ()
    #: a finite source (a file without looping) ends by returning from run()
    finite: bool = False

    @abstractmethod
    def run(self, emit: Emit, stop: threading.Event) -> None:
        """Produce frames until ``stop`` is set (or the input ends, for finite sources)."""

    def describe(self) -> str:
        return f"{type(self).__name__}({', '.join(self.streams)})"


def downmix(x: np.ndarray) -> np.ndarray:
    """(n,) or (n, channels) -> (n,) float32, the mean of the channels."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 1:
        return x
    if x.shape[1] == 1:
        return x[:, 0]
    return x.mean(axis=1, dtype=np.float32)


class Converter:
    """Streaming downmix + resample to 16 kHz mono float32 (soxr, stateful across chunks)."""

    def __init__(self, in_rate: int, out_rate: int = SAMPLE_RATE, quality: str = "HQ") -> None:
        self.in_rate = int(in_rate)
        self.out_rate = int(out_rate)
        self._rs = None
        if self.in_rate != self.out_rate:
            import soxr

            self._rs = soxr.ResampleStream(self.in_rate, self.out_rate, 1, dtype="float32",
                                           quality=quality)

    def __call__(self, x: np.ndarray, last: bool = False) -> np.ndarray:
        m = downmix(x)
        if self._rs is None:
            return np.ascontiguousarray(m, dtype=np.float32)
        return self._rs.resample_chunk(np.ascontiguousarray(m), last=last).astype(np.float32)

    def out_length(self, n_in: int) -> int:
        """Samples at the output rate that correspond to ``n_in`` input samples."""
        return round(n_in * self.out_rate / self.in_rate)
