"""Per-stream memory of clip encodings, keyed by clip slot (the last 5 minutes by default).

Each entry is one encoded clip: its AF-CLAP tokens (64, D), its span on the sample clock
and in UTC, and its gate reading, stored under its slot number `k` (`edge.windows`). A window
is the slot range ``k-n+1..k`` (clamped to the stream's first slot), never "the last n
entries": a slot whose clip was dropped, lost to a gap, or is all gap silence holds no
encoding and is **masked** through AF2's window mask, with zero tokens in its place.
`StreamMemory.build` stacks the window into exactly the ``(L, 64, D)`` tokens and ``(L,)``
mask that `AF2.memory` takes, so the streaming memory is, bit for bit, what the offline path
computes from the same clips with the same mask (the encoder is batch-invariant and stacking
copies values).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .gate import GateReading

if TYPE_CHECKING:  # torch only once clips are encoded
    import torch


@dataclass(frozen=True)
class ClipEncoding:
    index: int  # clip slot on the stream
    start: int  # sample index (inclusive)
    end: int  # sample index (exclusive)
    t_start: float | None  # UNIX seconds (UTC)
    t_end: float | None
    tokens: torch.Tensor  # (64, D)
    valid: bool  # False when the clip is (almost) only gap silence: masked out of queries
    reading: GateReading | None = None
    held_end: int | None = None  # end of its real samples when cut (a break, a stalled tail)


@dataclass(frozen=True)
class MemoryView:
    tokens: torch.Tensor  # (L, 64, D): zeros in masked slots that hold no clip
    mask: torch.Tensor  # (L,): 1 for a slot with a real clip, 0 otherwise
    clips: tuple[ClipEncoding, ...]  # the clips present in the window (oldest first)
    first: int = 0  # slot of tokens[0]; the window is slots first..first+L-1

    @property
    def slots(self) -> range:
        return range(self.first, self.first + int(self.mask.shape[0]))

    @property
    def start(self) -> int:
        """First sample of the first real clip in the window."""
        return next(c for c in self.clips if c.valid).start

    @property
    def end(self) -> int:
        return self.clips[-1].end

    @property
    def held_end(self) -> int:
        """End of the window's real samples (its evidence audio)."""
        last = self.clips[-1]
        return last.end if last.held_end is None else last.held_end

    @property
    def t_start(self) -> float | None:
        return next(c for c in self.clips if c.valid).t_start

    @property
    def t_end(self) -> float | None:
        return self.clips[-1].t_end


class StreamMemory:
    """Encodings of the last ``max_clips`` slots (not entries: gaps age out too)."""

    def __init__(self, max_clips: int = 30) -> None:
        self.max_clips = int(max_clips)
        self._clips: deque[ClipEncoding] = deque()
        self.first_slot: int | None = None  # the stream's first slot (windows start no earlier)

    def __len__(self) -> int:
        return len(self._clips)

    def start(self, slot: int) -> None:
        """Declare the stream's first slot (windows are clamped to it)."""
        if self.first_slot is None:
            self.first_slot = slot

    def add(self, clip: ClipEncoding) -> None:
        if self._clips and clip.index <= self._clips[-1].index:
            raise ValueError(f"clip {clip.index} is not newer than {self._clips[-1].index}")
        self.start(clip.index)
        self._clips.append(clip)
        while self._clips[0].index <= clip.index - self.max_clips:
            self._clips.popleft()

    def clips(self, upto: int | None = None, n: int | None = None) -> list[ClipEncoding]:
        """The clips held in slots ``upto-n+1..upto`` (oldest first; all by default)."""
        out = [c for c in self._clips if upto is None or c.index <= upto]
        if n and upto is not None:
            out = [c for c in out if c.index > upto - n]
        elif n:
            out = out[-n:]
        return out

    def build(self, upto: int, n: int, mask_dtype: torch.dtype | None = None) -> MemoryView | None:
        """Window of slots ``upto-n+1..upto`` (from the first slot on); None if no slot in it
        holds real audio."""
        import torch

        n = min(n, self.max_clips)
        first = max(upto - n + 1, self.first_slot if self.first_slot is not None else upto)
        sel = self.clips(upto, upto - first + 1)
        if not any(c.valid for c in sel):
            return None
        by_slot = {c.index: c for c in sel}
        blank = torch.zeros_like(sel[0].tokens)
        tokens = torch.stack([by_slot[k].tokens if k in by_slot else blank
                              for k in range(first, upto + 1)])
        mask = torch.tensor([1.0 if k in by_slot and by_slot[k].valid else 0.0
                             for k in range(first, upto + 1)], dtype=mask_dtype or torch.float32)
        return MemoryView(tokens, mask, tuple(sel), first)
