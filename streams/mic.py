"""Microphone source (PortAudio through sounddevice, imported lazily).

The PortAudio callback only copies the block into a bounded queue (overflows are counted,
never waited on, and the lost blocks become silence on the sample clock). The source thread drains the queue, downmixes/resamples to 16 kHz mono and
emits frames. If no audio arrives for ``stall_timeout`` seconds, or the stream stops being
active (device unplugged), the stream is closed and reopened with exponential backoff; the
time the device was away becomes silence on the stream's sample clock, so clip spans stay
aligned with wall time.

Tests (and exotic back ends) inject ``stream_factory(device, samplerate, channels, blocksize,
callback)`` returning an object with ``start()``, ``stop()``, ``close()`` and optionally
``samplerate`` and ``active``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any, Callable

import numpy as np

from .base import SAMPLE_RATE, Converter, Emit, Frame, Source

log = logging.getLogger("flamingo_edge.streams.mic")

StreamFactory = Callable[..., Any]


def sounddevice_factory(device, samplerate, channels, blocksize, callback):
    try:
        import sounddevice as sd
    except (ImportError, OSError) as e:  # OSError: PortAudio library missing
        raise RuntimeError(
            "microphone input needs the `mic` extra and PortAudio: "
            "pip install 'flamingo-edge[mic]' (and e.g. apt install libportaudio2)"
        ) from e
    return sd.InputStream(device=device, samplerate=samplerate, channels=channels,
                          blocksize=blocksize or 0, dtype="float32", callback=callback)


def list_devices() -> str:
    import sounddevice as sd

    return str(sd.query_devices())


class MicSource(Source):
    def __init__(
        self,
        stream: str,
        device: str | int | None = None,
        samplerate: int | None = None,
        channels: int = 1,
        block_s: float = 0.1,
        queue_blocks: int = 100,
        stall_timeout: float = 2.0,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        stream_factory: StreamFactory | None = None,
        metrics=None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.streams = (stream,)
        self.stream = stream
        if isinstance(device, str) and device.strip().isdigit():
            device = int(device)
        self.device = device
        self.samplerate = samplerate
        self.channels = channels
        self.block_s = block_s
        self._q: queue.Queue = queue.Queue(maxsize=queue_blocks)
        self.stall_timeout = stall_timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.factory = stream_factory or sounddevice_factory
        self.metrics = metrics
        self.clock = clock
        self.overflows = 0  # blocks lost because the queue was full
        self._lost_frames = 0  # device frames in those blocks (written by the callback only)
        self.status_flags = 0  # PortAudio reported input overflow/underflow
        self.opens = 0
        self.reopens = 0
        self.open_failures = 0
        self._anchor: float | None = None  # capture time of sample index 0
        self._index = 0
        self._seq = 0

    # runs on the PortAudio thread: copy and go
    def _callback(self, indata, frames, time_info, status) -> None:
        if status:
            self.status_flags += 1
        try:
            # the running total of lost frames tells the reader where a hole goes
            self._q.put_nowait((np.array(indata, dtype=np.float32, copy=True), self.clock(),
                                self._lost_frames))
        except queue.Full:
            self.overflows += 1
            self._lost_frames += int(frames)
            if self.metrics is not None:
                self.metrics.source_overflows.labels(self.stream).inc()

    def _open(self):
        blocksize = int(self.samplerate * self.block_s) if self.samplerate else 0
        st = self.factory(self.device, self.samplerate, self.channels, blocksize, self._callback)
        try:
            st.start()
        except Exception:
            _close(st)
            raise
        self.opens += 1
        return st

    def run(self, emit: Emit, stop: threading.Event) -> None:
        backoff = self.backoff_initial
        first = True
        while not stop.is_set():
            if not first:
                self.reopens += 1
                if self.metrics is not None:
                    self.metrics.source_reopens.labels(self.stream).inc()
            first = False
            self._drain()  # blocks of a previous stream must not be mistaken for new audio
            try:
                st = self._open()
            except Exception as e:
                self.open_failures += 1
                log.warning("microphone %r for %s: cannot open (%s); retrying in %.1f s",
                            self.device, self.stream, e, backoff)
                stop.wait(backoff)
                backoff = min(backoff * 2, self.backoff_max)
                continue
            rate = int(getattr(st, "samplerate", None) or self.samplerate or SAMPLE_RATE)
            conv = Converter(rate, SAMPLE_RATE)
            last_data = time.monotonic()
            session_start = True
            try:
                while not stop.is_set():
                    try:
                        block, t_cb, lost_total = self._q.get(timeout=0.05)
                    except queue.Empty:
                        if time.monotonic() - last_data > self.stall_timeout:
                            log.warning("microphone %r for %s stalled; reopening", self.device,
                                        self.stream)
                            break
                        if getattr(st, "active", True) is False:
                            log.warning("microphone %r for %s stopped; reopening", self.device,
                                        self.stream)
                            break
                        continue
                    last_data = time.monotonic()
                    backoff = self.backoff_initial
                    t_cap = t_cb - block.shape[0] / rate  # capture time of the block's first sample
                    y = conv(block)
                    if session_start:
                        session_start = False
                        lost_seen = lost_total
                        if self._anchor is None:
                            self._anchor = t_cap
                        else:  # after a reopen: the time away becomes silence
                            self._index = max(self._index,
                                              int(round((t_cap - self._anchor) * SAMPLE_RATE)))
                    elif lost_total > lost_seen:  # blocks lost to a full queue: silence
                        self._index += int(round((lost_total - lost_seen) * SAMPLE_RATE / rate))
                        lost_seen = lost_total
                    if y.size:
                        emit(Frame(self.stream, self._index,
                                   self._anchor + self._index / SAMPLE_RATE, self._seq, y))
                        self._index += y.shape[0]
                        self._seq += 1
            finally:
                _close(st)
            if not stop.is_set():
                stop.wait(backoff)
                backoff = min(backoff * 2, self.backoff_max)

    def _drain(self) -> None:
        try:
            while True:
                self._q.get_nowait()
        except queue.Empty:
            pass

    def describe(self) -> str:
        return f"microphone {self.device if self.device is not None else '(default)'}"


def _close(st) -> None:
    for name in ("stop", "close"):
        try:
            getattr(st, name)()
        except Exception:
            pass
