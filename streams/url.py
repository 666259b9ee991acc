"""URL source: RTSP/RTSPS cameras, NVR restreams, HTTP(S) streams, anything FFmpeg opens.

Decoding is FFmpeg's, through PyAV (the ``url`` extra; imported lazily, so the daemon runs
without it when no URL stream is configured). One source feeds one stream from one audio
track (the first by default, or ``track`` = index among the audio tracks, or ``language``).
Decoded frames are turned into float32 (sample format only) and downmixed + resampled to
16 kHz mono by `streams.base.Converter`, the one converter every source uses.

Failure is a state, not a crash (`UrlSource.status`):

- EOF, a stall (no packet for ``stall_timeout``), a server restart or a network error:
  reconnect after ``backoff`` doubling from ``backoff_initial`` to ``backoff_max``, each
  delay randomised by +-``jitter`` so a fleet of cameras behind one NVR does not reconnect
  in lockstep; the backoff resets once a session has delivered ``healthy_after`` seconds of
  audio (a camera that sends a fraction of a second and drops, every time, still backs off).
- A refused login (401/403), a missing path (404) or a URL without an audio track is a
  configuration problem: one clear error line naming the stream, then retries every
  ``fatal_retry`` seconds (the camera may be fixed without restarting us), logged again only
  when the problem changes.
- Corrupt packets (flagged by the demuxer, or rejected by the decoder) are counted and skipped.

URLs are never logged or reported with credentials: `redact_url` drops the user info and
the query string; FFmpeg's error text is reduced to its reason (it quotes the URL).

Time: each stream has a `streams.timeline.Timeline`; the source gives it a capture-time
reading for every block of audio, and the timeline decides the sample index and UTC.

- The reading comes from **arrival time**. Packets can arrive late (network, the burst FFmpeg
  reads while probing after connecting) but never before they were captured, so the capture
  time of a session's first sample is the lower envelope (minimum) of
  ``arrival - position_in_session`` over the last ``drift_window`` seconds; a session's first
  ``settle`` seconds are held until that envelope has seen audio arrive at its live pace.
  Following the envelope is what corrects a sender clock that drifts from ours: the timeline
  re-anchors (a ``drift`` piece) when readings move more than ``drift_tolerance``.
- Within a session the stream's own timestamps (RTP) place the frames: a jump in PTS (packets
  lost) is a gap on the sample clock (``lost``), never stretched audio; audio behind what was
  already placed (duplicates) is dropped.
- A reconnect is a break (``brk="reopen"``): the new session's first reading says how long the
  stream was away; a short absence becomes silence, a long one (over ``max_gap_s``) a new
  timeline piece with a fresh clip grid. Audio is never stretched or squeezed to fit.
"""

from __future__ import annotations

import random
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import numpy as np
import structlog

from .base import SAMPLE_RATE, Converter, Emit, Frame, Source
from .timeline import Timeline

log = structlog.get_logger(__name__)

_INSTALL_HINT = "URL streams need PyAV: pip install 'flamingo-edge[url]'"


def import_av():
    try:
        import av
    except ImportError as e:
        raise RuntimeError(_INSTALL_HINT) from e
    return av


def redact_url(url: str) -> str:
    """``rtsp://user:pw@cam:554/live?token=x`` -> ``rtsp://***@cam:554/live?***``."""
    try:
        p = urlsplit(url)
    except ValueError:
        return "(unparsable URL)"
    if not p.scheme or not p.netloc:
        # a file path or a device: no credentials to hide, but drop any query
        return url.split("?", 1)[0] + ("?***" if "?" in url else "")
    host = p.netloc.rsplit("@", 1)[-1]
    netloc = ("***@" if "@" in p.netloc else "") + host
    return urlunsplit((p.scheme, netloc, p.path, "***" if p.query else "", ""))


def url_with_credentials(url: str, credentials: str | None) -> str:
    """Put ``user:password`` into the URL's user info (percent-encoded)."""
    if not credentials:
        return url
    user, _, password = credentials.partition(":")
    p = urlsplit(url)
    host = p.netloc.rsplit("@", 1)[-1]
    info = quote(user, safe="") + (":" + quote(password, safe="") if password else "")
    return urlunsplit((p.scheme, f"{info}@{host}", p.path, p.query, p.fragment))


class NoAudioTrack(Exception):
    pass


class AudioStall(Exception):
    """The input is alive (video flows) but its audio track sent nothing for stall_timeout."""


@dataclass(frozen=True)
class Track:
    index: int  # among the audio tracks
    stream_index: int  # among all of the input's streams
    codec: str
    sample_rate: int
    channels: int
    language: str | None

    def describe(self) -> str:
        lang = f", language {self.language}" if self.language else ""
        return f"audio track {self.index}: {self.codec}, {self.sample_rate} Hz, {self.channels} ch{lang}"


