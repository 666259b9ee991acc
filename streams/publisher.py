"""Feed a stream: publish a file or a microphone as protocol frames over MQTT.

``flamingo-edge publish-audio FILE --stream ID`` (or ``--mic``) sends one frame per
``--frame-ms`` of audio to ``<prefix>/audio/<ID>``, paced in real time (``--speed``).
Files keep their sample rate and channels when the protocol allows them (the daemon
resamples and downmixes); other rates are resampled to 16 kHz here.

A block source may yield ``(pcm, rate)``, ``(pcm, rate, lost)`` or ``(pcm, rate, lost, heard)``:
``lost`` device frames were dropped just before this block (a microphone whose queue
overflowed). `publish` then skips the sequence numbers and the capture time those frames would
have had, so the daemon sees the loss (a sequence gap) and keeps the audio after it on wall
time. ``heard`` is the wall time at which the device delivered the block (a PortAudio callback):
then capture times come from a late-only `streams.timeline.Timeline` over those readings, as
for the daemon's own microphones, so a device clock that runs fast or slow (±100 ppm is ~9 s a
day) is corrected instead of counted into the frames' capture times; without it (a file),
capture time is the start time plus the audio sent.
"""

from __future__ import annotations

import queue
import threading
import time
import uuid
from pathlib import Path
from collections.abc import Iterator
from typing import Any

import numpy as np

from edge.constants import SAMPLE_RATE
from edge.mqtt_client import MqttConfig, MqttTlsConfig, new_client

from .protocol import MAX_CHANNELS, SAMPLE_RATES, encode_frame
from .timeline import Timeline


def file_blocks(path: str | Path, frame_ms: float = 100.0, loop: bool = False
                ) -> Iterator[tuple[np.ndarray, int]]:
    import soundfile as sf

    from .base import Converter

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


def mic_blocks(device=None, samplerate: int = SAMPLE_RATE, channels: int = 1, frame_ms: float = 100.0,
               stop: threading.Event | None = None, queue_blocks: int = 100
               ) -> Iterator[tuple[np.ndarray, int, int, float]]:
    """Blocks of a microphone as ``(pcm, rate, lost, heard)``; ``lost`` counts the device frames
    dropped just before the block because the queue was full or PortAudio overflowed;
    ``heard`` is the wall time of the callback that delivered it (its last sample's arrival)."""
    from .mic import MicUnavailable, sounddevice_factory

    if isinstance(device, str) and device.strip().isdigit():
        device = int(device)  # an index, as for the daemon's mic streams (else a name)
    q: queue.Queue = queue.Queue(maxsize=queue_blocks)
    lost = [0]  # frames dropped since the last queued block (callback thread only)
    last_call = [0.0]

    def cb(indata, frames, t, status):
        heard = time.time()
        now = time.monotonic()
        if status and getattr(status, "input_overflow", False) and last_call[0]:
            # PortAudio lost input and does not say how much: the time since the last block does
            lost[0] += max(0, round((now - last_call[0]) * samplerate) - int(frames))
        last_call[0] = now
        try:
            q.put_nowait((np.array(indata, dtype=np.float32, copy=True), lost[0], heard))
            lost[0] = 0
        except queue.Full:
            lost[0] += int(frames)

    try:
        st = sounddevice_factory(device, samplerate, channels, int(samplerate * frame_ms / 1000), cb)
        st.start()
    except MicUnavailable:
        raise
    except Exception as e:  # PortAudioError, no device matching a name, ...
        which = "(the system default input)" if device is None else repr(device)
        hint = "; give --device (see `python3 -m sounddevice`)" if device is None else \
            " (see `python3 -m sounddevice` for the names and indices)"
        raise MicUnavailable(f"microphone {which} cannot be opened: {e}{hint}") from e
    try:
        while stop is None or not stop.is_set():
            try:
                pcm, n_lost, heard = q.get(timeout=1.0)
            except queue.Empty:
                continue
            yield pcm, samplerate, n_lost, heard
    finally:
        st.stop()
        st.close()


class PublishError(RuntimeError):
    """Frames did not reach the broker: the connection was refused or lost, or a QoS 1 frame
    was not acknowledged. The message is one line; ``sent`` frames were delivered before."""

    def __init__(self, message: str, sent: int = 0) -> None:
        super().__init__(message)
        self.sent = sent


class PublishCount:
    """How many frames the broker acknowledged (QoS 1) or the network layer took (QoS 0)
    so far; readable after Ctrl-C."""

    def __init__(self) -> None:
        self.sent = 0


