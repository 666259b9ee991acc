"""Microphone source through an injected stream factory (no PortAudio needed)."""

import threading
import time

import numpy as np
import pytest

from edge.metrics import Metrics
from edge.ring import Ring
from streams.mic import MicSource


class FakeStream:
    """Stands in for sounddevice.InputStream; the test drives the callback."""

    def __init__(self, samplerate, callback, fail_start=False):
        self.samplerate = samplerate
        self.callback = callback
        self.fail_start = fail_start
        self.started = self.closed = False
        self.active = True

    def start(self):
        if self.fail_start:
            raise OSError("device unavailable")
        self.started = True

    def stop(self):
        self.active = False

    def close(self):
        self.closed = True

    def push(self, x):
        x = np.asarray(x, np.float32)
        self.callback(x.reshape(len(x), -1), len(x), None, None)


class Factory:
    def __init__(self, rate=16000, failures=0):
        self.rate = rate
        self.failures = failures
        self.streams = []
        self.calls = []

    def __call__(self, device, samplerate, channels, blocksize, callback):
        self.calls.append((device, samplerate, channels, blocksize))
        s = FakeStream(samplerate or self.rate, callback, fail_start=self.failures > 0)
        self.failures -= 1
        self.streams.append(s)
        return s


def wait_for(cond, timeout=5.0):
    t = time.time() + timeout
    while not cond() and time.time() < t:
        time.sleep(0.01)
    return cond()


class Clock:
    def __init__(self, t=1000.0):
        self.t = t

    def __call__(self):
        return self.t


def run_source(src):
    ring = Ring(16000 * 120)
    stop = threading.Event()
    th = threading.Thread(target=src.run,
                          args=(lambda f: ring.append(f.sample_index, f.samples), stop))
    th.start()
    return ring, stop, th


def test_callback_only_copies_and_counts_overflows():
    m = Metrics()
    src = MicSource("m", queue_blocks=2, metrics=m, stream_factory=Factory())
    buf = np.ones((160, 1), np.float32)
    for _ in range(5):
        src._callback(buf, 160, None, None)
    buf[:] = 0  # the queue holds copies, not views of PortAudio's buffer
    assert src._q.qsize() == 2 and src.overflows == 3
    assert np.all(src._q.get()[0] == 1)
    assert m.source_overflows.labels("m")._value.get() == 3


def test_frames_flow_and_device_name_or_index_is_passed():
    f = Factory()
    src = MicSource("m", device="3", samplerate=16000, stream_factory=f, clock=Clock())
    ring, stop, th = run_source(src)
    try:
        assert wait_for(lambda: f.streams and f.streams[0].started)
        for i in range(10):
            f.streams[0].push(np.full(1600, i / 10))
        assert wait_for(lambda: ring.write_pos == 16000)
    finally:
        stop.set()
        th.join(5)
    assert f.calls[0][0] == 3 and f.calls[0][3] == 1600  # "3" -> index 3; 100-ms blocks
    x = ring.read(0, 16000)
    assert np.allclose(x[1600:3200], 0.1)
    assert f.streams[0].closed
    src2 = MicSource("m", device="USB Audio", stream_factory=Factory())
    assert src2.device == "USB Audio"


def test_resamples_and_downmixes_device_audio():
    f = Factory(rate=48000)
    src = MicSource("m", channels=2, stream_factory=f, clock=Clock())
    ring, stop, th = run_source(src)
    try:
        assert wait_for(lambda: f.streams and f.streams[0].started)
        for _ in range(10):
            x = np.zeros((4800, 2), np.float32)
            x[:, 1] = 0.6
            f.streams[0].push(x)
        assert wait_for(lambda: ring.write_pos > 14000)
    finally:
        stop.set()
        th.join(5)
    assert np.allclose(ring.read(ring.write_pos - 4000, ring.write_pos), 0.3, atol=0.01)