ALL_MEDIA = "video+audio+data+subtitle"  # FFmpeg's default allowed_media_types for RTSP


def open_input(url: str, *, credentials: str | None = None, transport: str = "tcp",
               open_timeout: float = 10.0, read_timeout: float = 5.0,
               options: dict[str, str] | None = None):
    """Open ``url`` with FFmpeg (PyAV). RTSP runs over ``transport`` (tcp by default) and sets
    up the audio media only (``allowed_media_types=audio``): a camera's video is never sent to
    us, so it costs neither bandwidth nor demuxing (``options`` may say otherwise)."""
    av = import_av()
    opts = {}
    scheme = urlsplit(url).scheme.lower()
    if scheme in ("rtsp", "rtsps"):
        opts["rtsp_transport"] = transport
        opts["allowed_media_types"] = "audio"
        opts["timeout"] = str(int(read_timeout * 1e6))  # socket I/O timeout, microseconds
    elif scheme in ("http", "https"):
        opts["rw_timeout"] = str(int(read_timeout * 1e6))
    opts.update(options or {})
    return av.open(url_with_credentials(url, credentials), mode="r", options=opts,
                   timeout=(open_timeout, read_timeout))


def audio_tracks(container) -> list[Track]:
    out: list[Track] = []
    for s in container.streams:
        if s.type != "audio":
            continue
        cc = s.codec_context
        out.append(Track(len(out), s.index, cc.name, int(cc.sample_rate or 0),
                         int(getattr(cc, "channels", 0) or cc.layout.nb_channels or 0),
                         s.language or s.metadata.get("language")))
    return out


def select_track(tracks: list[Track], track: int | None, language: str | None) -> Track:
    if not tracks:
        raise NoAudioTrack("the input has no audio track")
    if language is not None:
        for t in tracks:
            if t.language and t.language.lower() == language.lower():
                return t
        raise NoAudioTrack(f"no audio track in language {language!r} "
                           f"(tracks: {', '.join(t.language or '?' for t in tracks)})")
    if track is not None:
        if track >= len(tracks):
            raise NoAudioTrack(f"audio track {track} requested, the input has {len(tracks)}")
        return tracks[track]
    return tracks[0]


_INT_SCALE = {"u8": None, "s16": 32768.0, "s32": 2147483648.0, "s64": 9.223372036854775808e18}


def frame_samples(frame) -> np.ndarray:
    """A decoded `av.AudioFrame` as float32 ``(n, channels)`` at its own rate (format only:
    no resampling, no downmix; that is the `Converter`'s job)."""
    a = frame.to_ndarray()
    fmt = frame.format
    ch = frame.layout.nb_channels
    if fmt.is_planar:
        x = a.T  # (channels, n) -> (n, channels)
    else:
        x = a.reshape(-1, ch)
    base = fmt.name.rstrip("p")
    if base == "u8":
        return (x.astype(np.float32) - 128.0) / 128.0
    scale = _INT_SCALE.get(base)
    if scale is not None:
        return x.astype(np.float32) / np.float32(scale)
    return x.astype(np.float32, copy=False)


# how a failure is reported and retried
FATAL_KINDS = ("auth", "not_found", "no_audio", "no_pyav")


def classify(e: BaseException) -> tuple[str, str]:
    """-> (kind, one-line reason without the URL)."""
    if isinstance(e, NoAudioTrack):
        return "no_audio", str(e)
    if isinstance(e, AudioStall):
        return "stall", str(e)
    try:
        import av
    except ImportError:  # PyAV missing: a configuration problem, retried slowly
        return "no_pyav", _INSTALL_HINT
    err = av.error
    if isinstance(e, (err.HTTPUnauthorizedError, err.HTTPForbiddenError)):
        return "auth", f"login refused ({e.strerror})"
    if isinstance(e, err.HTTPNotFoundError):
        return "not_found", f"not found ({e.strerror})"
    if isinstance(e, err.ExitError):  # PyAV's timeout interrupted a blocking call
        return "stall", "no data within the timeout"
    if isinstance(e, err.FFmpegError):
        return "network", str(e.strerror or type(e).__name__)
    if isinstance(e, OSError):
        return "network", e.strerror or type(e).__name__
    return "error", _redact_urls(f"{type(e).__name__}: {e}")


def _redact_urls(text: str) -> str:
    return re.sub(r"(?i)\b[a-z][a-z0-9+.-]*://[^\s'\"]+", lambda m: redact_url(m.group(0)), text)


