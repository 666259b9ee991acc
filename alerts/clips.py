"""Evidence clips: the audio span of an alert as FLAC, plus a spectrogram PNG.

Files live under ``<data_dir>/clips/<YYYY-MM-DD>/<alert_id>.flac|.png``; the alert
carries their paths relative to the clips directory. Retention is by disk usage: after
each write the oldest files are deleted until the directory holds at most
``ClipsConfig.max_bytes``.

The PNG is written with the standard library (``zlib`` + ``struct``): a spectrogram is
a plain RGB raster, and an 8-bit truecolour PNG is ~30 lines of code, which is cheaper
for an edge box than pulling matplotlib (and its font cache) or Pillow into the daemon.
"""

from __future__ import annotations

import struct
import zlib
from datetime import datetime
from pathlib import Path

import numpy as np
import soundfile as sf
import structlog

from alerts.config import ClipsConfig

log = structlog.get_logger(__name__)

# Viridis, sampled at 9 points; linearly interpolated in between.
_VIRIDIS = np.array(
    [
        [68, 1, 84], [71, 44, 122], [59, 81, 139], [44, 113, 142], [33, 144, 141],
        [39, 173, 129], [92, 200, 99], [170, 220, 50], [253, 231, 37],
    ],
    dtype=np.float64,
)


def write_png(path: Path, rgb: np.ndarray) -> None:
    """Write an (H, W, 3) uint8 array as an 8-bit truecolour PNG."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    h, w, c = rgb.shape
    if c != 3:
        raise ValueError("expected an RGB array")
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rgb.reshape(h, w * 3)], axis=1).tobytes()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    Path(path).write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")
    )


def spectrogram_rgb(mono: np.ndarray, n_fft: int = 512, max_width: int = 1200, floor_db: float = -90.0) -> np.ndarray:
    """Log-magnitude STFT as an RGB image: time left to right, low frequencies at the bottom."""
    x = np.asarray(mono, dtype=np.float64)
    if x.size < n_fft:
        x = np.pad(x, (0, n_fft - x.size))
    hop = max(n_fft // 4, int(np.ceil((x.size - n_fft) / max(max_width - 1, 1))) or 1)
    n_frames = 1 + (x.size - n_fft) // hop
    idx = np.arange(n_fft)[None, :] + hop * np.arange(n_frames)[:, None]
    frames = x[idx] * np.hanning(n_fft)[None, :]
    mag = np.abs(np.fft.rfft(frames, axis=1)) / (n_fft / 4)
    db = 20 * np.log10(np.maximum(mag, 1e-12))
    v = np.clip((db - floor_db) / -floor_db, 0.0, 1.0).T[::-1]  # (freq, time), high freq on top
    pos = v * (len(_VIRIDIS) - 1)
    lo = np.floor(pos).astype(int).clip(0, len(_VIRIDIS) - 2)
    frac = (pos - lo)[..., None]
    rgb = _VIRIDIS[lo] * (1 - frac) + _VIRIDIS[lo + 1] * frac
    return rgb.round().astype(np.uint8)


class ClipStore:
    def __init__(self, root: Path, config: ClipsConfig) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._config = config
        self._files: dict[Path, tuple[float, int]] = {}
        for p in self.root.rglob("*"):
            if p.is_file() and p.suffix in (".flac", ".png"):
                st = p.stat()
                self._files[p] = (st.st_mtime, st.st_size)

    @property
    def total_bytes(self) -> int:
        return sum(s for _, s in self._files.values())

    def save(self, alert_id: str, audio: np.ndarray, sample_rate: int, when: datetime) -> tuple[str, str | None]:
        """Write ``<alert_id>.flac`` (+ ``.png``); returns paths relative to the clips root."""
        a = np.asarray(audio)
        if a.ndim not in (1, 2) or a.shape[0] == 0:
            raise ValueError(f"audio must be a non-empty (n,) or (n, channels) array, got shape {a.shape}")
        if a.dtype.kind == "f":
            a = np.clip(a, -1.0, 1.0).astype(np.float32)
        day = self.root / when.strftime("%Y-%m-%d")
        day.mkdir(parents=True, exist_ok=True)
        flac = day / f"{alert_id}.flac"
        sf.write(str(flac), a, int(sample_rate), format="FLAC", subtype="PCM_16")
        self._track(flac)
        png_rel = None
        if self._config.spectrogram:
            # scale integers to [-1, 1] before the channel mean turns them into floats
            x = a / float(np.iinfo(a.dtype).max) if a.dtype.kind in "iu" else a
            mono = x.mean(axis=1) if x.ndim == 2 else x
            png = day / f"{alert_id}.png"
            write_png(png, spectrogram_rgb(mono, self._config.n_fft, self._config.max_width))
            self._track(png)
            png_rel = str(png.relative_to(self.root))
        self.enforce(keep={flac, day / f"{alert_id}.png"})
        return str(flac.relative_to(self.root)), png_rel

    def _track(self, p: Path) -> None:
        st = p.stat()
        self._files[p] = (st.st_mtime, st.st_size)

    def enforce(self, keep: set[Path] = frozenset()) -> int:  # type: ignore[assignment]
        """Delete oldest files until the total is within ``max_bytes``; returns files deleted."""
        total = self.total_bytes
        deleted = 0
        for p, (_, size) in sorted(self._files.items(), key=lambda kv: (kv[1][0], str(kv[0]))):
            if total <= self._config.max_bytes:
                break
            if p in keep:
                continue
            try:
                p.unlink()
            except FileNotFoundError:
                pass
            del self._files[p]
            total -= size
            deleted += 1
            try:
                p.parent.rmdir()  # only succeeds once the day directory is empty
            except OSError:
                pass
        if deleted:
            log.info("clip retention deleted files", files=deleted, total_bytes=total)
        return deleted
