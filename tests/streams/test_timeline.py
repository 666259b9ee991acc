"""The per-stream timeline: pieces mapping sample indices to UTC (streams/timeline.py)."""

import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.mic import MicSource
from streams.timeline import Piece, PieceLog, Timeline

SR = 16000
T0 = 1_764_547_200.0  # 2025-12-01 00:00 UTC
DAY = 86400.0


class Clock:
    def __init__(self, t=T0):
        self.t = t

    def __call__(self):
        return self.t


def test_contiguous_frames_are_exact_to_the_sample_within_a_piece():
    tl = Timeline(max_skew_s=None)
    first = tl.place(1600, T0)
    assert first.piece == Piece(0, T0) and first.index == 0
    for k in range(1, 100):
        pl = tl.place(1600, T0 + k * 0.1)
        assert pl.piece is None and pl.index == k * 1600 and pl.gap == 0
    p = first.piece
    assert p.utc_of(12345) == T0 + 12345 / SR
    assert p.utc_of(160000) - p.utc_of(0) == 10.0


def test_short_loss_is_silence_on_the_same_piece():
    tl = Timeline(max_skew_s=None, max_gap_s=60)
    tl.place(1600, T0)
    pl = tl.place(1600, T0 + 3.1, lost=30 * 1600)  # 3 s of frames lost
    assert pl.piece is None and pl.gap == 30 * 1600 and pl.index == 31 * 1600
    assert pl.utc == T0 + 3.1


@pytest.mark.parametrize("outage_s", [300.0, 600.0, 30 * DAY])
def test_long_outage_starts_a_new_piece_at_the_next_index(outage_s):
    """A 5-min, 10-min or 30-day loss: no silence, a fresh grid, UTC from the reading."""
    tl = Timeline(max_skew_s=None, max_gap_s=60)
    tl.place(1600, T0)
    t0 = time.perf_counter()
    lost = int(outage_s * SR)
    pl = tl.place(1600, T0 + 0.1 + outage_s, lost=lost)
    assert time.perf_counter() - t0 < 0.05  # O(1): nothing walks the gap
    assert pl.gap == 0 and pl.index == 1600
    assert pl.piece is not None and pl.piece.fresh_grid and pl.piece.cause == "gap"
    assert pl.utc == T0 + 0.1 + outage_s and pl.piece.gap_s == pytest.approx(outage_s)


def test_break_measured_by_capture_times():
    tl = Timeline(max_skew_s=None, max_gap_s=60)
    tl.place(1600, T0)
    short = tl.place(1600, T0 + 5.1, brk="restart")  # away 5 s: silence
    assert short.piece is None and short.gap == 5 * SR and short.utc == T0 + 5.1
    long = tl.place(1600, T0 + 5.2 + 600, brk="restart")  # away 10 min: new piece
    assert long.piece is not None and long.piece.cause == "restart" and long.gap == 0
    assert long.piece.gap_s == pytest.approx(600.0)
    back = tl.place(1600, T0 - 100, brk="reopen")  # earlier than before: new piece, no gap
    assert back.piece is not None and back.utc == T0 - 100 and back.gap == 0


@pytest.mark.parametrize("step", [30 * DAY, -30 * DAY, 5.0, -5.0])
def test_clock_step_on_contiguous_audio_is_a_new_piece_with_the_same_grid(step):
    tl = Timeline(max_skew_s=None)
    for k in range(10):
        tl.place(1600, T0 + k * 0.1)
    for k in range(9):  # confirmed over 1 s of audio (a late callback is not a step)
        pl = tl.place(1600, T0 + 1.0 + k * 0.1 + step)
        assert pl.piece is None and pl.utc == T0 + 1.0 + k * 0.1
    pl = tl.place(1600, T0 + 1.9 + step)
    assert pl.index == 16000 + 9 * 1600 and pl.gap == 0  # the audio did not stop
    p = pl.piece
    assert p is not None and p.cause == "step" and not p.fresh_grid
    assert p.start == 16000 and p.utc == T0 + 1.0 + step  # dated back to the step
    assert pl.utc == pytest.approx(T0 + 1.9 + step) and tl.steps == 1


