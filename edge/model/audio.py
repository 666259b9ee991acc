"""The official AF2 file preparation (peak-normalise a whole file, cut 10-s windows).

Streaming uses its own loudness policy (see docs/STREAMING.md) but the same `int16_roundtrip`.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from edge.constants import MAX_CLIPS
from edge.pcm import int16_roundtrip, peak_normalise

from .config import CLIP_SAMPLES, SAMPLE_RATE

__all__ = ["int16_roundtrip", "int16_roundtrip_torch", "peak_normalise", "prepare_file", "read_audio"]


def int16_roundtrip_torch(x: torch.Tensor) -> torch.Tensor:
    """The same step as the official encoder applies it again to every clip (torch, float32)."""
    return (torch.clamp(x, -1.0, 1.0) * 32767.0).to(torch.int16) / 32767.0


def read_audio(path: str | Path, max_windows: int) -> np.ndarray:
    """First `max_windows * 10` s of a file as float64 mono at 16 kHz, peak-normalised."""
    import soundfile as sf  # only file queries read files (a GPU box may not have libsndfile)

    path = Path(path)
    try:
        f = sf.SoundFile(str(path))
    except (sf.LibsndfileError, RuntimeError) as e:
        raise ValueError(f"{path}: cannot read audio ({e})") from e
    with f:
        sr, channels = f.samplerate, f.channels
        frames = min(int(max_windows * 10.0 * sr), f.frames)
        data = f.read(frames)  # float64, (n,) or (n, channels)
    if data.size == 0:
        raise ValueError(f"{path}: file holds no audio samples")
    if not np.isfinite(data).all():
        raise ValueError(f"{path}: audio holds NaN or infinite samples")
    if data.max() > 1 or data.min() < -1:
        data = data / max(abs(data.max()), abs(data.min()))
    mono = data if channels == 1 else data[:, 0]
    if sr != SAMPLE_RATE:
        import soxr  # librosa's default resampler ("soxr_hq")

        mono = soxr.resample(mono, sr, SAMPLE_RATE, quality="HQ")
    return peak_normalise(np.asarray(mono).reshape(-1))


def num_windows_for(n_samples: int, max_windows: int) -> int:
    if n_samples <= CLIP_SAMPLES:
        return 1
    return min(max_windows, 1 + math.ceil((n_samples - CLIP_SAMPLES) / CLIP_SAMPLES))


def prepare_file(path: str | Path, max_windows: int = MAX_CLIPS) -> tuple[torch.Tensor, torch.Tensor]:
    """-> clips (L, 160000) float32, window mask (L,) of ones. The official `load_audio`."""
    if max_windows < 1:
        raise ValueError(f"max_windows must be >= 1, got {max_windows}")
    x = read_audio(path, max_windows)
    L = num_windows_for(len(x), max_windows)
    full = L * CLIP_SAMPLES
    x = np.pad(x, (0, full - len(x))) if full > len(x) else x[:full]
    clips = torch.from_numpy(int16_roundtrip(x)).reshape(L, CLIP_SAMPLES)
    return clips, torch.ones(L)
