"""MQTT source: sequencing and validation (unit), fuzzing, and a real mosquitto broker."""

import threading
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.mqtt_client import MqttConfig
from edge.metrics import Metrics
from edge.ring import Ring
from streams.mqtt import MqttAudioSource
from streams.protocol import REASONS, decode_frame, encode_frame
from tests.mqtt_broker import Mosquitto

N = 1600  # 100 ms frames at 16 kHz


def make(metrics=None, streams=("a",), port=1883):
    # synthetic capture times: taken as they are (no check against this machine's clock)
    src = MqttAudioSource(list(streams), MqttConfig(port=port, topic_prefix="fe"), metrics=metrics,
                          max_skew_s=None)
    ring = Ring(16000 * 60)
    frames = []

    def emit(f):
        frames.append(f)
        ring.append(f.sample_index, f.samples)

    src._emit = emit
    return src, ring, frames


def subscribed(client, topic):
    """Subscribe and wait for the broker's SUBACK: frames published before it are not
    delivered to ``client`` (a fixed sleep races it on a loaded machine)."""
    acked = threading.Event()
    client.on_subscribe = lambda *a: acked.set()
    client.subscribe(topic, qos=1)
    client.loop_start()
    assert acked.wait(10), "no SUBACK"


def frame(seq, value, n=N, rate=16000, fmt="float32"):
    return encode_frame(np.full(n, value, np.float32), rate, seq, seq * 100_000_000, fmt)


def test_in_order_frames_are_contiguous():
    src, ring, frames = make()
    for s in range(5):
        src.handle("fe/audio/a", frame(s, 0.1 * (s + 1)))
    assert ring.write_pos == 5 * N and ring.gap_samples == 0
    x = ring.read(0, 5 * N)
    for s in range(5):
        assert np.allclose(x[s * N:(s + 1) * N], 0.1 * (s + 1))
    assert [f.sample_index for f in frames] == [0, N, 2 * N, 3 * N, 4 * N]


def test_gap_becomes_silence_of_the_right_length_and_is_counted():
    m = Metrics()
    src, ring, _ = make(m)
    src.handle("fe/audio/a", frame(0, 0.5))
    src.handle("fe/audio/a", frame(3, 0.5))  # 1 and 2 lost
    assert ring.write_pos == 4 * N
    assert ring.gap_samples == 2 * N
    x = ring.read(0, 4 * N)
    assert np.all(x[N:3 * N] == 0) and np.allclose(x[3 * N:], 0.5)
    assert src.gaps == 1


def test_duplicates_and_late_frames_are_dropped_and_counted():
    m = Metrics()
    src, ring, _ = make(m)
    for s in (0, 1, 2):
        src.handle("fe/audio/a", frame(s, 0.2))
    src.handle("fe/audio/a", frame(2, 0.9))  # duplicate
    src.handle("fe/audio/a", frame(1, 0.9))  # late
    assert ring.write_pos == 3 * N and np.allclose(ring.read(0, 3 * N), 0.2)
    assert src.rejects == {"duplicate": 1, "late": 1}
    assert m.frames_dropped.labels("a", "duplicate")._value.get() == 1
    assert m.frames_dropped.labels("a", "late")._value.get() == 1


def test_sequence_wraparound_and_publisher_restart():
    src, ring, frames = make()
    src.handle("fe/audio/a", encode_frame(np.full(N, 0.1, np.float32), 16000, 2**32 - 1,
                                          0, "float32"))  # captured at 0.0 s, like seq 0 below
    src.handle("fe/audio/a", encode_frame(np.full(N, 0.1, np.float32), 16000, 0, 100_000_000,
                                          "float32"))  # wraps: next in order
    assert ring.write_pos == 2 * N and ring.gap_samples == 0
    # far ahead: 4999 lost frames (500 s, over max_gap_s) start a new timeline piece with a
    # fresh clip grid instead of 60 s of silence and a UTC 440 s off from then on
    src.handle("fe/audio/a", frame(5000, 0.1, n=N))
    assert ring.gap_samples == 0 and ring.write_pos == 3 * N
    p = frames[-1].piece
    assert p is not None and p.fresh_grid and p.cause == "gap" and p.start == 2 * N
    assert frames[-1].capture_time == 500.0 and abs(p.gap_s - 499.8) < 1e-6
    src.handle("fe/audio/a", frame(3, 0.3))  # far behind: publisher restarted
    assert src.rejects == {}
    assert frames[-1].piece is not None and frames[-1].piece.cause == "restart"
    assert frames[-1].capture_time == 0.3
    assert np.allclose(ring.read(ring.write_pos - N, ring.write_pos), 0.3)