def test_a_late_callback_is_not_a_clock_step():
    tl = Timeline(max_skew_s=None)
    for k in range(10):
        tl.place(1600, T0 + k * 0.1)
    # a callback delayed 1.5 s by load, then the queued blocks in a burst
    for k, late in zip(range(10, 25), [1.5, 1.4, 1.3, 1.2] + [0.0] * 11):
        assert tl.place(1600, T0 + k * 0.1 + late).piece is None
    assert tl.steps == 0 and tl.pieces == 1


@pytest.mark.parametrize("ppm", [100.0, -100.0])
def test_drift_of_a_device_clock_is_corrected(ppm):
    """A device delivering 16000*(1+ppm) samples per true second: counting samples alone is
    off by 0.36 s after an hour; the readings keep every sample within 25 ms."""
    tl = Timeline(max_skew_s=None)
    true_rate = SR * (1 + ppm * 1e-6)
    log = PieceLog()
    n = 16000
    worst = 0.0
    for k in range(3600):
        i_true = k * n
        pl = tl.place(n, T0 + i_true / true_rate)
        if pl.piece is not None:
            log.add(pl.piece)
        assert pl.index == i_true
        worst = max(worst, abs(log.utc_of(i_true) - (T0 + i_true / true_rate)))
    assert worst < 0.025
    assert abs(Piece(0, T0).utc_of(3600 * n) - (T0 + 3600 * n / true_rate)) > 0.3
    assert all(p.cause in ("start", "drift") and not (p.fresh_grid and p.start) for p in log.pieces())
    # the measured rate converges on the device's
    assert abs(log.last.rate - true_rate) / SR < 20e-6


def test_jittery_readings_do_not_fragment_the_timeline():
    rng = np.random.default_rng(0)
    tl = Timeline(max_skew_s=None)
    for k in range(6000):  # 10 min of 0.1-s blocks, callback times jitter by +-8 ms
        tl.place(1600, T0 + k * 0.1 + rng.uniform(-0.008, 0.008))
    assert tl.pieces == 1


def test_arrival_time_readings_late_in_a_burst_are_not_drift():
    """A microphone's readings are callback times: late by load, never early. A callback held
    1.5 s, then the 15 blocks the audio server kept, in a burst: the median of the recent
    errors took the burst for drift (a piece 0.25 s late, then one back, stamping audio after
    it had arrived); the least delayed reading does not."""
    tl = Timeline(max_skew_s=None, late_only=True)
    for k in range(200):
        arrival = T0 + (k + 1) * 0.1 + (1.5 - 0.1 * (k - 50) if 50 <= k < 65 else 0.0)
        pl = tl.place(1600, arrival - 0.1)
        assert pl.utc == T0 + k * 0.1 and pl.gap == 0
    assert tl.pieces == 1


def test_arrival_time_reading_earlier_than_the_piece_corrects_it_at_once():
    """A piece anchored on a delayed callback (60 ms late), then callbacks on time: a reading
    is never early, so the first one proves the piece late; waiting for 8 readings stamped
    0.8 s of audio 60 ms late, i.e. after it had arrived."""
    tl = Timeline(max_skew_s=None, late_only=True)
    assert tl.place(1600, T0 + 0.06).utc == T0 + 0.06
    pl = tl.place(1600, T0 + 0.1)
    assert pl.piece is not None and pl.piece.cause == "drift" and not pl.piece.fresh_grid
    assert pl.utc == pytest.approx(T0 + 0.1, abs=1e-6) and pl.gap == 0
    for k in range(2, 50):
        assert tl.place(1600, T0 + k * 0.1 + (0.05 if k % 7 == 0 else 0.0)).utc == pytest.approx(
            T0 + k * 0.1, abs=1e-6)
    assert tl.pieces == 2


def test_arrival_time_readings_keep_the_least_delayed_time():
    """Callbacks late by 0-80 ms at random (a loaded machine): the stamps follow the earliest
    readings, i.e. the audio's own time, not the median delay."""
    rng = np.random.default_rng(1)
    tl = Timeline(max_skew_s=None, late_only=True)
    log = PieceLog()
    worst = 0.0
    for k in range(3000):
        pl = tl.place(1600, T0 + k * 0.1 + rng.uniform(0, 0.08))
        if pl.piece is not None:
            log.add(pl.piece)
        if k > 50:
            worst = max(worst, abs(log.utc_of(k * 1600) - (T0 + k * 0.1)))
    assert worst < 0.025 and tl.pieces <= 3