def test_stall_is_detected_and_reopened_with_the_gap_as_silence():
    m = Metrics()
    f = Factory()
    clock = Clock(1000.0)
    src = MicSource("m", samplerate=16000, stall_timeout=0.2, backoff_initial=0.05,
                    stream_factory=f, metrics=m, clock=clock)
    ring, stop, th = run_source(src)
    try:
        assert wait_for(lambda: f.streams and f.streams[0].started)
        clock.t = 1000.1
        f.streams[0].push(np.full(1600, 0.5))  # first sample captured at t=1000.0
        assert wait_for(lambda: ring.write_pos == 1600)
        # the device goes silent: no callbacks -> stall -> close and reopen
        assert wait_for(lambda: len(f.streams) == 2 and f.streams[1].started)
        assert f.streams[0].closed
        clock.t = 1003.1  # 3 s later, audio again: first sample at t=1003.0
        f.streams[1].push(np.full(1600, 0.25))
        assert wait_for(lambda: ring.write_pos == 3 * 16000 + 1600)
    finally:
        stop.set()
        th.join(5)
    assert ring.gap_samples == 3 * 16000 - 1600
    assert np.allclose(ring.read(48000, 49600), 0.25)
    assert src.reopens >= 1 and m.source_reopens.labels("m")._value.get() >= 1


def test_overflowed_blocks_become_silence_so_the_clock_stays_on_wall_time():
    # blocks lost to a full queue must not shift everything after them earlier in time
    f = Factory()
    src = MicSource("m", samplerate=16000, queue_blocks=2, stream_factory=f, clock=Clock())
    ring = Ring(16000 * 120)
    stop, entered, release = threading.Event(), threading.Event(), threading.Event()

    def emit(fr):
        if not entered.is_set():  # hold the consumer on the first frame
            entered.set()
            release.wait(5)
        ring.append(fr.sample_index, fr.samples)

    th = threading.Thread(target=src.run, args=(emit, stop))
    th.start()
    try:
        assert wait_for(lambda: f.streams and f.streams[0].started)
        st = f.streams[0]
        st.push(np.full(1600, 0.1))  # A: taken, consumer held in emit
        assert entered.wait(5)
        for v in (0.2, 0.3, 0.4, 0.5):  # B, C queued; D, E overflow
            st.push(np.full(1600, v))
        assert src.overflows == 2
        release.set()
        assert wait_for(lambda: ring.write_pos == 3 * 1600)
        st.push(np.full(1600, 0.6))  # F: comes after the two lost blocks
        assert wait_for(lambda: ring.write_pos >= 6 * 1600)
    finally:
        release.set()
        stop.set()
        th.join(5)
    assert ring.write_pos == 6 * 1600
    assert ring.gap_samples == 2 * 1600
    x = ring.read(0, 6 * 1600)
    assert np.allclose(x[2 * 1600:3 * 1600], 0.3) and np.all(x[3 * 1600:5 * 1600] == 0)
    assert np.allclose(x[5 * 1600:], 0.6)


def test_vanished_device_reopens_and_open_failures_back_off():
    f = Factory(failures=2)
    src = MicSource("m", stall_timeout=5, backoff_initial=0.01, backoff_max=0.02,
                    stream_factory=f, clock=Clock())
    _ring, stop, th = run_source(src)
    try:
        assert wait_for(lambda: len(f.streams) >= 3 and f.streams[2].started)
        assert src.open_failures == 2
        f.streams[2].active = False  # device unplugged: PortAudio stops the stream
        assert wait_for(lambda: len(f.streams) >= 4 and f.streams[3].started)
    finally:
        stop.set()
        th.join(5)
    assert not th.is_alive()


def test_missing_portaudio_gives_an_actionable_error(monkeypatch):
    import builtins

    real = builtins.__import__

    def fake(name, *a, **k):
        if name == "sounddevice":
            raise OSError("PortAudio library not found")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)
    from streams.mic import sounddevice_factory

    try:
        sounddevice_factory(None, None, 1, 0, lambda *a: None)
    except RuntimeError as e:
        assert "mic" in str(e)
    else:
        raise AssertionError("expected RuntimeError")


