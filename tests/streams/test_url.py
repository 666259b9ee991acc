"""`source: url` against real servers on loopback: GStreamer's RTSP server (G.711 µ-law 8 kHz,
AAC 48 kHz stereo, a generated recording with an event, a video-only mount, Basic auth), an
HTTP AAC stream, a stalling proxy and a server that speaks garbage."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import structlog

from streams.url import UrlSource, redact_url, url_with_credentials

from .servers import (
    VIDEO_ONLY,
    AdtsHttpServer,
    GarbageServer,
    RtspServer,
    TcpProxy,
    adts_frames,
    adts_tone,
    tone_aac,
    tone_mulaw,
    wav_mulaw,
)

ROOT = Path(__file__).resolve().parents[2]
SR = 16000


@pytest.fixture(scope="module")
def rtsp():
    srv = RtspServer([
        {"path": "/mulaw", "launch": tone_mulaw(440, 0.5)},
        {"path": "/aac", "launch": tone_aac(1000, 0.3)},
        {"path": "/video", "launch": VIDEO_ONLY},
        # two audio tracks, as on cameras with a second microphone / an NVR with two inputs
        {"path": "/two", "launch": f"{tone_mulaw(440, 0.5)} "
                                   f"{tone_mulaw(1500, 0.5).replace('pay0', 'pay1')}"},
        # a fifth of the 100-ms buffers dropped before the payloader: RTP timestamp jumps
        {"path": "/drops", "launch": "audiotestsrc is-live=true freq=440 volume=0.5 "
                                     "samplesperbuffer=800 ! audio/x-raw,rate=8000,channels=1 ! "
                                     "identity drop-probability=0.2 ! mulawenc ! "
                                     "rtppcmupay name=pay0"},
    ]).start()
    yield srv
    srv.kill()


@pytest.fixture(scope="module")
def rtsp_auth():
    srv = RtspServer([{"path": "/cam", "user": "admin", "password": "hunter2-Secret",
                       "launch": tone_mulaw(440, 0.5)}]).start()
    yield srv
    srv.kill()


class Run:
    """A source on its own thread, collecting frames."""

    def __init__(self, src: UrlSource) -> None:
        self.src = src
        self.frames: list = []
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.t = threading.Thread(target=self._main, daemon=True)
        self.t.start()

    def _main(self) -> None:
        try:
            self.src.run(self.frames.append, self.stop)
        except BaseException as e:  # noqa: BLE001 - the test asserts there is none
            self.error = e

    def wait(self, cond, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if cond():
                return True
            time.sleep(0.05)
        return cond()

    def finish(self) -> None:
        self.stop.set()
        self.t.join(10)
        assert not self.t.is_alive()
        assert self.error is None, repr(self.error)

    def audio(self) -> np.ndarray:
        """The frames laid out on the sample clock (gaps as zeros)."""
        f0 = self.frames[0].sample_index
        end = max(f.end_index for f in self.frames)
        out = np.zeros(end - f0, np.float32)
        for f in self.frames:
            out[f.sample_index - f0:f.end_index - f0] = f.samples
        return out


def dominant_hz(x: np.ndarray) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    return float(np.argmax(spec) * SR / x.size)


def rms_db(x: np.ndarray) -> float:
    return float(20 * np.log10(np.sqrt(np.mean(x.astype(np.float64) ** 2)) + 1e-12))


# ---------------------------------------------------------------- unit: URLs and credentials
def test_redact_url_hides_credentials_and_query():
    assert redact_url("rtsp://admin:pw@10.0.0.5:554/Streaming/Channels/101?token=abc") == \
        "rtsp://***@10.0.0.5:554/Streaming/Channels/101?***"
    assert redact_url("rtsp://frigate:8554/front_door") == "rtsp://frigate:8554/front_door"
    assert "pw" not in redact_url("http://u:pw@host/x")
    u = url_with_credentials("rtsp://cam:554/live", "ad min:p@ss:w/rd")
    assert u == "rtsp://ad%20min:p%40ss%3Aw%2Frd@cam:554/live"


def test_config_reads_credentials_from_env_and_file_and_refuses_them_in_the_url(tmp_path,
                                                                                   monkeypatch):
    from edge.config import ConfigError, load_settings

    monkeypatch.setenv("CAM1_CRED", "admin:env-secret")
    f = tmp_path / "cam2.cred"
    f.write_text("viewer:file-secret\n")
    s = load_settings(data={"streams": [
        {"id": "cam1", "source": "url", "url": "rtsp://10.0.0.5/live",
         "url_credentials_env": "CAM1_CRED"},
        {"id": "cam2", "source": "url", "url": "rtsp://10.0.0.6/live",
         "url_credentials_file": str(f), "transport": "udp", "track": 1},
    ]})
    assert s.streams[0].url_credentials.get_secret_value() == "admin:env-secret"
    assert s.streams[1].url_credentials.get_secret_value() == "viewer:file-secret"
    assert "env-secret" in s.secrets() and "file-secret" in s.secrets()
    with pytest.raises(ConfigError) as e:
        load_settings(data={"streams": [{"id": "c", "source": "url",
                                         "url": "rtsp://admin:inline-pw@10.0.0.5/live"}]})
    assert "not in the URL" in str(e.value) and "inline-pw" not in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_settings(data={"streams": [{"id": "c", "source": "url", "url": "rtsp://h/x",
                                         "url_credentials_env": "NOT_SET_ANYWHERE_X"}]})
    assert "NOT_SET_ANYWHERE_X is not set" in str(e.value)
    with pytest.raises(ConfigError):
        load_settings(data={"streams": [{"id": "c", "source": "url"}]})


def test_cameras_example_config_is_valid(monkeypatch):
    from edge.config import load_settings

    monkeypatch.setenv("DOCK_CAM_CRED", "viewer:dock-pw")
    s = load_settings(ROOT / "configs" / "cameras.yaml")
    assert [st.source for st in s.streams] == ["url", "url", "url"]
    assert s.streams[0].url_credentials.get_secret_value() == "viewer:dock-pw"


# ---------------------------------------------------------------- RTSP: the audio is right
@pytest.mark.parametrize("path,hz,db,codec", [
    ("/mulaw", 440.0, -9.0, "pcm_mulaw, 8000 Hz, 1 ch"),  # G.711 µ-law 8 kHz, sine at 0.5
    ("/aac", 1000.0, -13.5, "aac, 48000 Hz, 2 ch"),  # AAC 48 kHz stereo, sine at 0.3
])
def test_rtsp_tone_arrives_at_16k_mono_with_its_level_frequency_and_time(rtsp, path, hz, db,
                                                                         codec):
    n_before = len([p for p in rtsp.playing if p[0] == path])
    r = Run(UrlSource("cam", rtsp.url(path), settle=0.5))
    assert r.wait(lambda: sum(f.samples.size for f in r.frames) >= 2 * SR, 10)
    r.finish()
    x = r.audio()
    assert x.size >= 2 * SR
    seg = x[SR // 2:]  # past the resampler's start-up
    assert abs(rms_db(seg) - db) < 1.0
    assert abs(dominant_hz(seg) - hz) < 5.0
    # contiguous on the sample clock, capture times follow it
    f = r.frames
    assert all(a.end_index == b.sample_index for a, b in zip(f, f[1:]))
    assert all(abs(b.capture_time - a.capture_time - (b.sample_index - a.sample_index) / SR) < 1e-6
               for a, b in zip(f, f[1:]))
    # the first sample's UTC is when the server's pipeline started playing
    t_play = rtsp.wait_playing(path, n_before + 1)
    assert abs(f[0].capture_time - t_play) < 0.25
    st = r.src.status()["cam"]
    assert st["track"] == f"audio track 0: {codec}" and st["connects"] == 1
    assert r.src.failures == {} and st["corrupt_packets"] == 0


@pytest.mark.parametrize("track,transport,hz", [(None, "tcp", 440.0), (1, "tcp", 1500.0),
                                                (1, "udp", 1500.0)])
def test_rtsp_track_selection_and_udp_transport(rtsp, track, transport, hz):
    r = Run(UrlSource("cam", rtsp.url("/two"), track=track, transport=transport, settle=0.3))
    assert r.wait(lambda: sum(f.samples.size for f in r.frames) >= SR, 10)
    r.finish()
    assert abs(dominant_hz(r.audio()[SR // 4:]) - hz) < 5.0
    assert r.src.status()["cam"]["track"].startswith(f"audio track {track or 0}: pcm_mulaw")


def test_track_by_language_and_clear_errors_when_missing():
    from streams.url import NoAudioTrack, Track, select_track

    ts = [Track(0, 1, "aac", 48000, 2, "eng"), Track(1, 2, "aac", 48000, 2, "deu")]
    assert select_track(ts, None, "DEU").index == 1
    assert select_track(ts, None, None).index == 0
    with pytest.raises(NoAudioTrack, match="no audio track in language 'fra'"):
        select_track(ts, None, "fra")
    with pytest.raises(NoAudioTrack, match="audio track 2 requested, the input has 2"):
        select_track(ts, 2, None)
    with pytest.raises(NoAudioTrack, match="the input has no audio track"):
        select_track([], None, None)


# ---------------------------------------------------------------- faults
def test_wrong_password_is_one_line_retried_slowly_and_never_leaks(rtsp_auth, capfd):
    from prometheus_client import generate_latest

    from edge.metrics import Metrics

    m = Metrics()
    src = UrlSource("porch", rtsp_auth.url("/cam"), credentials="admin:wrong-Passw0rd",
                    fatal_retry=0.4, jitter=0.0, metrics=m)
    with structlog.testing.capture_logs() as logs:
        r = Run(src)
        assert r.wait(lambda: src.failures.get("auth", 0) >= 3, 10)
        st = src.status()["porch"]
        r.finish()
    assert r.frames == []
    errors = [e for e in logs if e["log_level"] in ("error", "warning")]
    assert len(errors) == 1, errors  # one line, not one per attempt
    assert "porch" in errors[0]["event"] and "login refused" in errors[0]["event"]
    # bounded: 0.4 s apart (the first try is immediate)
    assert src.failures["auth"] <= 5
    assert st["state"] == "failed" and st["error_kind"] == "auth"
    metrics = generate_latest(m.registry).decode()
    assert m.source_errors.labels("porch", "auth")._value.get() == src.failures["auth"]
    assert m.source_up.labels("porch")._value.get() == 0
    out = capfd.readouterr()
    for text in (str(logs), str(st), out.out, out.err, metrics):
        assert "wrong-Passw0rd" not in text and "admin:" not in text


def test_right_password_from_credentials_streams(rtsp_auth):
    r = Run(UrlSource("porch", rtsp_auth.url("/cam"), credentials="admin:hunter2-Secret",
                      settle=0.3))
    assert r.wait(lambda: len(r.frames) >= 5, 10)
    r.finish()
    assert r.src.status()["porch"]["url"] == rtsp_auth.url("/cam")


def test_url_without_audio_is_a_clear_state(rtsp):
    src = UrlSource("garage", rtsp.url("/video"), fatal_retry=30.0)
    with structlog.testing.capture_logs() as logs:
        r = Run(src)
        assert r.wait(lambda: src.state == "failed", 15)
        st = src.status()["garage"]
        r.finish()
    assert st["error_kind"] == "no_audio" and "no audio track" in st["error"]
    assert [e["event"] for e in logs if e["log_level"] == "error"] == [
        ("stream garage: the input has no audio track; retrying in "
         f"{logs[-1]['event'].rsplit('in ', 1)[1]}")]


def test_garbage_bytes_are_network_errors_retried_with_growing_backoff():
    g = GarbageServer()
    try:
        src = UrlSource("junk", f"rtsp://127.0.0.1:{g.port}/x", backoff_initial=0.1,
                        backoff_max=0.4, jitter=0.0, open_timeout=2.0, stall_timeout=1.0)
        r = Run(src)
        assert r.wait(lambda: sum(src.failures.values()) >= 4, 15)
        r.finish()
        assert r.frames == []
        assert src.state in ("retrying", "stopped") and src.error_kind not in ("auth", None)
        assert g.connections >= 4
    finally:
        g.close()


class _RecordingStop(threading.Event):
    """The stop event the source waits on between attempts: records each retry delay."""

    def __init__(self) -> None:
        super().__init__()
        self.waits: list[float] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(float(timeout or 0.0))
        return super().wait(timeout)


def test_a_camera_that_drops_right_after_sending_some_audio_is_retried_with_growing_backoff():
    """A flapping camera (or a restream of a dead one) that sends a fraction of a second of
    audio and closes, every time: the backoff must still grow and the failure be logged once,
    not one reconnect and one warning per second forever."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    data = adts_tone(660.0, 0.4, seconds=0.3)

    class H(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "audio/aac")
            self.end_headers()
            self.wfile.write(data)  # then the connection closes: EOF after 0.3 s of audio

        def log_message(self, *a) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        src = UrlSource("flappy", f"http://127.0.0.1:{httpd.server_address[1]}/a.aac",
                        backoff_initial=0.05, backoff_max=0.4, jitter=0.0, settle=0.1)
        stop, frames = _RecordingStop(), []
        t = threading.Thread(target=src.run, args=(frames.append, stop), daemon=True)
        with structlog.testing.capture_logs() as logs:
            t.start()
            end = time.monotonic() + 20
            while len(stop.waits) < 5 and time.monotonic() < end:
                time.sleep(0.05)
            stop.set()
            t.join(10)
        assert not t.is_alive()
        assert frames, "the sessions did deliver audio"
        assert stop.waits[:5] == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.4])
        warnings = [e for e in logs if e["log_level"] in ("warning", "error")]
        assert len(warnings) == 1, warnings
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_stalled_stream_reconnects_and_the_stall_is_a_gap(rtsp):
    proxy = TcpProxy(rtsp.port)
    try:
        src = UrlSource("cam", f"rtsp://127.0.0.1:{proxy.port}/mulaw", stall_timeout=0.8,
                        backoff_initial=0.2, jitter=0.0, settle=0.3)
        r = Run(src)
        assert r.wait(lambda: len(r.frames) >= 5, 10)
        proxy.frozen.set()
        t_freeze = time.time()
        assert r.wait(lambda: src.failures.get("stall", 0) >= 1, 5)
        proxy.drop_connections()
        proxy.frozen.clear()
        n = len(r.frames)
        assert r.wait(lambda: len(r.frames) >= n + 5 and src.state == "streaming", 10)
        t_back = time.time()
        r.finish()
        assert src.reconnects >= 1
        f = r.frames
        jumps = [(a, b) for a, b in zip(f, f[1:]) if b.sample_index != a.end_index]
        assert len(jumps) == 1  # one gap, where the stall was
        a, b = jumps[0]
        gap_s = (b.sample_index - a.end_index) / SR
        assert 0.5 < gap_s < t_back - t_freeze + 0.5
        assert b.sample_index > a.end_index  # never back in time
        assert src.status()["cam"]["failures"]["stall"] >= 1
    finally:
        proxy.close()


