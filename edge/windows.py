"""Clip scheduling on the sample clock.

AF-CLAP encodes 10-s clips (160000 samples at 16 kHz). Clip ``k`` of a stream covers
``[origin + k*hop, origin + k*hop + clip_len)``; with ``hop == clip_len`` the clips tile the
stream, with ``hop < clip_len`` they overlap. A clip becomes ready the moment its last sample
is in the ring, and `ClipScheduler.ready` hands out each clip index exactly once.
The monitors' analysis window (30 s by default, up to the memory's 5 minutes) is a run of the
most recent clips in `edge.memory.StreamMemory`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge.pcm import int16_roundtrip

CLIP_SAMPLES = 160000


@dataclass(frozen=True)
class ClipSpec:
    stream: str
    index: int  # clip number k on this stream
    start: int  # absolute sample index (inclusive)
    end: int  # absolute sample index (exclusive)


class ClipScheduler:
    def __init__(self, stream: str, clip_len: int = CLIP_SAMPLES, hop: int | None = None) -> None:
        self.stream = stream
        self.clip_len = int(clip_len)
        self.hop = int(hop or clip_len)
        if self.clip_len <= 0 or self.hop <= 0:
            raise ValueError("clip length and hop must be positive")
        self.origin: int | None = None
        self.next_index = 0

    def bounds(self, k: int) -> tuple[int, int]:
        start = (self.origin or 0) + k * self.hop
        return start, start + self.clip_len

    def ready(self, origin: int | None, write_pos: int) -> list[ClipSpec]:
        """Clips that have become complete since the last call (each index exactly once)."""
        if origin is None:
            return []
        if self.origin is None:
            self.origin = origin
        out = []
        while True:
            s, e = self.bounds(self.next_index)
            if e > write_pos:
                break
            out.append(ClipSpec(self.stream, self.next_index, s, e))
            self.next_index += 1
        return out

    def partial_end(self, write_pos: int) -> int | None:
        """End index of the clip in progress (to pad a final partial clip), or None."""
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