def test_publisher_restart_from_seq_0_is_not_dropped_as_late():
    # publish-audio always starts at seq 0: a publisher restarted after 20 s of audio must not
    # have its next 20 s (up to late_window frames) thrown away as "late"
    m = Metrics()
    src, ring, frames = make(m)
    t0 = 1_700_000_000_000_000_000
    for s in range(200):  # 20 s
        src.handle("fe/audio/a", encode_frame(np.full(N, 0.1, np.float32), 16000, s,
                                              t0 + s * 100_000_000, "float32"))
    # restart 5 s after the last frame ended: seq 0 again, capture times move on
    t1 = t0 + 200 * 100_000_000 + 5_000_000_000
    for s in range(10):
        src.handle("fe/audio/a", encode_frame(np.full(N, 0.4, np.float32), 16000, s,
                                              t1 + s * 100_000_000, "float32"))
    assert src.rejects == {}
    assert src.accepted == 210
    # the 5 s the publisher was away became silence, so clip spans stay on wall time
    assert ring.gap_samples == 5 * 16000
    assert frames[200].sample_index == 200 * N + 5 * 16000
    assert np.allclose(ring.read(ring.write_pos - 10 * N, ring.write_pos), 0.4)
    # a genuinely late frame of the new session is still dropped
    src.handle("fe/audio/a", encode_frame(np.full(N, 0.9, np.float32), 16000, 3,
                                          t1 + 3 * 100_000_000, "float32"))
    assert src.rejects == {"late": 1}


def test_resampling_and_downmix_keep_the_clock():
    src, ring, _ = make()
    for s in range(20):
        x = np.zeros((4800, 2), np.float32)
        x[:, 0] = 0.4
        src.handle("fe/audio/a", encode_frame(x, 48000, s, 0, "int16"))
    # 2 s at 48 kHz -> ~2 s at 16 kHz (soxr keeps a small delay in its pipeline)
    assert abs(ring.write_pos - 32000) < 1000
    tail = ring.read(ring.write_pos - 8000, ring.write_pos)
    assert np.allclose(tail, 0.2, atol=0.01)


def test_unknown_stream_and_wrong_topic_rejected():
    m = Metrics()
    src, ring, _ = make(m)
    src.handle("fe/audio/zzz", frame(0, 0.1))
    src.handle("other/audio/a", frame(0, 0.1))
    assert src.rejects == {"unknown_stream": 2} and ring.write_pos == 0


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(
    st.binary(max_size=200),
    st.tuples(st.integers(0, 2**32 - 1), st.integers(1, 400),
              st.sampled_from([8000, 16000, 44100, 12345]),
              st.sampled_from(["int16", "float32"]), st.integers(-8, 8)),
), max_size=20))
def test_fuzz_handle_never_raises_and_counts_rejects(msgs):
    m = Metrics()
    src, _ring, frames = make(m)
    handled = 0
    for msg in msgs:
        if isinstance(msg, bytes):
            data = msg
        else:
            seq, n, rate, fmt, cut = msg
            try:
                data = encode_frame(np.full(n, 0.1, np.float32), rate, seq, 0, fmt)
            except Exception:  # noqa: BLE001, S112 - hypothesis draws unencodable frames; skip them
                continue
            if cut:
                data = data[:cut] if cut < 0 else data + b"\0" * cut
        src.handle("fe/audio/a", data)  # must not raise
        handled += 1
    assert set(src.rejects) <= set(REASONS) | {"duplicate", "late"}
    counted = sum(m.frames_dropped.labels("a", r)._value.get() for r in src.rejects)
    assert counted == sum(src.rejects.values())
    assert src.accepted + sum(src.rejects.values()) == handled
    assert all(np.isfinite(f.samples).all() for f in frames)


