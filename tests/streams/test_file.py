import threading

import numpy as np
import soundfile as sf

from streams.file import FileSource


def collect(src):
    frames = []
    src.run(frames.append, threading.Event())
    return frames


def test_file_frames_are_contiguous_on_the_sample_clock(tmp_path):
    x = np.random.default_rng(0).uniform(-0.5, 0.5, 16000 * 3 + 123).astype(np.float32)
    p = tmp_path / "a.wav"
    sf.write(p, x, 16000, subtype="FLOAT")
    frames = collect(FileSource(p, "s", speed=0, start_time=100.0))
    idx = 0
    for i, f in enumerate(frames):
        assert f.sample_index == idx and f.seq == i and f.stream == "s"
        assert f.capture_time == 100.0 + idx / 16000
        idx += f.samples.size
    assert idx == x.size
    np.testing.assert_array_equal(np.concatenate([f.samples for f in frames]), x)


def test_file_resampled_and_downmixed(tmp_path):
    t = np.arange(44100 * 2) / 44100
    x = np.stack([np.sin(2 * np.pi * 440 * t), np.zeros_like(t)], 1) * 0.5
    p = tmp_path / "b.flac"
    sf.write(p, x, 44100)
    frames = collect(FileSource(p, "s", speed=0))
    y = np.concatenate([f.samples for f in frames])
    assert abs(y.size - 32000) <= 2
    assert abs(np.sqrt(np.mean(y[2000:-2000] ** 2)) - 0.25 / np.sqrt(2)) < 0.01


def test_loop_until_stopped(tmp_path):
    p = tmp_path / "c.wav"
    sf.write(p, np.zeros(1600, np.float32), 16000)
    stop = threading.Event()
    frames = []

    def emit(f):
        frames.append(f)
        if len(frames) >= 5:
            stop.set()

    FileSource(p, "s", speed=0, loop=True).run(emit, stop)
    assert [f.sample_index for f in frames[:5]] == [0, 1600, 3200, 4800, 6400]


def test_fast_playback_is_stamped_with_the_time_it_is_heard(tmp_path):
    """At 8x, 1 s of the file is heard in 0.125 s: the frame of file second 1 carries
    start + 0.125 s, not start + 1 s (a UTC in the future); the file offset is the index."""
    x = np.zeros(16000 * 2, np.float32)
    p = tmp_path / "fast.wav"
    sf.write(p, x, 16000, subtype="FLOAT")
    frames = collect(FileSource(p, "s", speed=8, start_time=1000.0))
    f = next(f for f in frames if f.sample_index == 16000)
    assert f.capture_time == 1000.0 + 1 / 8
    assert frames[0].piece is not None and frames[0].piece.rate == 8 * 16000
    assert all(f.piece is None for f in frames[1:])
