"""File source: WAV/FLAC/OGG (anything libsndfile reads) played as a stream.

Pacing: ``speed=1`` is real time, ``speed=N`` N times real time, ``speed=0`` as fast as the
consumer takes it. The stream's timeline starts at ``start_time`` (default: the moment
playback starts). A paced file is stamped with the wall time at which it is **heard**: at
``speed=N`` its one timeline piece runs at N x 16000 samples per second, so a clip heard
from 12:00:00 to 12:00:01.25 at 8x says so; the position in the file is the sample index
(``at`` in the log), kept apart from UTC. ``speed=0`` (replay) has no wall time to be heard
at: its timeline runs at the recording's own rate from ``start_time``.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from .base import SAMPLE_RATE, Converter, Emit, Frame, Source
from .timeline import Timeline


class AudioFileError(ValueError):
    """An audio file that cannot be played; the message is one line naming stream and file."""


def check_audio_file(path: str | Path, stream: str | None = None) -> tuple[int, int]:
    """``(sample_rate, frames)`` of a readable audio file, else `AudioFileError` whose text
    names the stream (when given), the file and the reason in one line."""
    p = Path(path)
    who = f"stream {stream}: " if stream else ""
    reason = None
    if not p.exists():
        reason = "no such file"
    elif p.is_dir():
        reason = "it is a directory"
    elif p.stat().st_size == 0:
        reason = "the file is empty"
    else:
        try:
            with sf.SoundFile(str(p)) as f:
                if f.frames == 0:
                    reason = "no audio in the file (0 frames)"
                else:
                    return f.samplerate, f.frames
        except (sf.LibsndfileError, RuntimeError, OSError) as e:
            msg = str(getattr(e, "error_string", "") or e)
            reason = f"not an audio file libsndfile can read ({msg.rstrip('.')})"
    raise AudioFileError(f"{who}cannot play audio file {str(p)!r}: {reason}")


class FileSource(Source):
    def __init__(
        self,
        path: str | Path,
        stream: str,
        speed: float = 1.0,
        loop: bool = False,
        frame_ms: float = 100.0,
        start_time: float | None = None,
        metrics=None,
    ) -> None:
        self.path = Path(path)
        self.streams = (stream,)
        self.stream = stream
        self.speed = float(speed)
        self.loop = loop
        self.finite = not loop
        self.frame_ms = frame_ms
        self.start_time = start_time
        self.metrics = metrics
        self.samples_emitted = 0
        # fail early, in one line, on unreadable files
        self.in_rate, self.total_frames = check_audio_file(self.path, stream)
        self.duration_s = self.total_frames / self.in_rate

    def run(self, emit: Emit, stop: threading.Event) -> None:
        t_start = time.monotonic()
        t0 = self.start_time if self.start_time is not None else time.time()
        # the file is its own clock: one piece from t0, at the pace it is played
        timeline = Timeline(SAMPLE_RATE, speed=self.speed, max_skew_s=None)
        index = 0
        seq = 0
        block = max(1, int(self.in_rate * self.frame_ms / 1000.0))
        while not stop.is_set():
            conv = Converter(self.in_rate, SAMPLE_RATE)
            with sf.SoundFile(str(self.path)) as f:
                while not stop.is_set():
                    data = f.read(block, dtype="float32", always_2d=True)
                    last = data.shape[0] < block
                    y = conv(data, last=last)
                    if y.size:
                        if not np.isfinite(y).all():
                            y = np.nan_to_num(y, nan=0.0, posinf=0.0, neginf=0.0)
                        y = np.clip(y, -1.0, 1.0)
                        pl = timeline.place(y.shape[0], t0 if index == 0 else None)
                        emit(Frame(self.stream, pl.index, pl.utc, seq, y, pl.piece))
                        index += y.shape[0]
                        seq += 1
                        self.samples_emitted = index
                        if self.speed > 0:
                            due = t_start + index / SAMPLE_RATE / self.speed
                            delay = due - time.monotonic()
                            if delay > 0:
                                stop.wait(delay)
                    if last:
                        break
            if not self.loop:
                return

    def describe(self) -> str:
        pace = "max" if self.speed == 0 else f"x{self.speed:g}"
        return f"file {self.path.name} ({self.duration_s:.0f} s, {pace}{', loop' if self.loop else ''})"
