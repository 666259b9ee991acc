"""Ring buffer and clip scheduling properties."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.ring import Ring
from edge.windows import ClipScheduler, int16_roundtrip, loudness_gain, prepare_clip

frames_st = st.lists(st.integers(1, 5000), min_size=1, max_size=40)


@settings(max_examples=150, deadline=None)
@given(frames_st, st.integers(0, 10**6), st.integers(100, 4000))
def test_every_sample_lands_in_exactly_one_clip(sizes, origin, clip):
    """hop == clip length: clips tile the stream; boundaries sit on the sample clock."""
    ring = Ring(10 * clip + 10000)
    sched = ClipScheduler("s", clip_len=clip)
    pos = origin
    value = 0
    seen = []
    for n in sizes:
        ring.append(pos, np.arange(value, value + n, dtype=np.float32))
        pos += n
        value += n
        for spec in sched.ready(ring.origin, ring.write_pos):
            assert (spec.start - origin) % clip == 0 and spec.end - spec.start == clip
            seen.append(ring.read(spec.start, spec.end))
    total = pos - origin
    assert len(seen) == total // clip
    if seen:
        got = np.concatenate(seen)
        np.testing.assert_array_equal(got, np.arange(len(seen) * clip, dtype=np.float32))
    assert sched.partial_end(ring.write_pos) == (
        origin + (len(seen) + 1) * clip if total % clip else None)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 20), st.sampled_from([(1000, 500), (1000, 250), (1000, 1000), (900, 300)]))
def test_overlapping_hop_each_clip_once(n_blocks, clip_hop):
    clip, hop = clip_hop
    ring = Ring(100000)
    sched = ClipScheduler("s", clip_len=clip, hop=hop)
    got = []
    for i in range(n_blocks):
        ring.append(i * 700, np.zeros(700, np.float32))
        got += sched.ready(ring.origin, ring.write_pos)
    assert [c.index for c in got] == list(range(len(got)))
    assert all(c.start == c.index * hop and c.end == c.start + clip for c in got)
    total = n_blocks * 700
    assert len(got) == (0 if total < clip else (total - clip) // hop + 1)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3000), st.integers(1, 3000)), min_size=1, max_size=30))
def test_gaps_are_silence_of_the_right_length(events):
    """Each (gap, n): a frame of n ones arriving `gap` samples after the write position."""
    ring = Ring(200_000)
    expect = []
    pos = 0
    for gap, n in events:
        pos += gap
        first = not expect
        r = ring.append(pos, np.ones(n, np.float32))
        assert r.gap == (0 if first else gap) and r.written == n and r.dropped == 0
        expect += [0.0] * (0 if first else gap) + [1.0] * n
        pos += n
    first_gap = events[0][0]
    assert ring.origin == first_gap
    assert ring.write_pos == pos
    assert ring.gap_samples == sum(g for g, _ in events[1:])
    np.testing.assert_array_equal(ring.read(ring.origin, pos), np.array(expect, np.float32))
    assert ring.gap_in(ring.origin, pos) == ring.gap_samples


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(-500, 500), min_size=2, max_size=30))
def test_overlapping_frames_never_rewrite_the_past(offsets):
    ring = Ring(100_000)
    ring.append(1000, np.zeros(100, np.float32))
    model = [0.0] * 100  # what each absolute index 1000.. must hold
    for k, off in enumerate(offsets):
        start = ring.write_pos + off
        r = ring.append(start, np.full(200, k + 1, np.float32))
        assert r.dropped == max(0, min(200, -off)) and r.gap == max(0, off)
        end = start + 200
        if end > 1000 + len(model):  # only the part past the write position is new
            model += [0.0] * max(0, start - 1000 - len(model))
            model += [float(k + 1)] * (end - 1000 - len(model))
    np.testing.assert_array_equal(ring.read(1000, ring.write_pos), np.array(model, np.float32))


def test_wraparound_and_eviction():
    ring = Ring(1000)
    for i in range(25):
        ring.append(i * 100, np.full(100, i, np.float32))
    assert ring.oldest == 1500 and ring.read(1400, 1600) is None
    x = ring.read(1500, 2500)
    np.testing.assert_array_equal(x, np.repeat(np.arange(15, 25, dtype=np.float32), 100))
    ring.append(10**9, np.ones(10, np.float32))  # a huge gap costs O(capacity)
    assert ring.write_pos == 10**9 + 10 and ring.read(10**9 - 990, 10**9).max() == 0


def test_loudness_policy():
    quiet = np.full(10, 0.001, np.float32)
    assert loudness_gain(quiet, "peak", max_gain_db=20) == 10.0  # capped
    loud = np.array([0.5, -0.25], np.float32)
    assert loudness_gain(loud, "peak") == 2.0
    assert loudness_gain(loud, "none") == 1.0
    assert abs(loudness_gain(loud, "fixed", gain_db=6.0206) - 2.0) < 1e-4
    assert loudness_gain(np.zeros(5, np.float32)) == 10 ** (24 / 20)
    y = prepare_clip(loud)
    assert y.dtype == np.float32 and y[0] == 1.0 and y[1] == int16_roundtrip(np.array([-0.5]))[0]
    np.testing.assert_array_equal(y, int16_roundtrip(y))


def test_int16_roundtrip_matches_the_model_package():
    from edge.model.audio import int16_roundtrip as official

    x = np.random.default_rng(0).uniform(-1.2, 1.2, 10000)
    np.testing.assert_array_equal(int16_roundtrip(x), official(x))
