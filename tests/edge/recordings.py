"""Recordings the daemon tests play through the pipeline (written as 16-kHz PCM WAV files)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf


def recording(path: Path, seconds: float = 60, loud: tuple[float, float] = (30, 40)) -> Path:
    """Quiet noise with a loud 1 kHz tone over ``loud`` (seconds): one gate alert."""
    rng = np.random.default_rng(0)
    x = (0.01 * rng.standard_normal(int(seconds * 16000))).astype(np.float32)
    a, b = (int(v * 16000) for v in loud)
    x[a:b] += 0.5 * np.sin(np.arange(b - a) * 2 * np.pi * 1000 / 16000).astype(np.float32)
    sf.write(path, x, 16000, subtype="PCM_16")
    return path