def test_publisher_mic_device_index_given_as_text_is_an_index(monkeypatch):
    # `publish-audio --mic --device 3` passes "3"; sounddevice reads a string as a name
    # substring, so it must become the index 3 as it does for the daemon's mic streams
    import streams.mic
    from streams.publisher import mic_blocks

    f = Factory()
    monkeypatch.setattr(streams.mic, "sounddevice_factory", f)
    stop = threading.Event()
    gen = mic_blocks("3", stop=stop)

    def feed():
        assert wait_for(lambda: f.streams and f.streams[0].started)
        f.streams[0].push(np.full(1600, 0.5))

    th = threading.Thread(target=feed)
    th.start()
    block, rate, lost = next(gen)
    th.join(5)
    stop.set()
    gen.close()
    assert f.calls[0][0] == 3 and rate == 16000 and np.allclose(block, 0.5) and lost == 0


class _Status:
    """sounddevice.CallbackFlags as PortAudio reports a lost input buffer."""

    input_overflow = True

    def __bool__(self):
        return True


def test_portaudio_input_overflow_flag_becomes_silence_measured_by_the_callback_clock():
    """PortAudio itself lost input (its overflow flag): before, the flag was only counted and
    the next block was glued onto the previous one, shifting all later audio 0.3 s early."""
    f = Factory()
    clock = Clock(1000.1)
    src = MicSource("m", samplerate=16000, stream_factory=f, clock=clock)
    frames = []
    stop = threading.Event()
    th = threading.Thread(target=src.run, args=(frames.append, stop))
    th.start()
    try:
        assert wait_for(lambda: f.streams and f.streams[0].started)
        st = f.streams[0]
        st.push(np.full(1600, 0.1))  # captured 1000.0-1000.1
        clock.t = 1000.5  # 0.3 s of input lost inside PortAudio: the next block is 1000.4-1000.5
        st.callback(np.full((1600, 1), 0.2, np.float32), 1600, None, _Status())
        assert wait_for(lambda: len(frames) == 2)
    finally:
        stop.set()
        th.join(5)
    assert src.status_flags == 1
    assert frames[1].sample_index == 1600 + round(0.3 * 16000)
    assert abs(frames[1].capture_time - 1000.4) < 1e-6


# ------------------------------------------------------------------ a real PortAudio device
def _pulse_or_fail():
    from tests.pulse_server import available

    why = available()
    if why:
        pytest.fail(f"the mic tests need a private PulseAudio and PortAudio: {why}")


