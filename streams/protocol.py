"""The flamingo-edge audio frame, version 1 (see docs/PROTOCOL.md).

One MQTT message on ``<prefix>/audio/<stream_id>`` carries one frame: a fixed 32-byte
little-endian header followed by raw interleaved PCM. No base64, no JSON.

    offset size type    field
    0      4    bytes   magic  b"FEAF"
    4      1    uint8   version (1)
    5      1    uint8   sample format (1 = int16, 2 = float32)
    6      1    uint8   channels (1..8)
    7      1    uint8   flags (reserved, must be 0)
    8      4    uint32  sample rate (Hz, one of SAMPLE_RATES)
    12     4    uint32  sequence number (wraps at 2**32)
    16     8    int64   capture time of the first sample, ns since the UNIX epoch (UTC)
    24     4    uint32  frame count (samples per channel)
    28     4    uint32  reserved, must be 0
    32     ...          PCM, interleaved, little-endian

`decode_frame` validates everything before it touches the payload and raises `FrameError`
with a short machine-readable ``reason`` that sources use as a metric label.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

MAGIC = b"FEAF"
VERSION = 1
HEADER = struct.Struct("<4sBBBBIIqII")
HEADER_SIZE = HEADER.size  # 32
assert HEADER_SIZE == 32

FORMAT_INT16 = 1
FORMAT_FLOAT32 = 2
FORMATS: dict[int, np.dtype] = {FORMAT_INT16: np.dtype("<i2"), FORMAT_FLOAT32: np.dtype("<f4")}
FORMAT_NAMES = {"int16": FORMAT_INT16, "float32": FORMAT_FLOAT32}
SAMPLE_RATES = frozenset({8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000})
MAX_CHANNELS = 8
MAX_FRAME_BYTES = 1 << 20  # 1 MiB per message
MAX_FRAME_SECONDS = 10.0

#: every reason `decode_frame` can reject with (metric label values)
REASONS = (
    "too_large", "too_short", "bad_magic", "bad_version", "bad_format", "bad_channels",
    "bad_flags", "bad_rate", "empty", "too_long", "length_mismatch", "non_finite",
)


class FrameError(ValueError):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True)
class AudioFrame:
    """A decoded frame: PCM as float32 in [-1, 1], shape (frames, channels)."""

    sample_rate: int
    seq: int
    capture_time_ns: int
    pcm: np.ndarray  # (frames, channels) float32
    sample_format: int = FORMAT_INT16

    @property
    def frames(self) -> int:
        return int(self.pcm.shape[0])

    @property
    def channels(self) -> int:
        return int(self.pcm.shape[1])

    @property
    def capture_time(self) -> float:
        return self.capture_time_ns / 1e9


def encode_frame(
    pcm: np.ndarray,
    sample_rate: int,
    seq: int,
    capture_time_ns: int,
    sample_format: int | str = FORMAT_INT16,
) -> bytes:
    """Encode float PCM in [-1, 1] (shape (frames,) or (frames, channels)) as one frame."""
    if isinstance(sample_format, str):
        sample_format = FORMAT_NAMES[sample_format]
    x = np.asarray(pcm, dtype=np.float32)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or not 1 <= x.shape[1] <= MAX_CHANNELS:
        raise ValueError(f"pcm must be (frames,) or (frames, 1..{MAX_CHANNELS}), got {x.shape}")
    if sample_format == FORMAT_INT16:
        payload = np.round(np.clip(x, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()
    elif sample_format == FORMAT_FLOAT32:
        payload = x.astype("<f4").tobytes()
    else:
        raise ValueError(f"unknown sample format {sample_format}")
    header = HEADER.pack(
        MAGIC, VERSION, sample_format, x.shape[1], 0, int(sample_rate), seq & 0xFFFFFFFF,
        int(capture_time_ns), x.shape[0], 0,
    )
    return header + payload


def decode_frame(
    data: bytes | bytearray | memoryview,
    *,
    max_bytes: int = MAX_FRAME_BYTES,
    sample_rates: frozenset[int] = SAMPLE_RATES,
) -> AudioFrame:
    """Validate and decode one frame; raises `FrameError` (never anything else) on bad input."""
    n = len(data)
    if n > max_bytes:
        raise FrameError("too_large", f"{n} bytes > {max_bytes}")
    if n < HEADER_SIZE:
        raise FrameError("too_short", f"{n} bytes < header {HEADER_SIZE}")
    magic, version, fmt, channels, flags, rate, seq, t_ns, count, reserved = HEADER.unpack_from(
        data, 0
    )
    if magic != MAGIC:
        raise FrameError("bad_magic")
    if version != VERSION:
        raise FrameError("bad_version", str(version))
    if fmt not in FORMATS:
        raise FrameError("bad_format", str(fmt))
    if not 1 <= channels <= MAX_CHANNELS:
        raise FrameError("bad_channels", str(channels))
    if flags != 0 or reserved != 0:
        raise FrameError("bad_flags")
    if rate not in sample_rates:
        raise FrameError("bad_rate", str(rate))
    if count == 0:
        raise FrameError("empty")
    if count > MAX_FRAME_SECONDS * rate:
        raise FrameError("too_long", f"{count} frames at {rate} Hz")
    dtype = FORMATS[fmt]
    expected = HEADER_SIZE + count * channels * dtype.itemsize
    if n != expected:
        raise FrameError("length_mismatch", f"{n} bytes, header says {expected}")
    raw = np.frombuffer(data, dtype=dtype, count=count * channels, offset=HEADER_SIZE)
    if fmt == FORMAT_INT16:
        pcm = np.maximum(raw.astype(np.float32) / np.float32(32767.0), np.float32(-1.0))
    else:
        if not np.isfinite(raw).all():
            raise FrameError("non_finite")
        pcm = np.clip(raw.astype(np.float32), -1.0, 1.0)
    return AudioFrame(
        sample_rate=rate, seq=seq, capture_time_ns=t_ns, pcm=pcm.reshape(count, channels),
        sample_format=fmt,
    )