def test_audio_that_stops_while_the_video_goes_on_is_a_stall_and_stop_is_prompt():
    """A camera whose audio track goes quiet on the wire (encoder glitch, a restream that lost
    its audio input) while its video keeps flowing: no audio packet for stall_timeout is a
    stall (reconnect), not `streaming` forever; and stopping does not wait for audio."""
    # 20 buffers of 1024 samples at 8 kHz: 2.5 s of audio per connection, then video only
    audio = tone_mulaw(440, 0.5).replace("is-live=true", "is-live=true num-buffers=20")
    srv = RtspServer([{"path": "/av", "launch": f"{VIDEO_ONLY} {audio.replace('pay0', 'pay1')}"}
                      ]).start()
    try:
        # the video set up too (RTSP's default here is audio only: see the next test), as
        # it is for an HTTP/MPEG-TS restream
        src = UrlSource("yard", srv.url("/av"), stall_timeout=1.0, backoff_initial=0.2,
                        jitter=0.0, settle=0.3, options={"allowed_media_types": "video+audio"})
        r = Run(src)
        assert r.wait(lambda: len(r.frames) >= 5, 15)
        assert r.wait(lambda: src.failures.get("stall", 0) >= 1, 10), (src.state, src.failures)
        assert r.wait(lambda: src.reconnects >= 1 and src.state == "streaming", 15)
        t0 = time.monotonic()
        r.stop.set()
        r.t.join(5)
        assert not r.t.is_alive() and time.monotonic() - t0 < 3.0
        r.finish()
    finally:
        srv.kill()