# ------------------------------------------------------------------ real broker
@pytest.fixture
def broker(tmp_path):
    with Mosquitto(tmp_path) as b:
        yield b


def test_against_real_mosquitto(broker):
    from streams.publisher import publish

    m = Metrics()
    src = MqttAudioSource(["mic-1"], MqttConfig(port=broker.port, topic_prefix="fe"), metrics=m)
    ring = Ring(16000 * 60)
    stop = threading.Event()
    t = threading.Thread(target=src.run, args=(lambda f: ring.append(f.sample_index, f.samples), stop))
    t.start()
    try:
        assert src.subscribed.wait(10), broker.log() if hasattr(broker, "log") else ""
        rng = np.random.default_rng(1)
        audio = rng.uniform(-0.5, 0.5, 16000 * 2).astype(np.float32)
        blocks = [(audio[i:i + N, None], 16000) for i in range(0, audio.size, N)]
        import paho.mqtt.client as mqtt

        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        pub.connect("127.0.0.1", broker.port)
        pub.loop_start()
        try:
            # drop frames 5 and 6 on the way, send frame 3 twice and garbage once
            sent = [b for i, b in enumerate(blocks) if i not in (5, 6)]
            publish(iter(sent[:3]), "mic-1", prefix="fe", speed=0, qos=1, client=pub)
            publish(iter([blocks[2]]), "mic-1", prefix="fe", speed=0, qos=1, client=pub,
                    seq_start=2)  # duplicate of seq 2
            pub.publish("fe/audio/mic-1", b"garbage", qos=1).wait_for_publish(5)
            publish(iter(blocks[3:5]), "mic-1", prefix="fe", speed=0, qos=1, client=pub, seq_start=3)
            publish(iter(blocks[7:]), "mic-1", prefix="fe", speed=0, qos=1, client=pub, seq_start=7)
        finally:
            pub.disconnect()
            pub.loop_stop()
        deadline = time.time() + 10
        while ring.write_pos < audio.size and time.time() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        t.join(10)
    assert ring.write_pos == audio.size
    got = ring.read(0, audio.size)
    expect = np.round(audio * 32767) / 32767
    expect[5 * N:7 * N] = 0.0
    np.testing.assert_allclose(got, expect, atol=1e-6)
    assert ring.gap_samples == 2 * N
    assert src.rejects == {"duplicate": 1, "too_short": 1}


def test_daemon_with_an_mqtt_stream_and_the_publisher_cli(broker, tmp_path):
    """publish-audio -> broker -> daemon MQTT source -> ring -> gate monitor result."""
    import soundfile as sf
    from click.testing import CliRunner

    from edge.cli import cli
    from edge.config import load_settings
    from edge.daemon import Daemon
    from edge.sinks import CallbackSink

    x = np.zeros(16000 * 20, np.float32)
    x[16000 * 10:] = 0.5 * np.sin(np.arange(16000 * 10) * 2 * np.pi * 440 / 16000)
    rec = tmp_path / "r.wav"
    sf.write(rec, x, 16000, subtype="PCM_16")
    s = load_settings(data={
        "data_dir": str(tmp_path / "d"),
        "mqtt": {"port": broker.port, "topic_prefix": "fe"},
        "streams": [{"id": "press", "source": "mqtt"}],
        "monitors": [{"name": "loud", "kind": "gate", "triggers": ["level_dbfs > -20"]}],
        "alerts": {"mqtt": {"enabled": False}},
    })
    got = []
    d = Daemon(s, sinks=[CallbackSink(lambda r, a, sr: got.append(r))], alerts=False)
    d.start()
    try:
        src = d.sources[0]
        assert src.subscribed.wait(10)
        res = CliRunner().invoke(cli, ["publish-audio", str(rec), "--stream", "press", "--port",
                                       str(broker.port), "--prefix", "fe", "--speed", "0"])
        assert res.exit_code == 0, res.output
        t = time.time() + 15
        while not got and time.time() < t:
            time.sleep(0.05)
    finally:
        d.stop(timeout=4)
    assert got and got[0].stream == "press" and got[0].verdict == "positive"
    assert got[0].end.timestamp() - got[0].start.timestamp() == 10.0
    assert d.metrics.samples_in.labels("press")._value.get() == 16000 * 20