@dataclass
class _Session:
    brk: str | None = None  # the break the session's first placement reports
    rate: int = 0
    conv: Converter | None = None
    pts0: float | None = None  # seconds, PTS of the session's first frame
    in_pos: int = 0  # input samples (at ``rate``) placed so far in this session
    out_pos: int = 0  # 16 kHz samples (converted audio + in-session gaps) so far
    lost: int = 0  # 16 kHz samples lost (PTS jump) before the next block
    first_arrival: float | None = None
    # lower envelope of (arrival - position): a monotonic deque of (arrival, estimate)
    env: deque = field(default_factory=deque)
    settled: bool = False
    held: list[tuple[int, int, np.ndarray]] = field(default_factory=list)  # (out_pos, lost, y)
    pending: list[np.ndarray] = field(default_factory=list)  # input not yet converted
    pending_n: int = 0
    audio_s: float = 0.0


class UrlSource(Source):
    def __init__(
        self,
        stream: str,
        url: str,
        *,
        credentials: str | None = None,
        track: int | None = None,
        language: str | None = None,
        transport: str = "tcp",
        open_timeout: float = 10.0,
        stall_timeout: float = 5.0,
        backoff_initial: float = 1.0,
        backoff_max: float = 60.0,
        fatal_retry: float = 300.0,
        jitter: float = 0.2,
        healthy_after: float = 10.0,
        settle: float = 1.0,
        drift_window: float = 30.0,
        drift_tolerance: float = 0.02,
        max_gap_s: float = 60.0,
        options: dict[str, str] | None = None,
        metrics=None,
        clock: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.streams = (stream,)
        self.stream = stream
        self.url = url
        self.safe_url = redact_url(url)
        self._credentials = credentials
        self.track, self.language = track, language
        self.transport = transport
        self.open_timeout, self.stall_timeout = open_timeout, stall_timeout
        self.backoff_initial, self.backoff_max = backoff_initial, backoff_max
        self.fatal_retry, self.jitter = fatal_retry, jitter
        self.healthy_after = healthy_after
        self.settle = settle
        self.drift_window, self.drift_tolerance = drift_window, drift_tolerance
        self.options = dict(options or {})
        self.metrics = metrics
        self.clock = clock
        self.rng = rng
        # status (read by health; written by the source thread only)
        self.state = "idle"  # idle | connecting | streaming | retrying | failed | stopped
        self.error: str | None = None
        self.error_kind: str | None = None
        self.track_info: Track | None = None
        self.connects = 0
        self.reconnects = 0
        self.failures: dict[str, int] = {}
        self.corrupt_packets = 0
        # 16-kHz samples: lost (a PTS jump forward, placed as a gap) and dropped (audio behind
        # the PTS already placed: duplicates, a jump back)
        self.lost_samples = 0
        self.dropped_samples = 0
        self.next_retry: float | None = None
        # readings are this machine's clock (arrival times): no skew check
        self.timeline = Timeline(SAMPLE_RATE, max_gap_s=max_gap_s, max_skew_s=None,
                                 drift_tolerance_s=drift_tolerance, clock=clock)
        self._seq = 0

    # ------------------------------------------------------------------ status
    def status(self) -> dict[str, dict[str, Any]]:
        s: dict[str, Any] = {"state": self.state, "url": self.safe_url, "connects": self.connects,
                             "reconnects": self.reconnects, "corrupt_packets": self.corrupt_packets,
                             "lost_samples": self.lost_samples,
                             "dropped_samples": self.dropped_samples}
        if self.error:
            s["error"] = self.error
            s["error_kind"] = self.error_kind
        if self.failures:
            s["failures"] = dict(self.failures)
        if self.track_info is not None:
            s["track"] = self.track_info.describe()
        if self.next_retry is not None and self.state in ("retrying", "failed"):
            s["retry_in_s"] = round(max(0.0, self.next_retry - time.monotonic()), 1)
        return {self.stream: s}

    def describe(self) -> str:
        return f"url {self.safe_url}"

    def _set_state(self, state: str) -> None:
        self.state = state
        if self.metrics is not None:
            self.metrics.source_up.labels(self.stream).set(1 if state == "streaming" else 0)

    # ------------------------------------------------------------------ main loop
    def run(self, emit: Emit, stop: threading.Event) -> None:
        attempt = 0  # consecutive failures without audio
        last_logged: tuple[str, str] | None = None
        first = True
        while not stop.is_set():
            if not first:
                self.reconnects += 1
                if self.metrics is not None:
                    self.metrics.source_reopens.labels(self.stream).inc()
            first = False
            self._set_state("connecting")
            sess = self._new_session()
            kind, reason = "eof", "the stream ended"
            try:
                self._session(sess, emit, stop)
            except Exception as e:  # noqa: BLE001 - every failure is a state
                kind, reason = classify(e)
            finally:
                self._end_session(sess, emit)
            if stop.is_set():
                break
            if sess.audio_s >= self.healthy_after:
                attempt = 0  # it worked for a while: start the backoff over
                last_logged = None  # and a new failure is news again
            self.failures[kind] = self.failures.get(kind, 0) + 1
            if self.metrics is not None:
                self.metrics.source_errors.labels(self.stream, kind).inc()
            self.error, self.error_kind = reason, kind
            if kind in FATAL_KINDS:
                delay = self.fatal_retry
                self._set_state("failed")
            else:
                delay = min(self.backoff_max, self.backoff_initial * (2 ** attempt))
                attempt += 1
                self._set_state("retrying")
            delay *= 1.0 + self.jitter * (2.0 * self.rng() - 1.0)
            if last_logged != (kind, reason):
                level = log.error if kind in FATAL_KINDS else log.warning
                level(f"stream {self.stream}: {reason}; retrying in {delay:.1f} s",
                      stream=self.stream, url=self.safe_url, kind=kind)
                last_logged = (kind, reason)
            else:
                log.debug("stream retry", stream=self.stream, kind=kind, retry_s=round(delay, 1))
            self.next_retry = time.monotonic() + delay
            stop.wait(delay)
        self._set_state("stopped")

    def _session(self, sess: _Session, emit: Emit, stop: threading.Event) -> None:
        av = import_av()
        container = self._open(av)
        try:
            t = select_track(audio_tracks(container), self.track, self.language)
            self.track_info = t
            astream = container.streams[t.stream_index]
            self.connects += 1
            # every stream's packets, not demux(astream): PyAV would skip the video ones in C,
            # so a camera whose audio stops while its video flows would never come back here
            # (no stall detected, stop not seen); FFmpeg's read timeout only sees the video
            # (RTSP sets up the audio only by default: there the read timeout is the stall)
            last_audio = time.monotonic()
            for packet in container.demux():
                if stop.is_set():
                    return
                if packet.stream_index != astream.index:
                    if time.monotonic() - last_audio > self.stall_timeout:
                        raise AudioStall(f"no audio packet for {self.stall_timeout:g} s "
                                         "(the input's other streams still flow)")
                    continue
                last_audio = time.monotonic()
                if packet.size == 0:
                    continue  # the demuxer's flush packet at EOF
                if packet.is_corrupt:
                    self._corrupt()
                    continue
                try:
                    frames = astream.codec_context.decode(packet)
                except av.error.ExitError:
                    raise
                except (av.error.InvalidDataError, av.error.UndefinedError, ValueError):
                    self._corrupt()
                    continue
                arrival = self.clock()
                for fr in frames:
                    self._place(sess, fr, arrival, emit)
                    if self.state != "streaming" and sess.settled:
                        self._set_state("streaming")
                        self.error = self.error_kind = None
                        log.info("receiving audio", stream=self.stream,
                                 url=self.safe_url, track=t.describe())
        finally:
            try:
                container.close()
            except Exception:  # noqa: BLE001, S110 - best effort close
                pass

    def _open(self, av: Any) -> Any:
        kw: dict[str, Any] = dict(credentials=self._credentials, transport=self.transport,
                                  open_timeout=self.open_timeout, read_timeout=self.stall_timeout)
        try:
            return open_input(self.url, options=self.options, **kw)
        except av.error.HTTPOtherClientError:
            if urlsplit(self.url).scheme.lower() not in ("rtsp", "rtsps") \
                    or "allowed_media_types" in self.options:
                raise
            # with nothing set up (no audio media) the server refuses PLAY (a 4xx): look at
            # everything it offers, so an input without audio is a clear `no_audio` state
            return open_input(self.url, options={**self.options, "allowed_media_types": ALL_MEDIA},
                              **kw)

    def _corrupt(self) -> None:
        self.corrupt_packets += 1
        if self.metrics is not None:
            self.metrics.source_corrupt.labels(self.stream).inc()

    # ------------------------------------------------------------------ timeline
    def _new_session(self) -> _Session:
        """A connection's state; every session after the first that delivered audio is a break."""
        return _Session(brk="reopen" if self.timeline.piece is not None else None)

    def _place(self, sess: _Session, fr, arrival: float, emit: Emit) -> None:
        rate = int(fr.sample_rate)
        x = frame_samples(fr)
        if sess.conv is None or rate != sess.rate:
            if sess.conv is not None:  # the rate changed mid-session: continue at the new rate
                self._flush(sess, emit, last=True)
                sess.in_pos = round(sess.in_pos * rate / sess.rate)
            sess.rate, sess.conv = rate, Converter(rate, SAMPLE_RATE)
        n = x.shape[0]
        # where the stream's own timestamps put this frame, in input samples since the session start
        if fr.pts is not None and fr.time_base is not None:
            pts_s = float(fr.pts * fr.time_base)
            if sess.pts0 is None:
                sess.pts0 = pts_s
            pos = round((pts_s - sess.pts0) * rate)
        else:
            pos = sess.in_pos
        tol = max(2, rate // 200)  # 5 ms
        if pos > sess.in_pos + tol:  # packets lost: a gap, not stretched audio
            self._flush(sess, emit)
            k = round((pos - sess.in_pos) * SAMPLE_RATE / rate)
            self.lost_samples += k
            if self.metrics is not None:
                self.metrics.source_lost_samples.labels(self.stream).inc(k)
            sess.lost += k
            sess.out_pos += k
            sess.in_pos = pos
        elif pos < sess.in_pos - tol:  # behind what we already placed: drop the overlap
            skip = min(n, sess.in_pos - pos)
            k = round(skip * SAMPLE_RATE / rate)
            self.dropped_samples += k
            if self.metrics is not None:
                self.metrics.source_dropped_samples.labels(self.stream).inc(k)
            x = x[skip:]
        if x.shape[0] == 0:
            return
        sess.in_pos += x.shape[0]
        sess.audio_s += x.shape[0] / rate
        if sess.first_arrival is None:
            sess.first_arrival = arrival
        # the lower envelope of the capture time of the session's sample 0, over drift_window
        est = arrival - sess.in_pos / rate
        env = sess.env
        while env and env[-1][1] >= est:
            env.pop()
        env.append((arrival, est))
        while env[0][0] < arrival - self.drift_window:
            env.popleft()
        # convert ~0.1 s at a time: per-call overhead dominates for 20-ms AAC frames
        sess.pending.append(x)
        sess.pending_n += x.shape[0]
        if sess.pending_n >= rate // 10:
            self._flush(sess, emit)
        if not sess.settled and arrival - sess.first_arrival >= self.settle:
            self._settle(sess, emit)

    def _flush(self, sess: _Session, emit: Emit, last: bool = False) -> None:
        """Convert the pending input and place it (or hold it while the session settles)."""
        if sess.conv is None or not (sess.pending or last):
            return
        if not sess.pending:  # only the resampler's tail
            x = np.zeros((0, 1), np.float32)
        else:
            x = sess.pending[0] if len(sess.pending) == 1 else np.concatenate(sess.pending)
        sess.pending, sess.pending_n = [], 0
        y = sess.conv(x, last=last)
        if y.size == 0:
            return
        off, lost = sess.out_pos, sess.lost
        sess.out_pos += y.shape[0]
        sess.lost = 0
        if sess.settled:
            self._put(sess, off, lost, y, emit)
        else:
            sess.held.append((off, lost, y))

    def _settle(self, sess: _Session, emit: Emit) -> None:
        """The envelope has seen live pace: place what was held."""
        sess.settled = True
        for off, lost, y in sess.held:
            self._put(sess, off, lost, y, emit)
        sess.held.clear()

    def _end_session(self, sess: _Session, emit: Emit) -> None:
        """Deliver what a session still holds (its resampler's tail too), even unsettled."""
        if sess.first_arrival is None:
            return
        self._flush(sess, emit, last=True)
        if not sess.settled:
            self._settle(sess, emit)

    def _put(self, sess: _Session, off: int, lost: int, y: np.ndarray, emit: Emit) -> None:
        """Place a converted block whose first sample is ``off`` 16-kHz samples into the session."""
        reading = sess.env[0][1] + off / SAMPLE_RATE
        tl = self.timeline
        pl = tl.place(y.shape[0], reading, lost=lost, brk=sess.brk)
        sess.brk = None
        if pl.piece is not None and tl.pieces > 1:
            log.info("new timeline piece", stream=self.stream,
                     cause=pl.piece.cause, gap_s=round(pl.piece.gap_s, 3))
            if self.metrics is not None:
                self.metrics.timeline_pieces.labels(self.stream, pl.piece.cause).inc()
        if not np.isfinite(y).all():
            y = np.nan_to_num(y, nan=0.0, posinf=0.0, neginf=0.0)
        y = np.clip(y, -1.0, 1.0)
        emit(Frame(self.stream, pl.index, pl.utc, self._seq, y, pl.piece))
        self._seq += 1