def test_capture_times_far_from_this_clock_are_not_trusted():
    clock = Clock()
    tl = Timeline(max_skew_s=30, clock=clock)
    pl = tl.place(1600, 5.0)  # a board that booted at 1970 without an RTC
    assert pl.utc == pytest.approx(T0 - 0.1) and tl.untrusted == 1
    clock.t += 0.1
    pl = tl.place(1600, T0 + 30 * DAY)  # a publisher 30 days in the future
    assert pl.piece is None and pl.utc == pytest.approx(T0) and tl.untrusted == 2
    clock.t += 0.1
    pl = tl.place(1600, T0 + 0.1)  # trusted again: within the bounds, contiguous
    assert pl.piece is None and tl.untrusted == 2


def test_piece_log_lookup_and_order():
    log = PieceLog(max_pieces=3)
    assert log.utc_of(5) is None
    log.add(Piece(0, 100.0))
    log.add(Piece(1000, 500.0, cause="gap"))
    log.add(Piece(2000, 50.0, cause="step", fresh_grid=False))
    assert log.utc_of(999) == 100.0 + 999 / SR
    assert log.utc_of(1000) == 500.0 and log.utc_end(1000) == 100.0 + 1000 / SR
    assert log.utc_of(2100) == 50.0 + 100 / SR
    assert [p.start for p in log.fresh_after(0)] == [1000]
    with pytest.raises(ValueError):
        log.add(Piece(10, 0.0))
    log.add(Piece(3000, 0.0))
    assert len(log) == 3 and log.utc_of(0) == 500.0 - 1000 / SR  # oldest dropped


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 4000), st.floats(-1e6, 1e6), st.integers(0, 10**7),
                          st.sampled_from([None, "restart", "reopen"])), max_size=40))
def test_fuzz_indices_only_grow_and_pieces_are_ordered(events):
    tl = Timeline(max_skew_s=None)
    log = PieceLog()
    nxt = 0
    for n, dt, lost, brk in events:
        pl = tl.place(n, T0 + dt, lost=lost, brk=brk)
        assert pl.index >= nxt and pl.gap == pl.index - nxt
        nxt = pl.index + n
        if pl.piece is not None:
            log.add(pl.piece)  # raises if out of order
            assert pl.piece.start <= pl.index  # a confirmed clock step is dated back
        assert np.isfinite(pl.utc)


class _Stream:
    def __init__(self, callback):
        self.callback = callback
        self.samplerate = 16000
        self.active = True

    def start(self):
        pass

    def stop(self):
        self.active = False

    def close(self):
        pass


def test_mic_corrects_a_device_clock_running_100_ppm_fast():
    """The device delivers 16001.6 samples per second of the system clock: an hour of blocks
    counted at 16 kHz ends 0.36 s late; the callback times keep the frames on wall time."""
    clock = Clock()
    streams = []

    def factory(device, samplerate, channels, blocksize, callback):
        streams.append(_Stream(callback))
        return streams[-1]

    src = MicSource("m", stream_factory=factory, clock=clock, queue_blocks=100000)
    frames = []
    true_rate = SR * (1 + 100e-6)
    block = 16000
    import threading

    stop = threading.Event()
    th = threading.Thread(target=src.run, args=(frames.append, stop))
    th.start()
    try:
        t = time.time() + 5
        while not streams and time.time() < t:
            time.sleep(0.01)
        x = np.zeros((block, 1), np.float32)
        for k in range(3600):
            clock.t = T0 + (k + 1) * block / true_rate  # callback time: end of the block
            streams[0].callback(x, block, None, None)
        t = time.time() + 20
        while len(frames) < 3600 and time.time() < t:
            time.sleep(0.02)
    finally:
        stop.set()
        th.join(5)
    assert len(frames) == 3600
    errs = [abs(f.capture_time - (T0 + f.sample_index / true_rate)) for f in frames]
    assert max(errs) < 0.025
