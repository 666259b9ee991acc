"""One timeline per stream: pieces that map the stream's sample index to UTC.

A stream's samples are numbered on its own 16 kHz sample index, which only ever grows. The
timeline says what UTC each index stands for, as a list of **pieces**; within a piece the map
is linear and exact to the sample::

    utc(i) = piece.utc + (i - piece.start) / piece.rate

A source owns one `Timeline` per stream and calls `Timeline.place` for every frame, with what
it knows: the frame's length, its own reading of the first sample's capture time, samples it
knows were lost just before (a sequence gap, a full queue) and whether continuity broke (a
publisher restart, a device reopen). `place` answers with the sample index the frame goes to
and, when the frame starts one, the new `Piece`, which travels to the consumer on the frame
(`streams.base.Frame.piece`). What it decides:

- **short gap** (lost samples, or a break whose capture times say the input was away no longer
  than ``max_gap_s``): same piece, the index advances by the gap and the ring fills it with
  silence, so clips stay aligned with wall time;
- **long gap** (longer than ``max_gap_s``): a new piece starting right at the next index with a
  *fresh clip grid* (``fresh_grid=True``) and the measured ``gap_s``; no silence is written
  and nothing walks the gap, so a 30-day jump costs the same as a 1-minute one;
- **clock step** (contiguous audio whose capture times are more than ``step_s`` off, by the
  same amount, for ``step_confirm_s`` of audio, e.g. NTP stepping a clock; late callbacks
  catching up in a burst are not): a new piece dated back to the first frame of the step,
  with the *same* clip grid (``fresh_grid=False``): the audio did not stop, the clock moved;
- **drift** (a device clock running ±100 ppm off): contiguous readings are compared with the
  piece's prediction; when the median error of recent readings exceeds ``drift_tolerance_s``
  a new piece starts with the corrected time and the rate measured over the old piece. A
  source whose readings are **arrival times** (``late_only``: a PortAudio callback time is
  never early, only late by load) uses the lowest recent error instead of the median: the
  least delayed reading is the nearest to the truth, and a burst of late callbacks (the
  callback thread starved, then catching up on the blocks the audio server kept) is not
  taken for drift; a reading earlier than the piece proves the piece late (anchored on a
  delayed callback) and corrects it at once;
- **implausible capture times** (further than ``max_skew_s`` from the receiver's own clock,
  e.g. a board that booted at 1970 without an RTC, or a publisher 30 days ahead): the reading
  is not trusted; the receiver's clock (arrival time minus the frame's duration) is used
  instead and the frame is counted in ``untrusted``.

The consumer side keeps the pieces it received in a `PieceLog` and asks it for UTC.
"""

from __future__ import annotations

import bisect
import statistics
import threading
import time
from collections import deque
from dataclasses import dataclass
from collections.abc import Callable

from edge.constants import SAMPLE_RATE

STEP_STEADY_S = 0.1  # readings of a clock step agree this well with each other

#: piece causes (log/metric label values)
CAUSES = ("start", "gap", "restart", "reopen", "overflow", "step", "drift")


@dataclass(frozen=True)
class Piece:
    start: int  # first sample index of the piece
    utc: float  # UNIX seconds (UTC) of sample ``start``
    rate: float = float(SAMPLE_RATE)  # samples per UTC second (16000 x speed for a fast replay)
    cause: str = "start"  # one of CAUSES
    fresh_grid: bool = True  # clips restart at ``start`` (the audio broke off before it)
    gap_s: float = 0.0  # UTC seconds between the previous piece's end and ``utc`` (breaks)

    def utc_of(self, index: int) -> float:
        return self.utc + (index - self.start) / self.rate

    def index_at(self, t: float) -> float:
        """The (fractional) sample index this piece puts at UTC ``t``."""
        return self.start + (t - self.utc) * self.rate


@dataclass(frozen=True)
class Placement:
    index: int  # sample index of the frame's first sample
    utc: float  # its UTC
    piece: Piece | None  # the piece this frame starts, if it starts one
    gap: int  # silence samples the consumer inserts before the frame (short gaps)