def test_rtsp_sets_up_only_the_audio_of_a_camera():
    """A camera's RTSP session carries video too: the source asks for the audio media only
    (``allowed_media_types=audio``), so the video never crosses the network nor the demuxer."""
    from streams.url import open_input

    srv = RtspServer([{"path": "/cam", "launch": f"{VIDEO_ONLY} "
                                                 f"{tone_aac(1000, 0.3).replace('pay0', 'pay1')}"}
                      ]).start()
    try:
        c = open_input(srv.url("/cam"))
        try:
            assert [st.type for st in c.streams] == ["audio"]
            assert any(p.stream.type == "audio" for p, _ in zip(c.demux(), range(5)))
        finally:
            c.close()
        c = open_input(srv.url("/cam"), options={"allowed_media_types": "video+audio"})
        try:  # what the camera offers, when asked for everything
            assert sorted(st.type for st in c.streams) == ["audio", "video"]
        finally:
            c.close()
        src = UrlSource("cam", srv.url("/cam"), settle=0.3)
        r = Run(src)
        assert r.wait(lambda: sum(f.samples.size for f in r.frames) >= SR, 15)
        r.finish()
        assert abs(dominant_hz(r.audio()[-SR // 2:]) - 1000.0) < 5.0
    finally:
        srv.kill()


# ---------------------------------------------------------------- HTTP (Icecast-like)
def test_http_aac_stream_with_garbage_between_loops():
    data = adts_tone(660.0, 0.4, seconds=1.0)
    srv = AdtsHttpServer(data, seconds=1.0, garbage=300)
    try:
        src = UrlSource("radio", srv.url(), settle=0.3)
        r = Run(src)
        assert r.wait(lambda: sum(f.samples.size for f in r.frames) >= int(3.2 * SR), 15)
        r.finish()
        x = r.audio()
        seg = x[SR // 2:SR // 2 + SR // 2]
        assert abs(dominant_hz(seg) - 660.0) < 5.0
        assert abs(rms_db(seg) - 20 * np.log10(0.4 / np.sqrt(2))) < 1.5
        st = src.status()["radio"]
        assert st["track"].startswith("audio track 0: aac, 44100 Hz, 1 ch")
        assert src.connects == 1  # garbage does not drop the connection
        assert st["corrupt_packets"] >= 1  # it is counted and skipped
    finally:
        srv.close()


def test_http_burst_on_connect_is_audio_from_the_past_not_squeezed():
    """Icecast sends its buffered audio (``burst-size``) at once on connect, then real time.
    The burst is the seconds before the connection: the timeline stamps it there and the
    stream stays contiguous on one piece (not squeezed into the moment it arrived, and the
    live audio after it not pushed late by the burst's length)."""
    data = adts_tone(660.0, 0.4, seconds=1.0)
    loop_s = len(adts_frames(data)) * 1024 / 44100  # what one loop decodes to (1.045 s)
    srv = AdtsHttpServer(data, seconds=loop_s, burst=4)
    try:
        src = UrlSource("radio", srv.url(), settle=1.0)
        r = Run(src)
        assert r.wait(lambda: sum(f.samples.size for f in r.frames) >= 7 * SR, 20)
        r.finish()
    finally:
        srv.close()
    t_req = srv.requests[0]
    f0 = r.frames[0]
    # the first sample was captured 4 loops before the request; the server paces in 50-ms
    # chunks sent at their start, and AAC adds its frame delay: within 0.15 s
    assert abs(f0.capture_time - (t_req - 4 * loop_s)) < 0.15, f0.capture_time - t_req
    assert all(a.end_index == b.sample_index for a, b in zip(r.frames, r.frames[1:]))
    for f in r.frames:  # every sample at its place on the one clock, burst and live alike
        expect = f0.capture_time + (f.sample_index - f0.sample_index) / SR
        assert abs(f.capture_time - expect) < 0.05, (f.sample_index, f.capture_time - expect)
    assert next(f.piece.cause for f in r.frames if f.piece is not None) == "start"
    x = r.audio()
    assert abs(dominant_hz(x[SR:2 * SR]) - 660.0) < 5.0  # burst audio decoded, not skipped


# ---------------------------------------------------------------- RTP timestamps
def test_rtp_timestamp_jumps_are_gaps_on_the_sample_clock_and_in_metrics(rtsp):
    from edge.metrics import Metrics

    m = Metrics()
    src = UrlSource("cam", rtsp.url("/drops"), settle=0.3, metrics=m)
    r = Run(src)
    assert r.wait(lambda: src.lost_samples >= 5 * 1600, 20)
    r.finish()
    # each 100-ms buffer the server dropped is a jump of 800 in the RTP timestamps: 1600
    # samples of gap on the 16-kHz clock, never squeezed-together audio
    assert src.lost_samples % 1600 == 0
    gaps = sum(b.sample_index - a.end_index for a, b in zip(r.frames, r.frames[1:]))
    # on the sample clock as gaps (a loss just before the stop may not be placed yet)
    assert gaps >= 3 * 1600 and gaps <= src.lost_samples and gaps % 1600 == 0
    assert m.registry.get_sample_value("fe_source_lost_samples_total",
                                       {"stream": "cam"}) == src.lost_samples
    assert src.status()["cam"]["lost_samples"] == src.lost_samples
    x = r.audio()
    assert abs(dominant_hz(x[:SR // 2]) - 440.0) < 5.0  # the audio between the gaps: untouched


def test_audio_behind_the_placed_timestamps_is_dropped_and_counted():
    """A sender that repeats timestamps (a jump back, duplicated packets): the overlap is
    dropped, counted in ``fe_source_dropped_samples``, and the sample clock stays contiguous."""
    import fractions

    import av

    from edge.metrics import Metrics
    from streams.url import _Session

    m = Metrics()
    now = [1_800_000_000.0]
    src = UrlSource("cam", "rtsp://camera/live", clock=lambda: now[0], settle=0.2, metrics=m)
    sess = _Session()
    frames: list = []
    rate, n = 8000, 800
    for pts in [0, 800, 1600, 2000, 2800]:  # 2000: its first 400 samples were placed already
        fr = av.AudioFrame.from_ndarray(np.full((1, n), 1000, np.int16), format="s16",
                                        layout="mono")
        fr.sample_rate, fr.pts, fr.time_base = rate, pts, fractions.Fraction(1, rate)
        now[0] += 0.1
        src._place(sess, fr, now[0], frames.append)
    src._end_session(sess, frames.append)
    assert src.dropped_samples == 400 * 2  # at 16 kHz
    assert m.registry.get_sample_value("fe_source_dropped_samples_total",
                                       {"stream": "cam"}) == 800
    assert src.lost_samples == 0
    assert all(a.end_index == b.sample_index for a, b in zip(frames, frames[1:]))
    assert abs(sum(f.samples.size for f in frames) - 3600 * 2) <= 2  # 0..3600 once each


# ---------------------------------------------------------------- the daemon, end to end
def _recording(path: Path, event_at: float, seconds: float = 20.0) -> None:
    """Quiet noise with a 1-kHz beep (-6 dBFS peak) from ``event_at`` for 0.3 s."""
    rate = 8000
    rng = np.random.default_rng(0)
    x = 0.01 * rng.standard_normal(int(seconds * rate))
    i0, i1 = int(event_at * rate), int((event_at + 0.3) * rate)
    x[i0:i1] += 0.5 * np.sin(2 * np.pi * 1000 * np.arange(i1 - i0) / rate)
    sf.write(str(path), x.astype(np.float32), rate, subtype="PCM_16")


def test_daemon_camera_alert_carries_the_event_utc_across_a_server_restart(tmp_path):
    import json
    import sqlite3
    import urllib.request
    from datetime import datetime

    from edge.config import load_settings
    from edge.daemon import Daemon
    from edge.sinks import CallbackSink

    wav = tmp_path / "event.wav"
    event_at = 2.0
    _recording(wav, event_at)
    mounts = [{"path": "/event", "launch": wav_mulaw(wav)}]
    srv = RtspServer(mounts).start()
    port = srv.port
    s = load_settings(data={
        "data_dir": str(tmp_path / "data"),
        "streams": [{"id": "cam", "source": "url", "url": srv.url("/event"),
                     "stall_timeout": "1s"}],
        "monitors": [{"name": "beep", "kind": "gate", "triggers": ["peak_dbfs > -12"],
                      "cooldown": "1s"}],
        "alerts": {"mqtt": {"enabled": False}},
        "http": {"enabled": True, "port": 0},
    })
    got: list = []
    # sinks get an AudioSpan (read from the ring on demand): read it while it is there
    d = Daemon(s, sinks=[CallbackSink(lambda r, a, sr: got.append((r, a.read(), sr)))],
               log_results=False)
    srv2 = None
    db = tmp_path / "data" / "history.sqlite3"

    def alerts() -> list[dict]:
        if not db.exists():
            return []
        with sqlite3.connect(db) as c:
            return [json.loads(p) for (p,) in c.execute("SELECT payload FROM alerts")]

    try:
        d.start()
        srv.wait_playing("/event")
        time.sleep(1.5)  # before the event: kill the server mid-stream
        srv.kill()
        srv2 = RtspServer(mounts, port=port).start()
        t_play2 = srv2.wait_playing("/event", timeout=15)
        event_utc = t_play2 + event_at
        end = time.monotonic() + 30
        while time.monotonic() < end and not alerts():
            time.sleep(0.1)
        http = f"http://127.0.0.1:{d.http_endpoint.port}"
        health = json.loads(urllib.request.urlopen(f"{http}/healthz").read())
        metrics = urllib.request.urlopen(f"{http}/metrics").read().decode()
    finally:
        d.stop()
        srv.kill()
        if srv2 is not None:
            srv2.kill()
    pos = [(r, a, sr) for r, a, sr in got if r.positive]
    assert pos, [r.verdict for r, _, _ in got]
    r, audio, sr = pos[0]
    assert sr == SR and audio.size == round((r.end - r.start).total_seconds() * SR)
    # the beep is in the clip where the result says it is
    onset = int(np.argmax(np.abs(audio) > 0.25))
    t_onset = r.start.timestamp() + onset / SR
    assert abs(t_onset - event_utc) < 0.3, (t_onset - event_utc)
    assert dominant_hz(audio[onset:onset + 4000]) == pytest.approx(1000, abs=10)
    # and the alert that left the pipeline carries that span
    [alert] = alerts()
    a_start = datetime.fromisoformat(alert["start"].replace("Z", "+00:00")).timestamp()
    a_end = datetime.fromisoformat(alert["end"].replace("Z", "+00:00")).timestamp()
    assert (alert["stream"], alert["monitor"]) == ("cam", "beep")
    assert a_start == pytest.approx(r.start.timestamp(), abs=1e-3)
    assert a_start < event_utc < a_end
    # the downtime is a gap (silence on the clock), not squeezed audio
    m = d.metrics
    assert m.gap_samples.labels("cam")._value.get() >= 0.5 * SR
    assert m.source_reopens.labels("cam")._value.get() >= 1
    src = health["streams"]["cam"]["source"]
    assert src["state"] == "streaming" and src["reconnects"] >= 1
    assert src["url"] == f"rtsp://127.0.0.1:{port}/event"
    assert 'fe_source_up{stream="cam"} 1.0' in metrics
    assert 'fe_source_errors_total{reason="eof",stream="cam"}' in metrics or \
        'fe_source_errors_total{reason="network",stream="cam"}' in metrics


# ---------------------------------------------------------------- probe
def test_probe_prints_tracks_and_a_level_meter(rtsp):
    p = subprocess.run([sys.executable, "-m", "edge", "probe", rtsp.url("/mulaw"),
                        "--seconds", "1.5"], check=False, capture_output=True, text=True, timeout=30,
                       cwd=ROOT)
    assert p.returncode == 0, p.stderr
    assert "audio track 0: pcm_mulaw, 8000 Hz, 1 ch" in p.stdout
    levels = [float(line.split()[0]) for line in p.stdout.splitlines()
              if line.strip().endswith("dBFS") or " dBFS " in line]
    assert levels and all(abs(v - (-9.0)) < 2.0 for v in levels[1:]), p.stdout


def test_probe_wrong_url_is_one_line(rtsp):
    p = subprocess.run([sys.executable, "-m", "edge", "probe", rtsp.url("/nothing-here"),
                        "--seconds", "1"], check=False, capture_output=True, text=True, timeout=30,
                       cwd=ROOT)
    assert p.returncode != 0
    assert p.stderr.strip().count("\n") == 0 and "not found" in p.stderr


def test_probe_of_a_camera_whose_audio_stopped_ends_on_time_and_says_so():
    audio = tone_mulaw(440, 0.5).replace("is-live=true", "is-live=true num-buffers=4")
    srv = RtspServer([{"path": "/av", "launch": f"{VIDEO_ONLY} {audio.replace('pay0', 'pay1')}"}
                      ]).start()
    try:
        p = subprocess.run([sys.executable, "-m", "edge", "probe", srv.url("/av"),
                            "--seconds", "2", "--timeout", "30"], check=False,
                           capture_output=True, text=True, timeout=20, cwd=ROOT)
    finally:
        srv.kill()
    assert "audio track 0: pcm_mulaw, 8000 Hz, 1 ch" in p.stdout
    assert p.returncode == 2 and "no audio" in p.stderr, (p.stdout, p.stderr)


# ---------------------------------------------------------------- timeline: clock drift
@pytest.mark.parametrize("ppm", [+1000, -1000])  # the camera's clock 0.1 % fast / slow
def test_sender_clock_drift_is_followed_by_the_timeline_never_by_resampling(ppm):
    import fractions

    import av

    from streams.timeline import PieceLog
    from streams.url import _Session

    t_cap0 = 1_800_000_000.0  # true UTC of the camera's first sample
    now = [t_cap0]
    src = UrlSource("cam", "rtsp://camera/live", clock=lambda: now[0], settle=0.5,
                    drift_window=5.0)
    sess = _Session()
    frames: list = []
    rate, n = 8000, 1024
    n_frames = int(60 * rate / n)  # a minute of the camera's samples
    for k in range(n_frames):
        fr = av.AudioFrame.from_ndarray(np.full((1, n), 1000 + k % 7, np.int16), format="s16",
                                        layout="mono")
        fr.sample_rate = rate
        fr.pts = k * n
        fr.time_base = fractions.Fraction(1, rate)
        # it arrives when its last sample was captured (true time), plus 0-30 ms of jitter
        now[0] = t_cap0 + (k + 1) * n / rate / (1 + ppm * 1e-6) + 0.03 * ((k * 7) % 5) / 4
        src._place(sess, fr, now[0], frames.append)
    src._end_session(sess, frames.append)
    log = PieceLog()
    for f in frames:
        if f.piece is not None:
            log.add(f.piece)
    i0 = frames[0].sample_index
    # the UTC the timeline gives each frame's first sample against when it was really captured
    # (output sample j is input sample j/2, captured at t_cap0 + j/16000 camera-seconds)
    err = [log.utc_of(f.sample_index) - (t_cap0 + (f.sample_index - i0) / SR / (1 + ppm * 1e-6))
           for f in frames]
    late = err[len(err) // 3:]
    # uncorrected the error grows to 60 ms over the minute; the timeline keeps it near its
    # 20-ms tolerance
    assert max(abs(e) for e in late) < 0.035, (min(late), max(late))
    causes = [p.cause for p in log.pieces()]
    assert causes[0] == "start" and "drift" in causes
    # the audio is untouched: contiguous on the sample index, every sample delivered
    assert all(a.end_index == b.sample_index for a, b in zip(frames, frames[1:]))
    assert abs(sum(f.samples.size for f in frames) - n_frames * n * SR // rate) <= 2