def connect_client(host: str, port: int, username: str | None, password: str | None,
                   timeout: float = 10.0, tls: Any = None):
    """A started paho client whose CONNACK was a success, else `PublishError` in one line
    (refused: the broker's reason, e.g. "Bad user name or password"; a TLS session the broker
    closed: why, e.g. it wants a client certificate). OSError: no TCP, or a TLS handshake
    that failed (an untrusted broker certificate). ``tls``: the daemon's `MqttTlsConfig`
    (used when ``tls.enabled``)."""
    cfg = MqttConfig(host=host, port=port, username=username or None,
                     password=password if username else None, protocol="3.1.1",
                     tls=tls if tls is not None else MqttTlsConfig())
    client = new_client(cfg, f"flamingo-edge-pub-{uuid.uuid4().hex[:8]}")
    done = threading.Event()
    result: list = []
    closed: list = []  # the connection ended before any CONNACK

    def on_connect(c, _u, _flags, reason_code, _props=None):
        result.append(reason_code)
        done.set()

    def on_disconnect(c, _u, _flags, reason_code, _props=None):
        if not done.is_set():
            closed.append(reason_code)
            result.append(reason_code)
            done.set()

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    client.connect(host, port, keepalive=30)
    client.loop_start()
    if not done.wait(timeout):
        _stop(client)
        raise PublishError(f"the broker at {host}:{port} sent no CONNACK within {timeout:g} s")
    rc = result[0]
    if closed and tls is not None and tls.enabled:
        _stop(client)
        from edge.mqtt_tls import CLIENT_CERT_REQUIRED, client_cert_hint, diagnose_tls_close

        why = diagnose_tls_close(host, port, tls)
        if why == CLIENT_CERT_REQUIRED:
            why = client_cert_hint("mqtt (or alerts.mqtt)")
        raise PublishError(f"the broker at {host}:{port} closed the connection before CONNACK: "
                           f"{why or rc}")
    if getattr(rc, "is_failure", False) or not hasattr(rc, "is_failure"):
        _stop(client)
        who = f" for user {username}" if username else " (anonymous; give --username and the password)"
        raise PublishError(f"the broker at {host}:{port} refused the connection{who}: {rc}")
    client.on_connect = None
    client.on_disconnect = None
    return client


def _stop(client) -> None:
    try:
        client.disconnect()
    finally:
        client.loop_stop()


def publish(
    blocks: Iterator[tuple[np.ndarray, int]] | Iterator[tuple[np.ndarray, int, int]]
    | Iterator[tuple[np.ndarray, int, int, float]],
    stream: str,
    host: str = "localhost",
    port: int = 1883,
    prefix: str = "flamingo-edge",
    username: str | None = None,
    password: str | None = None,
    sample_format: str = "int16",
    tls: Any = None,
    speed: float = 1.0,
    qos: int = 0,
    seq_start: int = 0,
    client=None,
    on_frame=None,
    count: PublishCount | None = None,
    ack_timeout: float = 10.0,
) -> int:
    """Publish blocks as frames; ``speed`` paces by audio time (0 = no pacing, e.g. for mic
    input, which is paced by the device). Returns the number of frames delivered: acknowledged
    by the broker (``qos=1``) or taken by the network layer (``qos=0``); ``count`` follows it
    as it goes. A refused or lost connection, or a QoS 1 frame not acknowledged within
    ``ack_timeout``, raises `PublishError` (with ``.sent``); OSError: the broker is not reachable."""
    import paho.mqtt.client as mqtt

    own = client is None
    if own:
        client = connect_client(host, port, username, password, tls=tls)
    gone = threading.Event()
    why: list = []
    if own:
        def on_disconnect(c, _u, _flags, reason_code, _props=None):
            why.append(reason_code)
            gone.set()

        client.on_disconnect = on_disconnect
    count = count if count is not None else PublishCount()
    where = f"{host}:{port}"
    topic = f"{prefix.strip('/')}/audio/{stream}"
    seq = seq_start
    t0_wall = time.time()
    t0 = time.monotonic()
    audio_s = 0.0
    sent = 0
    timeline: Timeline | None = None  # blocks that say when they were heard (a microphone)
    try:
        for item in blocks:
            pcm, rate = item[0], item[1]
            lost = item[2] if len(item) > 2 else 0
            heard = item[3] if len(item) > 3 else None
            if lost:  # skip the sequence numbers and time of the frames that were dropped
                seq = (seq + max(1, round(lost / max(1, pcm.shape[0])))) & 0xFFFFFFFF
                audio_s += lost / rate
            if heard is None:
                cap_ns = int((t0_wall + audio_s) * 1e9)
            else:  # the device's clock, corrected by when its blocks arrived
                if timeline is None or timeline.sample_rate != rate:
                    timeline = Timeline(rate, max_skew_s=None, late_only=True)
                n = pcm.shape[0]
                cap_ns = int(timeline.place(n, heard - n / rate, lost=lost).utc * 1e9)
            if gone.is_set():
                raise PublishError(f"the broker at {where} closed the connection after {sent} "
                                   f"frame(s): {why[0] if why else 'connection lost'}", sent)
            info = client.publish(topic, encode_frame(pcm, rate, seq, cap_ns, sample_format), qos=qos)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                raise PublishError(f"frame {seq} not sent to {where}: {mqtt.error_string(info.rc)}",
                                   sent)
            if qos > 0:
                try:
                    info.wait_for_publish(timeout=ack_timeout)
                except RuntimeError as e:  # paho: the message was dropped (connection lost)
                    raise PublishError(f"frame {seq} not delivered to {where}: {e}", sent) from None
                if not info.is_published():
                    raise PublishError(f"the broker at {where} did not acknowledge frame {seq} "
                                       f"within {ack_timeout:g} s", sent)
            if on_frame is not None:
                on_frame(seq, pcm.shape[0], rate)
            seq = (seq + 1) & 0xFFFFFFFF
            sent += 1
            count.sent = sent
            audio_s += pcm.shape[0] / rate
            if speed > 0:
                delay = t0 + audio_s / speed - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
        if own and sent and qos == 0 and not gone.is_set():
            try:  # QoS 0: "delivered" = written to the socket; the last one too
                info.wait_for_publish(timeout=ack_timeout)
            except RuntimeError as e:
                raise PublishError(f"frame {seq - 1} not sent to {where}: {e}", sent - 1) from None
        if own and not gone.is_set():
            # every frame is acknowledged (QoS 1) or written (QoS 0): a clean DISCONNECT
            client.on_disconnect = None
            own = False
            _stop(client)
    finally:
        if own:
            _stop(client)
    return sent