class Timeline:
    """The producer side: decides where each frame of one stream goes (see module doc)."""

    def __init__(
        self,
        sample_rate: int = SAMPLE_RATE,
        *,
        speed: float = 1.0,
        max_gap_s: float = 60.0,
        step_s: float = 1.0,
        drift_tolerance_s: float = 0.02,
        drift_readings: int = 16,
        max_ppm: float = 500.0,
        max_skew_s: float | None = 30.0,
        step_confirm_s: float = 1.0,
        late_only: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_gap_s < 0 or step_s <= 0 or drift_tolerance_s <= 0:
            raise ValueError("max_gap_s >= 0, step_s > 0 and drift_tolerance_s > 0 required")
        self.sample_rate = int(sample_rate)
        self.nominal = float(sample_rate) * (speed if speed > 0 else 1.0)
        self.max_gap_s = float(max_gap_s)
        self.step_s = float(step_s)
        self.drift_tolerance_s = float(drift_tolerance_s)
        self.max_ppm = float(max_ppm)
        self.max_skew_s = max_skew_s
        self.step_confirm_s = float(step_confirm_s)
        self.late_only = late_only  # readings are arrival times: late by load, never early
        # (index, reading, error) of the first of the frames in a row more than step_s off
        self._off: tuple[int, float, float] | None = None
        self.clock = clock
        self.next_index = 0
        self.piece: Piece | None = None
        self._errors: deque[float] = deque(maxlen=max(1, drift_readings))
        self._lock = threading.Lock()
        # counters (a source copies them into metrics)
        self.pieces = 0
        self.untrusted = 0
        self.steps = 0
        self.gap_samples = 0

    # ------------------------------------------------------------ reading the clock
    def _reading(self, n: int, capture: float | None) -> tuple[float | None, bool]:
        """The capture-time reading to use for a frame of ``n`` samples (None: predict it),
        and whether it is the source's own (False: this machine's clock stands in)."""
        if self.max_skew_s is None:
            return capture, True
        now = self.clock()
        if capture is not None and abs(capture - now) <= self.max_skew_s:
            return capture, True
        if capture is not None:
            self.untrusted += 1
        # arrival time minus the frame's duration: what this machine's clock says
        return now - n / self.nominal, False

    def utc_of(self, index: int) -> float | None:
        p = self.piece
        return None if p is None else p.utc_of(index)

    # ------------------------------------------------------------ placing frames
    def place(self, n: int, capture: float | None = None, *, lost: int = 0,
              brk: str | None = None) -> Placement:
        """Where a frame of ``n`` samples goes.

        ``capture``: the source's reading of the first sample's UTC (None: none, predict it);
        ``lost``: samples known lost just before this frame; ``brk``: the cause if continuity
        broke (``restart``, ``reopen``): the gap is then measured by capture times.
        """
        with self._lock:
            return self._place(int(n), capture, int(max(0, lost)), brk)

    def _place(self, n: int, capture: float | None, lost: int, brk: str | None) -> Placement:
        t, trusted = self._reading(n, capture)
        p = self.piece
        i = self.next_index
        if p is None:
            return self._start(i, n, t if t is not None else self.clock(), "start", True, 0.0)
        if brk is not None:
            return self._after_break(p, i, n, t, brk)
        if lost:
            if lost / p.rate > self.max_gap_s:
                u = t if t is not None else p.utc_of(i + lost)
                return self._start(i, n, u, "gap", True, u - p.utc_of(i))
            i += lost
        if t is None or not trusted:  # contiguous audio: count samples, not a stand-in clock
            return self._advance(i, n, None)
        return self._contiguous(p, i, n, t)

    def _after_break(self, p: Piece, i: int, n: int, t: float | None, brk: str) -> Placement:
        """Continuity broke: the capture times say how long the input was away."""
        predicted = p.utc_of(i)
        if t is None:
            return self._start(i, n, predicted, brk, True, 0.0)
        away = t - predicted
        if -self.step_s <= away <= self.max_gap_s:  # short: silence on the same piece
            return self._advance(i + max(0, round(away * p.rate)), n, None)
        return self._start(i, n, t, brk, True, away)

    def _contiguous(self, p: Piece, i: int, n: int, t: float) -> Placement:
        """A frame right after the last one, with a trusted reading: step or drift?"""
        err = t - p.utc_of(i)
        if abs(err) > self.step_s:
            return self._maybe_step(p, i, n, t, err)
        self._off = None
        self._errors.append(err)
        # late_only: a reading is never early, so one earlier than the piece by more than the
        # tolerance proves the piece late (its anchor was a delayed callback): correct now
        early = self.late_only and err < -self.drift_tolerance_s
        if not early and len(self._errors) < (self._errors.maxlen or 1) // 2:
            return self._advance(i, n, None)
        # late_only: the least delayed reading (delays are one-sided), else the median
        med = min(self._errors) if self.late_only else statistics.median(self._errors)
        if abs(med) <= self.drift_tolerance_s:
            return self._advance(i, n, None)
        u = p.utc_of(i) + med
        rate = p.rate
        if u - p.utc > 30.0:  # long enough to measure the device's rate
            measured = (i - p.start) / (u - p.utc)
            lim = self.nominal * self.max_ppm * 1e-6
            rate = min(max(measured, self.nominal - lim), self.nominal + lim)
        return self._start(i, n, u, "drift", False, med, rate)

    def _maybe_step(self, p: Piece, i: int, n: int, t: float, err: float) -> Placement:
        """The clock moved, not the audio? Late readings (a callback delayed by load, then the
        queued blocks in a burst) shrink frame by frame; a step holds: confirm it over
        ``step_confirm_s`` of audio with a steady error, then date it back."""
        if self._off is None or abs(err - self._off[2]) > STEP_STEADY_S:
            self._off = (i, t, err)
        if (i + n - self._off[0]) / p.rate < self.step_confirm_s:
            return self._advance(i, n, None)
        i0, t0, e0 = self._off
        self.steps += 1
        return self._start(i, n, t0, "step", False, e0, at=i0)

    def _start(self, i: int, n: int, utc: float, cause: str, fresh: bool, gap_s: float,
               rate: float | None = None, at: int | None = None) -> Placement:
        """A new piece from sample ``at`` (default ``i``, the frame's; earlier for a
        confirmed step) whose first frame is the one at ``i``."""
        p = Piece(start=i if at is None else at, utc=float(utc), rate=float(rate or self.nominal),
                  cause=cause, fresh_grid=fresh, gap_s=float(gap_s))
        self.piece = p
        self.pieces += 1
        self._errors.clear()
        self._off = None
        return self._advance(i, n, p)

    def _advance(self, i: int, n: int, piece: Piece | None) -> Placement:
        gap = i - self.next_index
        self.gap_samples += gap
        self.next_index = i + n
        assert self.piece is not None
        return Placement(i, self.piece.utc_of(i), piece, gap)


class PieceLog:
    """The consumer side: the pieces of one stream received so far, UTC by sample index.

    Thread-safe (the source's thread adds, the worker reads). Keeps at most ``max_pieces``;
    indices before the oldest kept piece use it extrapolated backwards.
    """

    def __init__(self, sample_rate: int = SAMPLE_RATE, max_pieces: int = 4096) -> None:
        self.sample_rate = sample_rate
        self._starts: list[int] = []
        self._pieces: list[Piece] = []
        self.max_pieces = max_pieces
        self._lock = threading.Lock()
        self.version = 0  # bumped on every add (readers cache by it)

    def __len__(self) -> int:
        return len(self._pieces)

    def add(self, piece: Piece) -> None:
        with self._lock:
            if self._starts and piece.start < self._starts[-1]:
                raise ValueError(f"piece at {piece.start} is older than the last one "
                                 f"({self._starts[-1]})")
            if self._starts and piece.start == self._starts[-1]:
                self._starts.pop()
                self._pieces.pop()
            self._starts.append(piece.start)
            self._pieces.append(piece)
            if len(self._pieces) > self.max_pieces:
                del self._starts[0], self._pieces[0]
            self.version += 1

    def pieces(self) -> list[Piece]:
        with self._lock:
            return list(self._pieces)

    @property
    def last(self) -> Piece | None:
        with self._lock:
            return self._pieces[-1] if self._pieces else None

    def piece_at(self, index: int) -> Piece | None:
        """The piece holding sample ``index`` (the first piece for earlier indices)."""
        with self._lock:
            if not self._pieces:
                return None
            k = bisect.bisect_right(self._starts, index) - 1
            return self._pieces[max(0, k)]

    def utc_of(self, index: int) -> float | None:
        p = self.piece_at(index)
        return None if p is None else p.utc_of(index)

    def utc_end(self, end: int) -> float | None:
        """UTC of the end of a span ``[..., end)``: the last sample's piece, extrapolated."""
        p = self.piece_at(end - 1)
        return None if p is None else p.utc_of(end)

    def fresh_after(self, index: int) -> list[Piece]:
        """Pieces that start a fresh clip grid at an index > ``index`` (oldest first)."""
        with self._lock:
            k = bisect.bisect_right(self._starts, index)
            return [p for p in self._pieces[k:] if p.fresh_grid]
