"""MQTT source: sequencing and validation (unit), fuzzing, and a real mosquitto broker."""

import threading
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alerts.config import MqttConfig
from edge.metrics import Metrics
from edge.ring import Ring
from streams.mqtt import MqttAudioSource
from streams.protocol import REASONS, encode_frame

N = 1600  # 100 ms frames at 16 kHz


def make(metrics=None, streams=("a",), port=1883):
    src = MqttAudioSource(list(streams), MqttConfig(port=port, topic_prefix="fe"), metrics=metrics)
    ring = Ring(16000 * 60)
    frames = []

    def emit(f):
        frames.append(f)
        ring.append(f.sample_index, f.samples, f.capture_time)

    src._emit = emit
    return src, ring, frames


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
    src, ring, _ = make()
    src.handle("fe/audio/a", frame(2**32 - 1, 0.1))
    src.handle("fe/audio/a", frame(0, 0.1))  # wraps: next in order
    assert ring.write_pos == 2 * N and ring.gap_samples == 0
    src.handle("fe/audio/a", frame(5000, 0.1, n=N))  # far ahead: 4999 lost frames, capped gap
    assert ring.gap_samples == min(4999 * N, 60 * 16000)
    src.handle("fe/audio/a", frame(3, 0.3))  # far behind: publisher restarted
    assert src.rejects == {}
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
    src, ring, frames = make(m)
    handled = 0
    for msg in msgs:
        if isinstance(msg, bytes):
            data = msg
        else:
            seq, n, rate, fmt, cut = msg
            try:
                data = encode_frame(np.full(n, 0.1, np.float32), rate, seq, 0, fmt)
            except Exception:
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
    from tests.mqtt_broker import Mosquitto

    with Mosquitto(tmp_path) as b:
        yield b


def test_against_real_mosquitto(broker):
    from streams.publisher import publish

    m = Metrics()
    src = MqttAudioSource(["mic-1"], MqttConfig(port=broker.port, topic_prefix="fe"), metrics=m)
    ring = Ring(16000 * 60)
    stop = threading.Event()
    t = threading.Thread(target=src.run, args=(lambda f: ring.append(f.sample_index, f.samples,
                                                                    f.capture_time), stop))
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
    from edge.daemon import CallbackSink, Daemon

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
