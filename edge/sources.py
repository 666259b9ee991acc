"""The daemon's sources: built from the configuration, each supervised on its own thread.

`build_sources` makes one source per file/mic stream and one MQTT client for all MQTT
streams. `SourceRunner` runs one source on a thread: a source that raises or returns while
the daemon runs is restarted with exponential backoff; a finite source (a file without
``loop``) that ends, or that cannot be read, is done.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from streams.base import Emit, Source

from .config import Settings
from .metrics import Metrics

if TYPE_CHECKING:
    from streams.mic import StreamFactory

log = structlog.get_logger(__name__)


def check_sources(settings: Settings, mic_factory: StreamFactory | None = None) -> None:
    """Refuse at start, in one line, what no retry can fix (an unreadable file, a mic
    stream without the `mic` extra or PortAudio). Raises `SourceUnavailable`."""
    from streams.file import AudioFileError, check_audio_file

    for s in settings.streams:
        if s.source == "file" and not str(s.path).startswith("builtin:"):
            try:
                check_audio_file(str(s.path), s.id)
            except AudioFileError as e:
                raise SourceUnavailable(str(e)) from None
    mics = [s.id for s in settings.streams if s.source == "mic"]
    if mics and mic_factory is None:
        from streams.mic import mic_unavailable_reason

        reason = mic_unavailable_reason()
        if reason:
            raise SourceUnavailable(f"stream {', '.join(mics)} (source: mic): {reason}")


class SourceUnavailable(RuntimeError):
    """A configured source cannot run on this machine."""


def build_sources(settings: Settings, metrics: Metrics, data_dir: Path,
                  speed: float | None = None, loop: bool | None = None,
                  mic_factory: StreamFactory | None = None) -> list[Source]:
    """One source per file/mic/url stream, one MQTT client for all MQTT streams."""
    from streams.file import FileSource

    check_sources(settings, mic_factory)
    out: list[Source] = []
    mqtt_streams = []
    for s in settings.streams:
        if s.source == "file":
            path = str(s.path)
            if path.startswith("builtin:"):
                from .demo import BUILTIN_DEMO, demo_recording

                if path != BUILTIN_DEMO:
                    raise ValueError(f"stream {s.id}: unknown built-in recording {path!r}")
                path = str(demo_recording(data_dir))
            out.append(FileSource(path, s.id, speed=s.speed if speed is None else speed,
                                  loop=s.loop if loop is None else loop, metrics=metrics))
        elif s.source == "mic":
            from streams.mic import MicSource

            out.append(MicSource(s.id, device=s.device, samplerate=s.samplerate,
                                 channels=s.channels, metrics=metrics, stream_factory=mic_factory,
                                 max_gap_s=settings.audio.max_gap))
        elif s.source == "url":
            from streams.url import UrlSource

            assert s.url is not None
            cred = s.url_credentials.get_secret_value() if s.url_credentials else None
            out.append(UrlSource(s.id, s.url, credentials=cred, track=s.track, language=s.language,
                                 transport=s.transport, open_timeout=s.open_timeout,
                                 stall_timeout=s.stall_timeout, backoff_max=s.backoff_max,
                                 fatal_retry=s.fatal_retry, options=s.ffmpeg_options,
                                 max_gap_s=settings.audio.max_gap, metrics=metrics))
        else:
            mqtt_streams.append(s.id)
    if mqtt_streams:
        from streams.mqtt import MqttAudioSource

        out.append(MqttAudioSource(mqtt_streams, settings.audio_mqtt, metrics=metrics,
                                   max_gap_s=settings.audio.max_gap))
    return out


class SourceRunner:
    """Runs one source on its own thread, restarting it with backoff; ``on_done(src)`` is
    called once when the thread ends (stopped, or a finite source finished)."""

    def __init__(self, src: Source, emit: Emit, stop: threading.Event,
                 on_done: Callable[[Source], None],
                 backoff: tuple[float, float] = (1.0, 60.0), name: str = "source") -> None:
        self.src = src
        self._emit = emit
        self._stop = stop
        self._on_done = on_done
        self._backoff = backoff
        self.thread = threading.Thread(target=self._main, name=name, daemon=True)

    def start(self) -> SourceRunner:
        self.thread.start()
        log.info("source started", source=self.src.describe(), streams=list(self.src.streams))
        return self

    def _main(self) -> None:
        src = self.src
        backoff, backoff_max = self._backoff
        while not self._stop.is_set():
            try:
                src.run(self._emit, self._stop)
                if src.finite:
                    break
                if not self._stop.is_set():
                    log.warning("source returned; restarting", source=src.describe())
            except Exception as e:
                log.error("source failed; restarting", source=src.describe(), error=str(e),
                          retry_s=backoff, exc_info=not isinstance(e, (OSError, RuntimeError)))
                if src.finite:
                    # a file that cannot be read will not become readable: give up on it
                    break
            self._stop.wait(backoff)
            backoff = min(backoff * 2, backoff_max)
        self._on_done(src)
