"""Clip slots on the timeline (fresh grids after breaks) and memory windows by slot range."""

import time

import numpy as np
import pytest
import torch

from edge.memory import ClipEncoding, StreamMemory
from edge.ring import Ring
from edge.windows import ClipScheduler, clips_for
from streams.timeline import Piece

SR = 16000
CLIP = 160000


def test_clips_for_never_rounds_a_window_down():
    # round-half-to-even made 35 s -> 3 clips (30 s) but 45 s -> 5 clips (50 s)
    assert clips_for(35, 10, 10) == 4 and clips_for(45, 10, 10) == 5
    assert clips_for(30, 10, 10) == 3 and clips_for(300, 10, 10) == 30
    assert clips_for(10, 10, 10) == 1 and clips_for(5, 10, 10) == 1
    assert clips_for(300, 10, 5) == 59 and clips_for(30.0000000001, 10, 10) == 3


def test_a_long_gap_starts_a_fresh_grid_and_skips_the_slots_it_took():
    """25 s of audio, then a 5-min break (a new piece at sample 25 s), then 30 s: the clip cut
    by the break is handed out with its real part, and the slots go on counting wall time."""
    sched = ClipScheduler("s", CLIP)
    brk = Piece(25 * SR, 1000.0 + 325.0, cause="gap", gap_s=300.0)
    got = sched.ready(0, 25 * SR, [])
    assert [(c.index, c.start, c.data_end) for c in got] == [(0, 0, None), (1, CLIP, None)]
    got = sched.ready(0, 55 * SR, [brk])
    # slot 2 (UTC 1020-1030) was cut at 25 s; the new grid starts at sample 25 s = UTC 1325,
    # which is in slot 32 (1320-1330): 29 slots skipped
    assert [(c.index, c.start, c.end, c.data_end) for c in got] == [
        (2, 20 * SR, 30 * SR, 25 * SR), (32, 25 * SR, 35 * SR, None), (33, 35 * SR, 45 * SR, None),
        (34, 45 * SR, 55 * SR, None)]
    assert sched.skipped == 29
    assert sched.ready(0, 55 * SR, [brk]) == []  # a break is applied once


def test_a_30_day_jump_costs_o1_not_one_record_per_clip():
    """Before, ClipScheduler.ready made one record per 10 s of a wall-clock jump while holding
    the worker lock (30 days: 259 194 records, 4.7 s of blocked ingest)."""
    sched = ClipScheduler("s", CLIP)
    sched.ready(0, CLIP)
    brk = Piece(CLIP, 30 * 86400.0, cause="reopen", gap_s=30 * 86400.0 - 10)
    t0 = time.perf_counter()
    got = sched.ready(0, 2 * CLIP, [brk])
    assert time.perf_counter() - t0 < 0.01
    assert [c.index for c in got] == [1 + 259199]
    # and a clock stepping back: the slots never go backwards
    back = Piece(2 * CLIP, 5.0, cause="restart", gap_s=-30 * 86400.0)
    assert [c.index for c in sched.ready(0, 3 * CLIP, [brk, back])] == [259201]


def test_a_cut_clip_shorter_than_min_partial_is_not_handed_out():
    sched = ClipScheduler("s", CLIP, min_partial=2 * SR)
    brk = Piece(CLIP + SR, 0.0, cause="gap", gap_s=100.0)
    got = sched.ready(0, 2 * CLIP + SR, [brk])
    # slot 1 held 1 s before the break: not handed out; slot 2 would start 9 s past the break,
    # so of the 100-s gap 91 s are skipped slots (9) and the new grid is slot 11
    assert [(c.index, c.data_end) for c in got] == [(0, None), (11, None)]
    # ... and counted: the collection stage reports it as a dropped clip
    assert sched.take_short() == 1 and sched.take_short() == 0
    assert sched.skipped == 9  # the gap's own slots are skipped, not dropped


def test_live_tail_is_flushed_when_its_time_has_passed():
    """The last partial clip of a live stream whose audio stopped is handed out once its end
    is behind the live edge, not when audio resumes."""
    sched = ClipScheduler("s", CLIP)
    assert [c.index for c in sched.ready(0, 14 * SR)] == [0]
    assert sched.ready(0, 14 * SR, flush_to=19 * SR) == []  # not over yet
    got = sched.ready(0, 14 * SR, flush_to=21 * SR)
    assert [(c.index, c.start, c.end, c.data_end) for c in got] == [(1, CLIP, 2 * CLIP, 14 * SR)]
    ring = Ring(60 * SR)
    ring.append(0, np.ones(14 * SR, np.float32))
    ring.append(25 * SR, np.ones(SR, np.float32))  # audio resumes after a short gap
    assert [c.index for c in sched.ready(0, ring.write_pos)] == []
    assert [c.index for c in sched.ready(0, 30 * SR)] == [2]


def enc(k, valid=True, d=4):
    return ClipEncoding(k, k * CLIP, (k + 1) * CLIP, k * 10.0, (k + 1) * 10.0,
                        torch.full((64, d), float(k + 1)), valid)


def test_window_is_a_slot_range_with_missing_clips_masked():
    """After a backlog drop the 30-s window at clip 10 was clips [1, 2, 10] (100 s of audio
    called 'the last 30 s'); now it is slots 8..10 with only 10 present."""
    mem = StreamMemory(30)
    for k in (0, 1, 2, 10):
        mem.add(enc(k))
    v = mem.build(upto=10, n=3)
    assert list(v.slots) == [8, 9, 10] and v.mask.tolist() == [0.0, 0.0, 1.0]
    assert [c.index for c in v.clips] == [10] and v.t_start == 100.0 and v.t_end == 110.0
    assert torch.equal(v.tokens[0], torch.zeros(64, 4)) and torch.equal(v.tokens[2], enc(10).tokens)
    v = mem.build(upto=10, n=30)  # clamped to the stream's first slot
    assert list(v.slots) == list(range(11))
    assert v.mask.tolist() == [1, 1, 1] + [0] * 7 + [1]
    assert mem.build(upto=9, n=3) is None  # slots 7..9: nothing real


def test_memory_keeps_slots_not_entries():
    mem = StreamMemory(30)
    mem.add(enc(0))
    mem.add(enc(1))
    mem.add(enc(40))  # 0 and 1 are older than 30 slots
    assert [c.index for c in mem.clips()] == [40]
    with pytest.raises(ValueError):
        mem.add(enc(40))
    mem.add(enc(41, valid=False))
    v = mem.build(upto=41, n=2)
    assert v.mask.tolist() == [1.0, 0.0] and v.start == 40 * CLIP
