"""Encoding stage: pending clips -> audio + gate reading + AF-CLAP tokens.

`take_batch` picks up to ``audio.encode_batch`` pending clips **round robin** across the
streams (the oldest pending clip of each in turn, starting one stream further every batch),
so under overload every stream gets its share and none starves.
`Encoding.hear` skips clips that are (almost) all gap silence (``fe_clips_gap``: not heard,
not encoded; their slot stays empty and is masked), copies each other clip out of its ring
(a tail cut by a break or a stalled live stream as silence) and runs the model-free gate on it (level,
novelty; published as metrics and to the sinks): this always happens, whatever the encoder
does. `Encoding.encode` applies the loudness policy + int16 round trip and encodes the whole
batch in **one** call of the encoder backend (`edge.encoder_backends`, or the model's own
``encode``). When the encoder raises, the batch's clips are counted
(``fe_clips_dropped{reason="encoder_error"}``), logged once per burst, and the worker carries
on. Without a model only the gate runs (``tokens`` stays None).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np
import structlog

from ..gate import GateReading
from ..metrics import Metrics
from ..sinks import ResultSink
from ..windows import ClipSpec, prepare_clip
from .failures import BurstLog
from .state import StreamState

if TYPE_CHECKING:
    import torch

    from ..config import LoudnessConfig

log = structlog.get_logger(__name__)
ALL_GAP = 0.99  # a clip with at least this share of gap silence is not encoded (masked)


class ClipEncoder(Protocol):
    """An encoder backend (`edge.encoder_backends.EncoderBackend`) or the model's own encoder."""

    def encode(self, clips: torch.Tensor) -> torch.Tensor:
        """(B, CLIP_SAMPLES) float32 tensor -> (B, 64, D) tokens."""
        ...


@dataclass
class HeardClip:
    """One clip after the encoding stage: what the memory and the monitors get."""

    stream: StreamState
    spec: ClipSpec
    audio: np.ndarray  # (clip_len,) float32, as read from the ring
    reading: GateReading
    tokens: torch.Tensor | None = None  # (64, D); None without a model / after an error
    encode_failed: bool = False


def take_batch(streams: Iterable[StreamState], limit: int, first: int = 0
               ) -> list[tuple[StreamState, ClipSpec]]:
    """Up to ``limit`` pending clips, round robin over the streams starting at stream number
    ``first``: each stream's oldest pending clip in turn. The caller holds the lock."""
    order = list(streams)
    if not order:
        return []
    k = first % len(order)
    order = order[k:] + order[:k]
    out: list[tuple[StreamState, ClipSpec]] = []
    while len(out) < limit:
        took = False
        for s in order:
            if s.pending and len(out) < limit:
                out.append((s, s.pending.popleft()))
                took = True
        if not took:
            break
    return out


class Encoding:
    def __init__(self, encoder: ClipEncoder | None, loudness: LoudnessConfig, metrics: Metrics,
                 sink: ResultSink | None = None) -> None:
        self.encoder = encoder
        self.loudness = loudness
        self.metrics = metrics
        self.sink = sink
        self.failures = BurstLog(log, "clip encoder")

    def hear(self, batch: list[tuple[StreamState, ClipSpec]]) -> list[HeardClip]:
        """Read each clip and run the gate on it (clips the ring lost are counted)."""
        return [h for h in (self._read_and_gate(s, spec) for s, spec in batch) if h is not None]

    def encode(self, heard: list[HeardClip]) -> None:
        """Set ``tokens`` on every clip, or ``encode_failed`` (counted) when the encoder raises."""
        if not heard or self.encoder is None:
            return
        try:
            tokens = self._encode([h.audio for h in heard])
            for i, h in enumerate(heard):
                h.tokens = tokens[i].clone()
        except Exception:  # noqa: BLE001 - a failed batch drops its clips; the worker goes on
            for h in heard:
                h.encode_failed = True
                self.metrics.clips_dropped.labels(h.stream.id, "encoder_error").inc()
            self.failures.failed(f"{len(heard)} clip(s) of "
                                 f"{', '.join(sorted({h.stream.id for h in heard}))}")
            return
        self.failures.ok()

    def _read_and_gate(self, s: StreamState, spec: ClipSpec) -> HeardClip | None:
        m = self.metrics
        gap = s.gap_in(spec)
        if gap >= ALL_GAP * (spec.end - spec.start):
            # no captured audio in it (a short outage filled with silence): nothing to hear,
            # nothing to encode; its slot stays empty and is masked in every window
            m.clips_gap.labels(s.id).inc()
            return None
        held = s.ring.read(spec.start, spec.held_end)
        if held is None:  # overwritten before we got to it
            m.clips_dropped.labels(s.id, "overwritten").inc()
            return None
        x = held
        if held.shape[0] < spec.end - spec.start:  # cut by a break or a stalled tail: silence
            x = np.zeros(spec.end - spec.start, np.float32)
            x[:held.shape[0]] = held
        reading = s.gate.process(x)
        s.last_reading = reading
        s.heard.append((spec.index, s.clip_utc(spec)[1], reading, gap))
        m.level_dbfs.labels(s.id).set(reading.level_dbfs)
        if reading.novelty is not None:
            m.novelty.labels(s.id).set(reading.novelty)
        if self.sink is not None:
            try:
                self.sink.publish_level(s.id, reading.level_dbfs)
            except Exception:
                log.exception("sink.publish_level failed")
        return HeardClip(s, spec, x, reading)

    def _encode(self, audio: list[np.ndarray]) -> torch.Tensor:
        import torch

        assert self.encoder is not None
        lp = self.loudness
        clips = np.stack([prepare_clip(x, lp.policy, lp.max_gain_db, lp.gain_db) for x in audio])
        t0 = time.perf_counter()
        with torch.inference_mode():
            tokens = self.encoder.encode(torch.from_numpy(clips))
        self.metrics.encode_latency.observe(time.perf_counter() - t0)
        return tokens
