"""Clip scheduling on the stream's timeline: the collection stage's clip grid.

AF-CLAP encodes 10-s clips (160000 samples at 16 kHz). Clips are numbered by **slot**: clip
``k`` of a grid that starts at sample ``g`` with slot ``k0`` covers
``[g + (k-k0)*hop, g + (k-k0)*hop + clip_len)``; with ``hop == clip_len`` the clips tile the
stream, with ``hop < clip_len`` they overlap. A clip becomes ready the moment its last sample
is in the ring, and `ClipScheduler.ready` hands out each slot at most once.

A timeline piece with a fresh grid (`streams.timeline.Piece.fresh_grid`: the input broke off
for longer than the gap bound) starts a new grid at its first sample. The slot numbers go on
counting wall time: the slots the gap took are skipped in O(1) (``gap_s / hop``, however long
the gap), so a window of slots ``k-n+1..k`` spans the wall time it claims and the skipped
slots are masked. A clip cut by the break, or the last clip of a live stream whose audio has
stopped arriving, is handed out with ``data_end``: its samples from there on are silence. A
clip cut by a break with less than ``min_partial`` of audio is not handed out, and counted
(`ClipScheduler.take_short`).

The monitors' analysis window (30 s by default, up to the memory's 5 minutes) is a range of
slots in `edge.memory.StreamMemory`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from edge.pcm import int16_roundtrip
from streams.timeline import Piece

from .constants import CLIP_SAMPLES, SAMPLE_RATE as SR


@dataclass(frozen=True)
class ClipSpec:
    stream: str
    index: int  # slot k on this stream
    start: int  # absolute sample index (inclusive)
    end: int  # absolute sample index (exclusive)
    data_end: int | None = None  # samples from here to ``end`` are not audio (a break, a tail)

    @property
    def held_end(self) -> int:
        """End of the part of the clip that is real samples in the ring."""
        return self.end if self.data_end is None else min(self.end, self.data_end)


def clips_for(span_s: float, clip_s: float, hop_s: float) -> int:
    """Number of clips (slots) whose spans cover ``span_s`` seconds: never fewer seconds than
    asked, whatever the rounding mode (35 s at 10-s clips and hop is 4 clips, 40 s)."""
    return max(1, math.ceil((span_s - clip_s) / hop_s - 1e-9) + 1)


class ClipScheduler:
    def __init__(self, stream: str, clip_len: int = CLIP_SAMPLES, hop: int | None = None,
                 min_partial: int = 2 * SR) -> None:
        self.stream = stream
        self.clip_len = int(clip_len)
        self.hop = int(hop or clip_len)
        if self.clip_len <= 0 or self.hop <= 0:
            raise ValueError("clip length and hop must be positive")
        self.min_partial = int(min_partial)  # a cut clip shorter than this is not handed out
        self.origin: int | None = None  # sample index of the current grid's slot ``grid_k0``
        self.grid_k0 = 0
        self.next_index = 0
        self.first_index = 0  # the stream's first slot
        self.skipped = 0  # slots skipped for gaps
        # slots cut by a break with less than min_partial of audio: never handed out, so the
        # collection stage counts them (fe_clips_dropped{reason="too_short"}); see take_short
        self._short = 0

    def bounds(self, k: int) -> tuple[int, int]:
        start = (self.origin or 0) + (k - self.grid_k0) * self.hop
        return start, start + self.clip_len

    def ready(self, origin: int | None, write_pos: int, breaks: Iterable[Piece] = (),
              flush_to: int | None = None) -> list[ClipSpec]:
        """Slots that have become complete since the last call (each at most once).

        ``breaks``: fresh-grid pieces of the stream (any order, already applied ones are
        ignored); ``flush_to``: hand out the clip in progress, cut at ``write_pos``, if it
        should have ended before this sample index (live audio stopped arriving)."""
        if origin is None:
            return []
        if self.origin is None:
            self.origin = origin
        pending = sorted((p for p in breaks if p.start > self.origin), key=lambda p: p.start)
        out: list[ClipSpec] = []
        while True:
            s, e = self.bounds(self.next_index)
            b = pending[0] if pending else None
            if b is not None and b.start <= s:
                self._new_grid(b, s)
                pending.pop(0)
                continue
            cut = b.start if b is not None and e > b.start else None
            if cut is not None and cut <= write_pos:  # a clip cut by the break
                if cut - s >= self.min_partial:
                    out.append(ClipSpec(self.stream, self.next_index, s, e, data_end=cut))
                elif cut > s:  # some audio, too little to encode: a loss to count
                    self._short += 1
                self.next_index += 1
                continue
            if e <= write_pos:
                out.append(ClipSpec(self.stream, self.next_index, s, e))
                self.next_index += 1
                continue
            if flush_to is not None and e <= flush_to and write_pos - s >= self.min_partial:
                out.append(ClipSpec(self.stream, self.next_index, s, e, data_end=write_pos))
                self.next_index += 1
                continue
            return out

    def take_short(self) -> int:
        """Slots cut too short to hand out since the last call."""
        n, self._short = self._short, 0
        return n

    def _new_grid(self, b: Piece, s: int) -> None:
        """Start the grid at ``b``; the slots its gap took are skipped (O(1))."""
        ahead = (s - b.start) / SR  # the old grid's next slot already lies this far past it
        skip = max(0, math.floor((b.gap_s - ahead) / (self.hop / SR) + 1e-9))
        self.skipped += skip
        self.grid_k0 = self.next_index + skip
        self.next_index = self.grid_k0
        self.origin = b.start

    def partial_end(self, write_pos: int) -> int | None:
        """End index of the clip in progress (to flush a final partial clip), or None."""
        if self.origin is None:
            return None
        s, e = self.bounds(self.next_index)
        return e if write_pos > s else None


# ------------------------------------------------------------------ loudness policy
def loudness_gain(x: np.ndarray, policy: str = "peak", max_gain_db: float = 24.0,
                  gain_db: float = 0.0) -> float:
    """The linear gain the streaming loudness policy applies to one clip.

    - ``peak``: per-clip peak normalisation (the official per-file rule applied per clip),
      ``gain = 1/peak`` but at most ``max_gain_db``, so near-silence is not blown up to full
      scale noise and a quiet clip stays quieter than a loud one.
    - ``fixed``: a calibrated gain ``gain_db`` for all clips (then clipped to [-1, 1]).
    - ``none``: the samples as captured.
    """
    if policy == "none":
        return 1.0
    if policy == "fixed":
        return float(10.0 ** (gain_db / 20.0))
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    limit = float(10.0 ** (max_gain_db / 20.0))
    if peak <= 0.0:
        return limit
    return min(1.0 / peak, limit)


def prepare_clip(x: np.ndarray, policy: str = "peak", max_gain_db: float = 24.0,
                 gain_db: float = 0.0) -> np.ndarray:
    """Raw 160000-sample clip -> the encoder's input: loudness policy, then int16 round trip."""
    x = np.asarray(x, dtype=np.float32)
    g = loudness_gain(x, policy, max_gain_db, gain_db)
    return int16_roundtrip(x.astype(np.float64) * g)
