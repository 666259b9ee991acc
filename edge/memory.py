"""Per-stream memory of clip encodings (the last 5 minutes by default).

Each entry is one encoded clip: its AF-CLAP tokens (64, D), its span on the sample clock
and in UTC, and its gate reading. `StreamMemory.build` stacks the most recent entries into
exactly the ``(L, 64, D)`` tokens and ``(L,)`` window mask that `AF2.memory` takes, so the
streaming memory is, bit for bit, what the offline path computes from the same clips
(the encoder is batch-invariant and stacking copies values).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from .gate import GateReading


@dataclass(frozen=True)
class ClipEncoding:
    index: int  # clip number on the stream
    start: int  # sample index (inclusive)
    end: int  # sample index (exclusive)
    t_start: float | None  # UNIX seconds (UTC)
    t_end: float | None
    tokens: Any  # torch.Tensor (64, D)
    valid: bool  # False when the clip is (almost) only gap silence: masked out of queries
    reading: GateReading | None = None


@dataclass(frozen=True)
class MemoryView:
    tokens: Any  # torch.Tensor (L, 64, D)
    mask: Any  # torch.Tensor (L,)
    clips: tuple[ClipEncoding, ...]

    @property
    def start(self) -> int:
        return self.clips[0].start

    @property
    def end(self) -> int:
        return self.clips[-1].end


class StreamMemory:
    def __init__(self, max_clips: int = 30) -> None:
        self.max_clips = int(max_clips)
        self._clips: deque[ClipEncoding] = deque(maxlen=self.max_clips)

    def __len__(self) -> int:
        return len(self._clips)

    def add(self, clip: ClipEncoding) -> None:
        if self._clips and clip.index <= self._clips[-1].index:
            raise ValueError(f"clip {clip.index} is not newer than {self._clips[-1].index}")
        self._clips.append(clip)

    def clips(self, upto: int | None = None, n: int | None = None) -> list[ClipEncoding]:
        """The last ``n`` clips with index <= ``upto`` (oldest first)."""
        out = [c for c in self._clips if upto is None or c.index <= upto]
        return out[-n:] if n else out

    def build(self, upto: int | None = None, n: int | None = None, mask_dtype: Any = None
              ) -> MemoryView | None:
        import torch

        sel = self.clips(upto, n)
        if not sel or not any(c.valid for c in sel):
            return None
        tokens = torch.stack([c.tokens for c in sel])
        mask = torch.tensor([1.0 if c.valid else 0.0 for c in sel],
                            dtype=mask_dtype or torch.float32)
        return MemoryView(tokens, mask, tuple(sel))
