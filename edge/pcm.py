"""Sample-level steps shared by file preparation and streaming, with numpy only (no torch), so
the model-free path of the daemon runs without the model runtime."""

from __future__ import annotations

import numpy as np


def int16_roundtrip(x: np.ndarray) -> np.ndarray:
    """clip to [-1, 1], truncate to int16, back to float32: the official quantisation step."""
    q = (np.clip(x, -1.0, 1.0) * 32767.0).astype(np.int16)
    return (q / 32767.0).astype(np.float32)


def peak_normalise(x: np.ndarray) -> np.ndarray:
    """Official per-file rule: a non-negative signal is mapped to [-1, 1]; otherwise divide by
    the peak. All-zero input stays silence (the official code would divide by zero: NaN)."""
    hi, lo = float(x.max()), float(x.min())
    if lo >= 0:
        if hi == 0.0:
            return np.zeros_like(x)
        return 2 * x / abs(hi) - 1.0
    return x / max(abs(hi), abs(lo))