def test_real_microphone_vanishes_and_returns_on_the_timeline(tmp_path):
    """PortAudio's `pulse` device reads a private PulseAudio's null-sink monitor; `paplay`
    plays into it. Killing PulseAudio is the device vanishing. Two mic sources hear it: one
    whose gap bound is shorter than the absence (a new timeline piece with a fresh clip grid,
    no made-up silence) and one whose bound is longer (the absence becomes silence). Tones
    played before and after land on wall time."""
    _pulse_or_fail()
    import soundfile as sf

    from streams.timeline import PieceLog
    from tests.pulse_server import PulseServer

    tone = (0.5 * np.sin(np.arange(8000) * 2 * np.pi * 440 / 16000)).astype(np.float32)
    wav = tmp_path / "tone.wav"
    sf.write(wav, tone, 16000, subtype="PCM_16")
    with PulseServer(tmp_path) as pa:
        short = MicSource("m", device="pulse", samplerate=16000, stall_timeout=4.0,
                          backoff_initial=0.2, backoff_max=0.5, max_gap_s=1.0)
        long = MicSource("m", device="pulse", samplerate=16000, stall_timeout=4.0,
                         backoff_initial=0.2, backoff_max=0.5, max_gap_s=120.0)
        got: dict[str, list] = {"short": [], "long": []}
        stop = threading.Event()
        ths = [threading.Thread(target=s.run, args=(got[k].append, stop))
               for k, s in (("short", short), ("long", long))]
        for t in ths:
            t.start()

        def loud_after(k, t):
            return [f for f in got[k] if f.capture_time > t - 1 and np.abs(f.samples).max() > 0.2]

        try:
            assert wait_for(lambda: got["short"] and got["long"], 15), pa.log()[-2000:]
            t_play = time.time()
            pa.play(wav)  # returns when paplay has played it all
            t_played = time.time()
            assert wait_for(lambda: loud_after("short", t_play) and loud_after("long", t_play), 10)
            t_kill = time.time()
            pa.kill()
            time.sleep(2.0)
            pa.start()
            assert wait_for(lambda: short.reopens >= 1 and long.reopens >= 1, 15)
            n_short, n_long = len(got["short"]), len(got["long"])
            assert wait_for(lambda: len(got["short"]) > n_short + 5 and len(got["long"]) > n_long + 5,
                            15)
            t_play2 = time.time()
            pa.play(wav)
            t_played2 = time.time()
            assert wait_for(lambda: loud_after("short", t_play2) and loud_after("long", t_play2), 10)
        finally:
            stop.set()
            for t in ths:
                t.join(10)
    for k in ("short", "long"):
        # stamped on wall time: while paplay played it (from its start, less one block, to
        # its end; paplay itself may take seconds to start on a loaded machine)
        for t0, t1 in ((t_play, t_played), (t_play2, t_played2)):
            first = loud_after(k, t0)[0]
            assert t0 - 0.5 < first.capture_time < t1, (k, first.capture_time - t0, t1 - t0)
    log = PieceLog()
    for f in got["short"]:
        if f.piece is not None:
            log.add(f.piece)
    reopen = [p for p in log.pieces() if p.cause == "reopen"]
    assert reopen and reopen[0].fresh_grid and reopen[0].gap_s >= 1.5
    # no silence for an absence over the bound: the reopened piece starts right after the
    # last sample before it (a loaded machine may still lose a block now and then, < the bound)
    silence = {f.sample_index: f.sample_index - (e.sample_index + len(e.samples))
               for e, f in zip(got["short"], got["short"][1:])}
    assert silence[reopen[0].start] == 0 and max(silence.values()) < 1.0 * 16000
    away = long.timeline.gap_samples / 16000  # the absence became silence on the same piece
    fresh = [f.piece for f in got["long"] if f.piece is not None and f.piece.fresh_grid]
    assert len(fresh) == 1 and 1.5 < away < time.time() - t_kill  # (drift pieces may come and go)


def test_mic_stream_without_the_mic_extra_fails_at_start_in_one_line(tmp_path, monkeypatch):
    """It used to retry forever ("microphone None ... retrying in 16 s")."""
    import sys

    from click.testing import CliRunner

    from edge.cli import cli
    from edge.config import load_settings
    from edge.daemon import Daemon
    from edge.sources import SourceUnavailable

    monkeypatch.setitem(sys.modules, "sounddevice", None)  # `import sounddevice` fails
    cfg = tmp_path / "c.yaml"
    cfg.write_text("streams: [{id: desk, source: mic}]\nalerts: {mqtt: {enabled: false}}\n")
    t0 = time.monotonic()
    res = CliRunner().invoke(cli, ["run", "--config", str(cfg), "--data-dir", str(tmp_path)])
    assert res.exit_code == 1 and time.monotonic() - t0 < 10
    err = [x for x in res.output.splitlines() if x.startswith("Error:")]
    assert len(err) == 1 and "desk" in err[0] and "pip install 'flamingo-edge[mic]'" in err[0]
    assert "retrying" not in res.output
    d = Daemon(load_settings(cfg, data_dir=str(tmp_path)), http=False)
    with pytest.raises(SourceUnavailable, match="mic"):
        d.start()
    d.stop(timeout=1)
