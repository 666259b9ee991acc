"""The model-free gate: level and spectral novelty per clip.

This is the part of the pipeline that needs no weights. For every clip (on the raw audio,
before the loudness policy) it computes

- ``rms`` and ``level_dbfs`` = 20*log10(rms) (floored at -120 dBFS), and ``peak_dbfs``;
- ``novelty``: how far the clip's spectrum is from a running baseline. The clip's log-mel
  spectrogram (64 bands, 50-8000 Hz) is averaged over 0.25-s segments; each segment's distance
  to the baseline is the RMS over bands of the z-score ``(segment - mean) / std``; the clip's
  novelty is the largest segment distance (so a knock that lasts a second is not averaged
  away over ten). The baseline (per-band mean and std of segments) is learned over the first
  ``warmup_clips`` clips (novelty is None meanwhile) and then follows slowly, with an
  exponential moving average over clips whose novelty stays below ``adapt_below``, so a
  persistent change becomes the new normal while a recurring anomaly keeps standing out.

The gate is deterministic and cheap (one 1024-point FFT every 32 ms of audio).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .constants import SAMPLE_RATE

LEVEL_FLOOR_DBFS = -120.0


def dbfs(x: float) -> float:
    return max(LEVEL_FLOOR_DBFS, 20.0 * math.log10(max(float(x), 1e-12)))


def mel_filterbank(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """HTK-scale triangular filters, (n_mels, n_fft//2+1)."""
    def hz2mel(f):
        return 2595.0 * np.log10(1.0 + np.asarray(f) / 700.0)

    def mel2hz(m):
        return 700.0 * (10.0 ** (np.asarray(m) / 2595.0) - 1.0)

    freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
    pts = mel2hz(np.linspace(hz2mel(fmin), hz2mel(fmax), n_mels + 2))
    fb = np.zeros((n_mels, freqs.size), dtype=np.float64)
    for i in range(n_mels):
        lo, c, hi = pts[i], pts[i + 1], pts[i + 2]
        up = (freqs - lo) / max(c - lo, 1e-9)
        down = (hi - freqs) / max(hi - c, 1e-9)
        fb[i] = np.maximum(0.0, np.minimum(up, down))
    return fb.astype(np.float32)


@dataclass(frozen=True)
class GateReading:
    rms: float
    level_dbfs: float
    peak_dbfs: float
    novelty: float | None  # None during warm-up

    def values(self) -> dict[str, float | None]:
        """The names monitor triggers can refer to."""
        return {"rms": self.rms, "level_dbfs": self.level_dbfs, "peak_dbfs": self.peak_dbfs,
                "novelty": self.novelty}


class Gate:
    def __init__(
        self,
        sample_rate: int = SAMPLE_RATE,
        warmup_clips: int = 3,
        segment_s: float = 0.25,
        adapt: float = 0.05,
        adapt_below: float = 3.0,
        min_std_db: float = 1.5,
        n_fft: int = 1024,
        hop: int = 512,
        n_mels: int = 64,
    ) -> None:
        self.sr = sample_rate
        self.warmup_clips = int(warmup_clips)
        self.adapt = float(adapt)
        self.adapt_below = float(adapt_below)
        self.min_std = float(min_std_db)
        self.n_fft, self.hop = n_fft, hop
        self.seg_frames = max(1, round(segment_s * sample_rate / hop))
        self._fb = mel_filterbank(sample_rate, n_fft, n_mels, 50.0, min(8000.0, sample_rate / 2))
        self._win = np.hanning(n_fft + 1)[:-1].astype(np.float32)
        self._warm: list[np.ndarray] = []
        self.mean: np.ndarray | None = None
        self.var: np.ndarray | None = None
        self.clips_seen = 0

    @property
    def warmed_up(self) -> bool:
        return self.mean is not None

    def log_mel(self, x: np.ndarray) -> np.ndarray:
        """(frames, n_mels) log-mel power in dB."""
        x = np.asarray(x, dtype=np.float32)
        if x.shape[0] < self.n_fft:
            x = np.pad(x, (0, self.n_fft - x.shape[0]))
        n = 1 + (x.shape[0] - self.n_fft) // self.hop
        idx = np.arange(self.n_fft)[None, :] + self.hop * np.arange(n)[:, None]
        spec = np.abs(np.fft.rfft(x[idx] * self._win, axis=1)) ** 2
        return 10.0 * np.log10(np.maximum(spec.astype(np.float32) @ self._fb.T, 1e-10))

    def segments(self, x: np.ndarray) -> np.ndarray:
        lm = self.log_mel(x)
        n = max(1, lm.shape[0] // self.seg_frames)
        lm = lm[: n * self.seg_frames] if lm.shape[0] >= self.seg_frames else lm
        return lm.reshape(n, -1, lm.shape[1]).mean(axis=1)

    def score(self, segs: np.ndarray) -> float:
        assert self.mean is not None and self.var is not None
        std = np.maximum(np.sqrt(self.var), self.min_std)
        z = (segs - self.mean) / std
        return float(np.sqrt((z ** 2).mean(axis=1)).max())

    def process(self, x: np.ndarray) -> GateReading:
        x = np.asarray(x, dtype=np.float32)
        rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0
        peak = float(np.max(np.abs(x))) if x.size else 0.0
        segs = self.segments(x)
        self.clips_seen += 1
        novelty: float | None = None
        if self.mean is None:
            self._warm.append(segs)
            if len(self._warm) >= self.warmup_clips:
                allsegs = np.concatenate(self._warm)
                self.mean = allsegs.mean(axis=0)
                self.var = allsegs.var(axis=0)
                self._warm.clear()
        else:
            novelty = self.score(segs)
            if novelty < self.adapt_below:
                assert self.mean is not None and self.var is not None  # set by the warm-up above
                a = self.adapt
                m = segs.mean(axis=0)
                v = segs.var(axis=0) + (m - self.mean) ** 2
                self.mean = (1 - a) * self.mean + a * m
                self.var = (1 - a) * self.var + a * v
        return GateReading(rms=rms, level_dbfs=dbfs(rms), peak_dbfs=dbfs(peak), novelty=novelty)
