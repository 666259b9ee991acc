"""Microphone source (PortAudio through sounddevice, imported lazily).

The PortAudio callback only copies the block into a bounded queue (overflows are counted,
never waited on, and the lost blocks become silence on the sample clock), with the time it
was called. The source thread drains the queue, downmixes/resamples to 16 kHz mono and
places each block on the stream's `streams.timeline.Timeline`: the callback times correct
the device clock's drift and catch system clock steps. A callback time is an arrival time,
late when the callback thread was starved, never early (``late_only``): blocks the audio
server kept while the callback was late arrive in a burst and stay on their samples' wall
time. PortAudio's own input-overflow flag is a break measured by those times (the lost audio
becomes silence). If no audio arrives for ``stall_timeout`` seconds (``open_timeout`` for the
first block of a freshly opened stream: PulseAudio's null sink takes ~2 s to deliver it), or
the stream stops being active (device unplugged), the stream is closed and reopened with
exponential backoff; the reopen is a break too: a short absence becomes silence, a long one
(over ``max_gap_s``) a new timeline piece with a fresh clip grid.

Tests (and exotic back ends) inject ``stream_factory(device, samplerate, channels, blocksize,
callback)`` returning an object with ``start()``, ``stop()``, ``close()`` and optionally
``samplerate`` and ``active``.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Any
from collections.abc import Callable

import numpy as np
import structlog

from .base import SAMPLE_RATE, Converter, Emit, Frame, Source
from .timeline import Timeline

log = structlog.get_logger(__name__)

StreamFactory = Callable[..., Any]


MIC_EXTRA_HINT = ("microphone input needs the `mic` extra and PortAudio: "
                  "pip install 'flamingo-edge[mic]' (and e.g. apt install libportaudio2)")


class MicUnavailable(RuntimeError):
    """sounddevice or PortAudio is not installed: retrying cannot help."""


def mic_unavailable_reason() -> str | None:
    """Why microphone input cannot work on this machine (None: it can)."""
    try:
        import sounddevice  # noqa: F401
    except ImportError as e:
        return f"{MIC_EXTRA_HINT} ({e.name or 'sounddevice'} is not installed)"
    except OSError as e:  # sounddevice is there, the PortAudio library is not
        return f"{MIC_EXTRA_HINT} ({e})"
    return None


def sounddevice_factory(device, samplerate, channels, blocksize, callback):
    try:
        import sounddevice as sd
    except (ImportError, OSError) as e:  # OSError: PortAudio library missing
        raise MicUnavailable(MIC_EXTRA_HINT) from e
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
        open_timeout: float = 10.0,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        stream_factory: StreamFactory | None = None,
        metrics=None,
        clock: Callable[[], float] = time.time,
        max_gap_s: float = 60.0,
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
        self.open_timeout = max(open_timeout, stall_timeout)  # until the first block arrives
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
        # the callback clock is this machine's: no skew check, steps and drift are caught
        self.timeline = Timeline(SAMPLE_RATE, max_gap_s=max_gap_s, max_skew_s=None,
                                 late_only=True, clock=clock)
        self._seq = 0

    # runs on the PortAudio thread: copy and go
    def _callback(self, indata, frames, time_info, status) -> None:
        overflow = False
        if status:
            self.status_flags += 1
            overflow = bool(getattr(status, "input_overflow", False))
        try:
            # the running total of lost frames tells the reader where a hole goes
            self._q.put_nowait((np.array(indata, dtype=np.float32, copy=True), self.clock(),
                                self._lost_frames, overflow))
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
        first = first_session = True
        while not stop.is_set():
            if not first:
                self.reopens += 1
                if self.metrics is not None:
                    self.metrics.source_reopens.labels(self.stream).inc()
            first = False
            self._drain()  # blocks of a previous stream must not be mistaken for new audio
            try:
                st = self._open()
            except MicUnavailable:
                raise  # not a device problem: a retry cannot install a package
            except Exception as e:  # noqa: BLE001 - any open failure is counted and retried
                self.open_failures += 1
                log.warning("microphone cannot be opened; retrying", stream=self.stream,
                            device=self.device, error=str(e), retry_s=round(backoff, 1))
                stop.wait(backoff)
                backoff = min(backoff * 2, self.backoff_max)
                continue
            rate = int(getattr(st, "samplerate", None) or self.samplerate or SAMPLE_RATE)
            conv = Converter(rate, SAMPLE_RATE)
            last_data = time.monotonic()
            limit = self.open_timeout  # a stream that never started delivering stalls here
            brk: str | None = None if first_session else "reopen"
            first_session = False
            lost_seen: int | None = None
            try:
                while not stop.is_set():
                    try:
                        block, t_cb, lost_total, overflow = self._q.get(timeout=0.05)
                    except queue.Empty:
                        if time.monotonic() - last_data > limit:
                            log.warning("microphone stalled; reopening", stream=self.stream,
                                        device=self.device, after_s=limit)
                            break
                        if getattr(st, "active", True) is False:
                            log.warning("microphone stopped; reopening", stream=self.stream,
                                        device=self.device)
                            break
                        continue
                    last_data = time.monotonic()
                    limit = self.stall_timeout
                    backoff = self.backoff_initial
                    lost = 0
                    if lost_seen is not None and lost_total > lost_seen:  # queue was full
                        lost = round((lost_total - lost_seen) * SAMPLE_RATE / rate)
                    lost_seen = lost_total
                    if overflow and brk is None:  # PortAudio lost input: measure it by time
                        brk = "overflow"
                    y = conv(block)
                    if y.size:
                        t_cap = t_cb - block.shape[0] / rate  # the block's first sample
                        self._emit_block(emit, y, t_cap, lost, brk)
                        brk = None
            finally:
                _close(st)
            if not stop.is_set():
                stop.wait(backoff)
                backoff = min(backoff * 2, self.backoff_max)

    def _emit_block(self, emit: Emit, y: np.ndarray, t_cap: float, lost: int, brk: str | None
                    ) -> None:
        tl = self.timeline
        pl = tl.place(y.shape[0], t_cap, lost=lost, brk=brk)
        if pl.piece is not None and tl.pieces > 1:
            log.info("new timeline piece", stream=self.stream, cause=pl.piece.cause,
                     gap_s=round(pl.piece.gap_s, 3))
            if self.metrics is not None:
                self.metrics.timeline_pieces.labels(self.stream, pl.piece.cause).inc()
        emit(Frame(self.stream, pl.index, pl.utc, self._seq, y, pl.piece))
        self._seq += 1

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
        except Exception:  # noqa: BLE001, S110 - best effort close of a stream that may be broken
            pass