def test_alert_times_stay_on_the_publishers_clock_through_outages_restarts_and_steps(broker, tmp_path):
    """Through a real broker: a 5-min outage (lost frames), a publisher restart 10 min later
    (sequence from 0) and a +-30-day clock step. Every 10-s clip result carries exactly the
    publisher's capture times. (Before the timeline, gaps were capped at 60 s of silence on one
    UTC anchor, so results after the outage were 240 s early, then 780 s.)"""
    import paho.mqtt.client as mqtt

    from edge.config import load_settings
    from edge.daemon import Daemon
    from edge.sinks import CallbackSink

    T0 = 1_764_547_200.0
    DAY = 86400.0
    s = load_settings(data={
        "data_dir": str(tmp_path / "d"),
        "mqtt": {"port": broker.port, "topic_prefix": "fe"},
        "streams": [{"id": "p", "source": "mqtt"}],
        "monitors": [{"name": "each", "kind": "gate", "triggers": ["level_dbfs > -60"],
                      "cooldown": "5s"}],
        "alerts": {"mqtt": {"enabled": False}},
    })
    now = [T0]
    m = Metrics()
    src = MqttAudioSource(["p"], s.audio_mqtt, metrics=m, clock=lambda: now[0])
    got = []
    d = Daemon(s, sources=[src], metrics=m, sinks=[CallbackSink(lambda r, a, sr: got.append(r))],
               alerts=False, http=False, log_results=False)
    # (first seq, capture time of the first sample, seconds): contiguous within a segment
    segments = [(0, T0, 30), (3300, T0 + 330, 30),  # 5 min lost: seq jumps by 3000
                (0, T0 + 960, 30),  # publisher restarted 10 min after it stopped
                (300, T0 + 990 + 30 * DAY, 30),  # its clock (and ours) stepped +30 days
                (600, T0 + 1020, 20)]  # and back
    d.start()
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    pub.connect("127.0.0.1", broker.port)
    pub.loop_start()
    try:
        assert src.subscribed.wait(10)
        tone = (0.3 * np.sin(np.arange(N) * 2 * np.pi * 440 / 16000)).astype(np.float32)
        total = 0
        for seq0, t0, secs in segments:
            now[0] = t0 + secs / 2
            for k in range(secs * 10):
                data = encode_frame(tone, 16000, seq0 + k, round((t0 + k * 0.1) * 1e9), "int16")
                pub.publish("fe/audio/p", data, qos=1)
            total += secs * 16000
            deadline = time.time() + 15
            while m.samples_in.labels("p")._value.get() < total and time.time() < deadline:
                time.sleep(0.02)
            assert m.samples_in.labels("p")._value.get() == total
        deadline = time.time() + 15
        while len(got) < 14 and time.time() < deadline:
            time.sleep(0.05)
    finally:
        pub.disconnect()
        pub.loop_stop()
        d.stop(timeout=4)
    spans = [(r.start.timestamp(), r.end.timestamp()) for r in got]
    expect = [(t0 + 10 * j, t0 + 10 * (j + 1)) for _, t0, secs in segments for j in range(secs // 10)]
    assert len(spans) == len(expect) == 14
    for (a, b), (ea, eb) in zip(spans, expect):
        assert abs(a - ea) < 1e-3 and abs(b - eb) < 1e-3, (spans, expect)
    assert m.gap_samples.labels("p")._value.get() == 0  # no made-up silence for long outages
    causes = {c: m.timeline_pieces.labels("p", c)._value.get() for c in ("gap", "restart", "step")}
    assert causes == {"gap": 1, "restart": 1, "step": 2}
    # (a step is confirmed on its 3rd frame: the first two frames after it are 0.1-0.2 s of a
    # clip stamped on the old clock; the test's clips start on step boundaries, so none is)


def test_publish_audio_mic_drops_advance_seq_and_capture_time(broker, tmp_path):
    """`publish-audio --mic`, its reader held up: blocks dropped from the full queue used to
    vanish without a trace (the next frame took the next seq and the next capture time, so the
    daemon glued the audio together and everything after it was early). Real PulseAudio +
    PortAudio for the microphone, real mosquitto for the daemon's MQTT source."""
    from tests.pulse_server import PulseServer, available

    if available():
        pytest.fail(f"needs a private PulseAudio and PortAudio: {available()}")
    from streams.publisher import mic_blocks, publish

    with PulseServer(tmp_path) as pa:
        assert pa.proc is not None
        stop = threading.Event()
        blocks = mic_blocks("pulse", frame_ms=100, stop=stop, queue_blocks=2)
        items = [next(blocks)]  # the device runs
        time.sleep(1.5)  # nobody reads: the queue (2 blocks) overflows
        while sum(1 for it in items if it[2]) == 0 or len(items) < 6:
            items.append(next(blocks))
        stop.set()
        for _ in blocks:
            pass
    lost = sum(it[2] for it in items)
    assert lost >= 0.5 * 16000
    sent = []
    import paho.mqtt.client as mqtt

    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    pub.connect("127.0.0.1", broker.port)
    pub.loop_start()
    try:
        src2 = MqttAudioSource(["a"], MqttConfig(port=broker.port, topic_prefix="fe"))
        got = []
        src2._emit = got.append
        sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        sub.on_message = lambda c, u, m: src2.handle(m.topic, m.payload)
        sub.connect("127.0.0.1", broker.port)
        subscribed(sub, "fe/audio/a")
        publish(iter(items), "a", prefix="fe", speed=0, qos=1, client=pub,
                on_frame=lambda seq, n, r: sent.append(seq))
        deadline = time.time() + 10
        while len(got) < len(items) and time.time() < deadline:
            time.sleep(0.02)
        sub.loop_stop()
        sub.disconnect()
    finally:
        pub.disconnect()
        pub.loop_stop()
    assert len(got) == len(items)
    assert sent[-1] - sent[0] > len(items) - 1  # sequence numbers were skipped for the loss
    assert src2.gaps >= 1
    # the frame after the loss sits where the lost audio would have ended, in samples and UTC
    total = sum(it[0].shape[0] for it in items) + lost
    assert got[-1].sample_index + got[-1].samples.shape[0] == pytest.approx(total, abs=1600)
    assert got[-1].capture_time - got[0].capture_time == pytest.approx(
        (total - items[-1][0].shape[0]) / 16000, abs=0.1)


def test_publish_audio_mic_capture_times_follow_the_device_not_the_sample_count(broker):
    """A microphone whose clock runs 2 % fast (16320 samples a wall second, told 16000): the
    publisher used to stamp each frame with its start time plus the samples sent, so its
    capture times ran ahead of the wall clock (0.4 s after 20 s; a ±100-ppm crystal makes that
    ~9 s a day) and the daemon had nothing to correct drift with. The publisher now dates the
    blocks by when the device delivered them, late-only (a callback is late by load, never
    early), so capture times stay on wall time through jittery and bursty callbacks."""
    import paho.mqtt.client as mqtt

    from streams.publisher import publish

    got: list = []
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    sub.on_message = lambda c, u, m: got.append(decode_frame(m.payload))
    sub.connect("127.0.0.1", broker.port)
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    pub.connect("127.0.0.1", broker.port)
    pub.loop_start()
    try:
        subscribed(sub, "fe/audio/a")
        rng = np.random.default_rng(3)
        n, fast = 1600, 1.02  # 100-ms blocks of a device running 2 % fast
        t0 = time.time()  # 20 s of audio, heard from now on (published at once: speed 0)
        items, true_start = [], []
        for k in range(200):
            start = t0 + k * n / (16000 * fast)  # when its first sample was really heard
            late = 0.0 if k % 10 == 0 else float(rng.uniform(0, 0.03))  # callbacks run late
            if 100 <= k < 105:
                late = 0.25 - 0.05 * (k - 100)  # a starved callback thread, then a burst
            true_start.append(start)
            items.append((np.zeros(n, np.float32), 16000, 0, start + n / (16000 * fast) + late))
        publish(iter(items), "a", prefix="fe", speed=0, qos=1, client=pub)
        deadline = time.time() + 10
        while len(got) < len(items) and time.time() < deadline:
            time.sleep(0.02)
    finally:
        for c in (sub, pub):
            c.loop_stop()
            c.disconnect()
    assert len(got) == len(items)
    err = [f.capture_time - t for f, t in zip(got, true_start)]
    # sample counting alone would end 0.39 s ahead; the late-only timeline keeps every frame
    # within its drift tolerance of when it was heard, never in the future of its arrival
    assert max(abs(e) for e in err[20:]) < 0.03, (min(err), max(err))
    assert all(f.capture_time <= it[3] for f, it in zip(got, items))


def test_capture_times_in_the_future_or_far_past_fall_back_to_this_clock(broker):
    """Through a real broker: a publisher whose clock says 30 days ahead, then (restarted) an
    RTC-less board at 1970. Its times are not trusted; the frames are placed on this
    machine's clock (arrival minus duration) and counted, instead of alerts 30 days off."""
    import paho.mqtt.client as mqtt

    T0 = 1_764_547_200.0
    now = [T0 + 0.1]
    m = Metrics()
    src = MqttAudioSource(["p"], MqttConfig(port=broker.port, topic_prefix="fe"), metrics=m,
                          clock=lambda: now[0])
    got = []
    stop = threading.Event()
    t = threading.Thread(target=src.run, args=(got.append, stop))
    t.start()
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    pub.connect("127.0.0.1", broker.port)
    pub.loop_start()
    try:
        assert src.subscribed.wait(10)
        x = np.full(N, 0.1, np.float32)
        frames = [(5000, T0 + 30 * 86400), (5001, T0 + 30 * 86400 + 0.1),  # 30 days ahead
                  (0, 5.0)]  # restarted (seq 0) at 1970, 20 s later by this clock
        for n, (seq, cap) in enumerate(frames):
            now[0] = {0: T0 + 0.1, 1: T0 + 0.2, 2: T0 + 20.1}[n]
            pub.publish("fe/audio/p", encode_frame(x, 16000, seq, int(cap * 1e9), "int16"),
                        qos=1).wait_for_publish(5)
            deadline = time.time() + 10
            while len(got) < n + 1 and time.time() < deadline:
                time.sleep(0.02)
    finally:
        pub.disconnect()
        pub.loop_stop()
        stop.set()
        t.join(10)
    assert [round(f.capture_time, 3) for f in got] == [T0, T0 + 0.1, T0 + 20.0]
    assert m.clock_untrusted.labels("p")._value.get() == 3
    # the restart's 19.8-s absence (by this clock) is under max_gap_s: silence, same piece
    assert got[2].piece is None and got[2].sample_index == 20 * 16000


def test_publish_audio_reports_a_refused_connection_and_counts_deliveries(tmp_path, monkeypatch):
    """A wrong password printed "published 120 frames ... in 12.0 s", exit 0, while no
    subscriber got a frame: CONNACK was never checked and publish() calls were counted."""
    import soundfile as sf
    from click.testing import CliRunner

    from edge.cli import cli
    from tests.alerts.helpers import Recorder

    rec = tmp_path / "r.wav"
    sf.write(rec, np.zeros(16000 * 3, np.float32), 16000, subtype="PCM_16")
    b = Mosquitto(tmp_path, users={"alice": "right-pw"}).start()
    sub = Recorder(b, ["fe/audio/#"], username="alice", password="right-pw")
    try:
        args = ["publish-audio", str(rec), "--stream", "press", "--port", str(b.port),
                "--prefix", "fe", "--speed", "0", "--username", "alice"]
        monkeypatch.setenv("FLAMINGO_EDGE_MQTT__PASSWORD", "wrong-pw")
        t0 = time.monotonic()
        res = CliRunner().invoke(cli, args)
        assert res.exit_code == 1 and time.monotonic() - t0 < 10
        lines = res.output.strip().splitlines()
        assert len(lines) == 1 and "refused the connection for user alice" in lines[0], res.output
        assert "published 0 frames" not in lines[0] and "(0 frames published to fe/audio/press)" in lines[0]
        assert "wrong-pw" not in res.output
        # the daemon's variable is the default --password-env: the right one gets through
        monkeypatch.setenv("FLAMINGO_EDGE_MQTT__PASSWORD", "right-pw")
        for qos in ("0", "1"):
            n0 = len(sub.on("fe/audio/press"))
            res = CliRunner().invoke(cli, [*args, "--qos", qos])
            assert res.exit_code == 0, res.output
            assert "published 30 frames to fe/audio/press" in res.output
            assert sub.wait_for(lambda n0=n0: len(sub.on("fe/audio/press")) == n0 + 30, 10)
        # anonymous against a broker that wants a password: refused, named
        res = CliRunner().invoke(cli, args[:-2])
        assert res.exit_code == 1 and "refused the connection (anonymous" in res.output
    finally:
        sub.close()
        b.stop()


def test_publish_reports_a_broker_that_goes_away_mid_stream(tmp_path):
    """The broker dies while frames flow: PublishError with the count delivered so far."""
    from streams.publisher import PublishCount, PublishError, publish

    b = Mosquitto(tmp_path).start()
    count = PublishCount()

    def blocks():
        for i in range(400):
            if i == 5:
                b.stop()
            yield np.zeros((1600, 1), np.float32), 16000

    with pytest.raises(PublishError) as e:
        publish(blocks(), "press", b.host, b.port, "fe", speed=0, qos=1, count=count,
                ack_timeout=3)
    assert e.value.sent == count.sent and 5 <= count.sent < 400
    assert f"{b.host}:{b.port}" in str(e.value)


def test_rejected_and_unknown_stream_frames_are_logged_rate_limited(broker, caplog):
    """Rejections were only a counter, and frames for an unconfigured stream id were not even
    counted (only configured topics were subscribed)."""
    import paho.mqtt.client as mqtt

    import logging

    from streams.mqtt import RejectLog
    from tests.conftest import log_events

    caplog.set_level(logging.INFO)  # whatever level an earlier CLI test left on the root logger

    m = Metrics()
    src = MqttAudioSource(["press"], MqttConfig(port=broker.port, topic_prefix="fe"), metrics=m)
    stop = threading.Event()
    t = threading.Thread(target=src.run, args=(lambda f: None, stop))
    t.start()
    try:
        assert src.subscribed.wait(10)
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        pub.connect("127.0.0.1", broker.port)
        pub.loop_start()
        try:
            for _ in range(50):
                pub.publish("fe/audio/press", b"XX", qos=1).wait_for_publish(5)
            for _ in range(3):
                pub.publish("fe/audio/lathe-7", frame(0, 0.1), qos=1).wait_for_publish(5)
        finally:
            pub.disconnect()
            pub.loop_stop()
        deadline = time.time() + 10
        while sum(src.rejects.values()) < 53 and time.time() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        t.join(10)
    assert m.frames_dropped.labels("_unknown", "unknown_stream")._value.get() == 3
    assert sum(m.frames_dropped.labels("press", r)._value.get() for r in REASONS) == 50
    lines = log_events(caplog.records, "audio frame rejected")
    # one line per (topic, reason) in a burst, not 53
    assert len(lines) == 2, lines
    bad, unknown = lines
    assert bad["stream"] == "press" and bad["topic"] == "fe/audio/press" and bad["reason"] in REASONS
    assert bad["level"] == "warning" and bad["detail"]
    assert unknown["stream"] is None and unknown["topic"] == "fe/audio/lathe-7"
    assert unknown["reason"] == "unknown_stream" and "configured" in unknown["hint"]
    # later lines say how many were rejected since the last one
    now = [0.0]
    rl = RejectLog(interval_s=60, clock=lambda: now[0])
    caplog.clear()
    for i in range(10):
        now[0] = i * 10.0
        rl("press", "fe/audio/press", "bad_magic")
    counts = [e["count"] for e in log_events(caplog.records, "audio frame rejected")]
    assert counts == [1, 6]  # at t=0, then at t=60 with the 6 since


def test_audio_source_logs_a_refusal_once_and_a_clean_stop_quietly(tmp_path, caplog):
    """A wrong password used to log "connection refused" and then "disconnected (Protocol
    error)" at every retry; a clean SIGTERM logged a warning about reconnecting."""
    import logging

    from tests.conftest import log_events

    caplog.set_level(logging.INFO)  # whatever level an earlier CLI test left on the root logger

    b = Mosquitto(tmp_path, users={"alice": "right-pw"}).start()
    try:
        cfg = MqttConfig(port=b.port, topic_prefix="fe", username="alice", password="wrong-pw",
                         backoff_initial_s=0.2, backoff_max_s=0.5)
        src = MqttAudioSource(["press"], cfg)
        stop = threading.Event()
        t = threading.Thread(target=src.run, args=(lambda f: None, stop))
        t.start()
        time.sleep(2.0)  # several attempts
        stop.set()
        t.join(10)
        ev = log_events(caplog.records)
        refused = [e for e in ev if e["event"].startswith("audio MQTT connection refused")]
        assert len(refused) == 1 and refused[0]["level"] == "error"
        assert "authori" in refused[0]["reason"].lower() or "password" in refused[0]["reason"].lower()
        assert "wrong-pw" not in str(ev)
        assert not [e for e in ev if e["level"] == "warning" and "MQTT" in e["event"]]
        assert src.state != "connected" and src.status()["press"]["state"] in ("connecting", "disconnected")
        # the right password, then a clean stop: info lines only
        caplog.clear()
        src = MqttAudioSource(["press"], MqttConfig(port=b.port, topic_prefix="fe",
                                                    username="alice", password="right-pw"))
        stop = threading.Event()
        t = threading.Thread(target=src.run, args=(lambda f: None, stop))
        t.start()
        assert src.subscribed.wait(10)
        stop.set()
        t.join(10)
        ev = log_events(caplog.records)
        assert [e["event"] for e in ev if "MQTT" in e["event"]] == ["audio MQTT connected", "audio MQTT closed"]
        assert all(e["level"] == "info" for e in ev)
    finally:
        b.stop()


def test_publish_audio_ctrl_c_prints_the_count(broker, tmp_path):
    """Ctrl-C used to end publish-audio without a word about what it had sent."""
    import os
    import signal
    import subprocess
    import sys

    import soundfile as sf

    from tests.alerts.helpers import Recorder

    rec = tmp_path / "r.wav"
    sf.write(rec, np.zeros(16000 * 60, np.float32), 16000, subtype="PCM_16")
    sub = Recorder(broker, ["fe/audio/#"])
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    p = subprocess.Popen([sys.executable, "-m", "edge", "publish-audio", str(rec), "--stream", "press",
                          "--port", str(broker.port), "--prefix", "fe", "--qos", "1"],
                         stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert sub.wait_for(lambda: len(sub.on("fe/audio/press")) >= 5, 20)
        seen = len(sub.on("fe/audio/press"))
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=20)
    finally:
        p.kill()
        sub.close()
    assert p.returncode == 130
    (line,) = [x for x in err.splitlines() if x.strip()]
    n = int(line.split("published ")[1].split()[0])
    assert line.startswith("interrupted: published ") and " frames to fe/audio/press in " in line
    # what the broker acknowledged: at most what arrived, at least what had arrived at the
    # signal but the one whose acknowledgement was on its way
    assert seen - 1 <= n <= len(sub.on("fe/audio/press"))


def test_audio_source_says_why_it_cannot_connect(caplog):
    """The log said only "audio MQTT connection failed error='cannot connect to the broker'": not
    whether nothing listens there, the name does not resolve or the network drops packets."""
    from tests.conftest import log_events
    from tests.mqtt_broker import free_port

    src = MqttAudioSource(["press"], MqttConfig(host="127.0.0.1", port=free_port(), topic_prefix="fe",
                                                backoff_initial_s=0.2, backoff_max_s=0.5))
    stop = threading.Event()
    t = threading.Thread(target=src.run, args=(lambda f: None, stop))
    t.start()
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not log_events(caplog.records, "audio MQTT connection failed"):
            time.sleep(0.05)
    finally:
        stop.set()
        t.join(10)
    (e,) = log_events(caplog.records, "audio MQTT connection failed")[:1]
    assert e["level"] == "error" and "connection refused" in e["error"].lower(), e
    assert src.status()["press"]["state"] in ("connecting", "disconnected")
