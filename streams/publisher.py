"""Feed a stream: publish a file or a microphone as protocol frames over MQTT.

``flamingo-edge publish-audio FILE --stream ID`` (or ``--mic``) sends one frame per
``--frame-ms`` of audio to ``<prefix>/audio/<ID>``, paced in real time (``--speed``).
Files keep their sample rate and channels when the protocol allows them (the daemon
resamples and downmixes); other rates are resampled to 16 kHz here.

A block source may yield ``(pcm, rate)`` or ``(pcm, rate, lost)``: ``lost`` device frames were
dropped just before this block (a microphone whose queue overflowed). `publish` then skips
the sequence numbers and the capture time those frames would have had, so the daemon sees the
loss (a sequence gap) and keeps the audio after it on wall time.
"""

from __future__ import annotations

import queue
import threading
import time
import uuid
from pathlib import Path
from collections.abc import Iterator

import numpy as np

from .protocol import MAX_CHANNELS, SAMPLE_RATES, encode_frame


def file_blocks(path: str | Path, frame_ms: float = 100.0, loop: bool = False
                ) -> Iterator[tuple[np.ndarray, int]]:
    import soundfile as sf

    from .base import SAMPLE_RATE, Converter

    while True:
        with sf.SoundFile(str(path)) as f:
            rate = f.samplerate
            block = max(1, int(rate * frame_ms / 1000))
            conv = None
            if rate not in SAMPLE_RATES or f.channels > MAX_CHANNELS:
                conv = Converter(rate, SAMPLE_RATE)
            while True:
                x = f.read(block, dtype="float32", always_2d=True)
                if x.shape[0] == 0:
                    break
                if conv is not None:
                    y = conv(x, last=x.shape[0] < block)
                    if y.size:
                        yield y[:, None], SAMPLE_RATE
                else:
                    yield x, rate
        if not loop:
            return


def mic_blocks(device=None, samplerate: int = 16000, channels: int = 1, frame_ms: float = 100.0,
               stop: threading.Event | None = None, queue_blocks: int = 100
               ) -> Iterator[tuple[np.ndarray, int, int]]:
    """Blocks of a microphone as ``(pcm, rate, lost)``; ``lost`` counts the device frames
    dropped just before the block because the queue was full or PortAudio overflowed."""
    from .mic import sounddevice_factory

    if isinstance(device, str) and device.strip().isdigit():
        device = int(device)  # an index, as for the daemon's mic streams (else a name)
    q: queue.Queue = queue.Queue(maxsize=queue_blocks)
    lost = [0]  # frames dropped since the last queued block (callback thread only)
    last_call = [0.0]

    def cb(indata, frames, t, status):
        now = time.monotonic()
        if status and getattr(status, "input_overflow", False) and last_call[0]:
            # PortAudio lost input and does not say how much: the time since the last block does
            lost[0] += max(0, round((now - last_call[0]) * samplerate) - int(frames))
        last_call[0] = now
        try:
            q.put_nowait((np.array(indata, dtype=np.float32, copy=True), lost[0]))
            lost[0] = 0
        except queue.Full:
            lost[0] += int(frames)

    st = sounddevice_factory(device, samplerate, channels, int(samplerate * frame_ms / 1000), cb)
    st.start()
    try:
        while stop is None or not stop.is_set():
            try:
                pcm, n_lost = q.get(timeout=1.0)
            except queue.Empty:
                continue
            yield pcm, samplerate, n_lost
    finally:
        st.stop()
        st.close()


def publish(
    blocks: Iterator[tuple[np.ndarray, int]] | Iterator[tuple[np.ndarray, int, int]],
    stream: str,
    host: str = "localhost",
    port: int = 1883,
    prefix: str = "flamingo-edge",
    username: str | None = None,
    password: str | None = None,
    sample_format: str = "int16",
    speed: float = 1.0,
    qos: int = 0,
    seq_start: int = 0,
    client=None,
    on_frame=None,
) -> int:
    """Publish blocks as frames; ``speed`` paces by audio time (0 = no pacing, e.g. for mic
    input, which is paced by the device). Returns the number of frames sent."""
    import paho.mqtt.client as mqtt

    own = client is None
    if own:
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                             client_id=f"flamingo-edge-pub-{uuid.uuid4().hex[:8]}")
        if username:
            client.username_pw_set(username, password)
        client.connect(host, port, keepalive=30)
        client.loop_start()
    topic = f"{prefix.strip('/')}/audio/{stream}"
    seq = seq_start
    t0_wall = time.time()
    t0 = time.monotonic()
    audio_s = 0.0
    sent = 0
    try:
        for item in blocks:
            pcm, rate = item[0], item[1]
            lost = item[2] if len(item) > 2 else 0
            if lost:  # skip the sequence numbers and time of the frames that were dropped
                seq = (seq + max(1, round(lost / max(1, pcm.shape[0])))) & 0xFFFFFFFF
                audio_s += lost / rate
            cap_ns = int((t0_wall + audio_s) * 1e9)
            info = client.publish(topic, encode_frame(pcm, rate, seq, cap_ns, sample_format), qos=qos)
            if qos > 0:
                info.wait_for_publish(timeout=10)
            if on_frame is not None:
                on_frame(seq, pcm.shape[0], rate)
            seq = (seq + 1) & 0xFFFFFFFF
            sent += 1
            audio_s += pcm.shape[0] / rate
            if speed > 0:
                delay = t0 + audio_s / speed - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
    finally:
        if own:
            client.disconnect()
            client.loop_stop()
    return sent
