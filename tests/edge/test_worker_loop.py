"""The inference worker (edge/worker/loop.py: InferenceWorker), driven step by step (no threads)."""

import math
import time

import numpy as np

from edge.config import load_settings
from edge.metrics import Metrics
from edge.worker import InferenceWorker, StreamState
from streams.timeline import Piece

from .fakes import FakeModel

SR = 16000
GATE = [{"name": "each", "kind": "gate", "triggers": ["level_dbfs > -90"], "cooldown": 0}]


def setup(monitors=(), streams=("a", "b"), model=None, worker=None, clock=time.monotonic,
          **audio):
    s = load_settings(data={
        "audio": audio,
        "worker": worker or {},
        "streams": [{"id": i, "source": "mqtt"} for i in streams],
        "monitors": list(monitors),
    })
    st = {i: StreamState(c, s) for i, c in zip(streams, s.streams)}
    results = []

    class Sink:
        def submit(self, r, audio, sr):
            results.append((r, audio))

        def publish_level(self, stream, dbfs):
            pass

    m = Metrics()
    w = InferenceWorker(st, s, model=model, sink=Sink(), metrics=m, clock=clock)
    return w, st, results, m


def feed(stream, seconds, value=0.1, start=None):
    n = int(seconds * SR)
    x = np.full(n, value, np.float32)
    x[::100] = -value
    ring = stream.ring
    if not len(stream.timeline):
        stream.timeline.add(Piece(0, 1000.0))
    ring.append(ring.write_pos if start is None else start, x)


def run_all(w):
    while w.step():
        pass


def test_ready_clips_of_all_streams_are_encoded_together_exactly_once():
    model = FakeModel()
    w, st, _, m = setup(model=model)
    feed(st["a"], 30)
    feed(st["b"], 25)
    run_all(w)
    assert model.encode_calls == [5]  # 3 + 2 clips, one call
    feed(st["b"], 5)
    run_all(w)
    assert model.encode_calls == [5, 1]
    assert [c.index for c in st["a"].memory.clips()] == [0, 1, 2]
    assert [c.index for c in st["b"].memory.clips()] == [0, 1, 2]
    assert m.clips_encoded.labels("a")._value.get() == 3


def test_memory_keeps_the_last_30_clips_with_their_spans():
    model = FakeModel()
    w, st, _, _ = setup(model=model, streams=("a",), encode_batch=4)
    for _ in range(35):
        feed(st["a"], 10)
        run_all(w)
    clips = st["a"].memory.clips()
    assert [c.index for c in clips] == list(range(5, 35))
    assert clips[0].start == 5 * 160000 and clips[-1].end == 35 * 160000
    assert abs(clips[0].t_start - (1000.0 + 50.0)) < 1e-6


def test_when_encoding_falls_behind_the_oldest_clips_are_dropped():
    model = FakeModel()
    w, st, _, m = setup(model=model, streams=("a",), max_pending_clips=3)
    feed(st["a"], 100)  # ten clips at once: more than the worker may queue
    run_all(w)
    assert [c.index for c in st["a"].memory.clips()] == [7, 8, 9]
    assert m.clips_dropped.labels("a", "behind")._value.get() == 7


def test_due_monitors_share_one_memory_per_window_and_one_kv_per_memory():
    model = FakeModel()
    mons = [
        {"name": "k1", "question": "knocking at {stream}?", "every": "30s"},
        {"name": "k2", "question": "alarm?", "every": "30s", "explain": False,
         "decoding": {"max_new_tokens": 7}},
        {"name": "k3", "question": "describe", "answer": "text", "every": "30s",
         "decoding": {"max_new_tokens": 5}},
        {"name": "k4", "question": "what?", "answer": "text", "every": "30s"},
        {"name": "wide", "question": "long?", "every": "30s", "window": "5m"},
    ]
    w, st, results, m = setup(mons, streams=("a",), model=model)
    feed(st["a"], 30)
    run_all(w)
    assert len(results) == 5
    # two window lengths (30 s and 5 m) -> two memories, each with ONE cross K/V whatever the
    # monitors' decoding settings (two text settings + scored + explained in the 30-s one)
    assert model.memory_calls == 2 and model.cross_kv_calls == 2
    assert sorted(q for q, _ in model.score_calls) == ["alarm?", "knocking at a?", "long?"]
    by = {r.monitor: r for r, _ in results}
    # scored yes/no: P(yes) among yes/Yes/no/No with the fake's log-probabilities
    want = 0.9 / (0.6 + 0.3 + 0.05 + math.exp(-10))  # "No" is not in the fake's table: -10
    assert abs(by["k1"].score - want) < 1e-9 and by["k1"].verdict == "positive"
    assert by["k1"].probs["yes"] == by["k1"].score and by["k1"].threshold == 0.5
    assert m.monitor_score.labels("a", "k1")._value.get() == by["k1"].score
    # k1 turned ON: explained in words (its own decoding settings); k2 has explain off
    assert by["k1"].question == "knocking at a?" and by["k1"].answer == "Yes, knocking."
    assert by["k1"].token_ids == (7, len("knocking at a?")) and by["k1"].extra["explained"]
    assert by["k2"].answer == "yes" and by["k2"].token_ids == () and not by["k2"].extra["explained"]
    assert by["k3"].verdict == "unknown" and by["k3"].score is None and by["k1"].model_id == "fake-af2"
    # each text question's length reaches the model, and the two text monitors whose settings
    # differ only in length decode as one batch
    assert sorted((q, n) for (qs, _), lim in zip(model.ask_calls, model.ask_limits)
                  for q, n in zip(qs, lim)) == [
        ("describe", 5), ("knocking at a?", 64), ("long?", 64), ("what?", 64)]
    assert [sorted(qs) for qs, _ in model.ask_calls if "what?" in qs] == [["describe", "what?"]]
    assert by["k1"].end.timestamp() - by["k1"].start.timestamp() == 30.0
    assert m.queries.labels("a", "k1")._value.get() == 1
    audio = {r.monitor: a for r, a in results}["k1"]
    assert audio.read().shape == (30 * SR,)


def test_queries_past_their_deadline_are_skipped_and_counted():
    model = FakeModel()
    w, st, results, m = setup([{"name": "k", "question": "q", "every": "10s", "deadline": "10ms"}],
                              streams=("a",), model=model)
    feed(st["a"], 10)
    w.collect()
    w.step()  # encode: the query falls due
    time.sleep(0.05)
    w.step()  # too late
    assert results == [] and m.queries_missed.labels("a", "k")._value.get() == 1


def test_query_queue_stays_bounded_while_encoding_keeps_the_worker_busy():
    # with a budget that lets encoding keep the worker busy, the groups that can no longer
    # meet their deadline must not pile up for ever
    model = FakeModel()
    w, st, results, m = setup([{"name": "k", "question": "q", "every": "10s", "deadline": "10ms"}],
                              streams=("a",), model=model, worker={"encode_turns": 1000})
    for _ in range(20):
        feed(st["a"], 10)
        assert w.step()  # one clip encoded, a query group falls due
        time.sleep(0.02)
    assert len(w.queries) <= 1
    assert m.queries_missed.labels("a", "k")._value.get() >= 19
    assert results == []


def test_without_a_model_only_gate_monitors_run():
    mons = [{"name": "k", "question": "q", "every": "10s"},
            {"name": "loud", "kind": "gate", "triggers": ["level_dbfs > -30"], "cooldown": 0}]
    w, st, results, m = setup(mons, streams=("a",))
    feed(st["a"], 20, value=0.5)
    run_all(w)
    assert [r.monitor for r, _ in results] == ["loud", "loud"]
    assert results[0][0].model_id == "level-gate" and results[0][0].verdict == "positive"
    assert m.level_dbfs.labels("a")._value.get() > -10
    assert m.clips_encoded.labels("a")._value.get() == 0


def test_gap_only_clips_are_masked_out():
    model = FakeModel()
    w, st, results, m = setup([{"name": "k", "question": "q", "every": "30s", "window": "30s"}],
                              streams=("a",), model=model)
    feed(st["a"], 10)
    feed(st["a"], 10, start=st["a"].ring.write_pos + 10 * SR)  # 10 s lost upstream
    run_all(w)
    # the all-gap clip is not encoded (it was, 0.6 s each, right after an outage) and its
    # slot is masked in the window
    assert [c.index for c in st["a"].memory.clips()] == [0, 2]
    assert sum(model.encode_calls) == 2 and m.clips_gap.labels("a")._value.get() == 1
    r = results[0][0]
    assert r.extra["masked"] == 1 and r.extra["clips"] == [0, 2]
    assert r.start.timestamp() == 1000.0 and r.end.timestamp() == 1030.0


def test_overlapping_hop():
    model = FakeModel()
    w, st, _, _ = setup(model=model, streams=("a",), hop="5s", memory="155s", window="30s")
    feed(st["a"], 30)
    run_all(w)
    clips = st["a"].memory.clips()
    assert [c.start for c in clips] == [i * 5 * SR for i in range(5)]
    assert st["a"].memory_clips == 30


def test_live_partial_clip_is_heard_when_audio_stops_not_when_it_resumes():
    """A live stream stops 4 s into a clip: the clip is handed out (its tail silence) once
    the rest of it plus a grace is overdue, while the outage is still going on."""
    now = [0.0]
    w, st, results, _ = setup(GATE, streams=("a",), clock=lambda: now[0])
    feed(st["a"], 14)
    run_all(w)
    assert [r.extra["clip"] for r, _ in results] == [0]
    now[0] += 7.9  # 6 s of the clip missing + 2 s grace not yet over
    run_all(w)
    assert len(results) == 1
    now[0] += 0.2
    run_all(w)
    assert [r.extra["clip"] for r, _ in results] == [0, 1]
    r, span = results[1]
    assert r.start.timestamp() == 1010.0 and r.end.timestamp() == 1020.0
    audio = span.read()  # the evidence is the 4 s that were heard
    assert audio.shape == (4 * SR,) and audio.any()


def test_a_30_day_jump_through_the_worker_is_o1_and_windows_stay_true():
    """A mic reopening 30 days later (an RTC-less board's clock, or a long outage) used to make
    one record per 10 s of the jump under the worker lock (259 194 for 30 days)."""
    model = FakeModel()
    w, st, results, _ = setup([{"name": "k", "question": "q", "every": "10s", "window": "30s"}],
                              streams=("a",), model=model)
    feed(st["a"], 20)
    run_all(w)
    st["a"].timeline.add(Piece(20 * SR, 1020.0 + 30 * 86400, cause="reopen", gap_s=30 * 86400))
    feed(st["a"], 10)
    t0 = time.perf_counter()
    w.collect()
    assert time.perf_counter() - t0 < 0.05
    run_all(w)
    r = results[-1][0]
    assert r.extra["clip"] == 2 + 259200 and r.extra["clips"] == [259202]
    assert r.extra["masked"] == 2  # the two slots before it: 30 days ago is not 'the last 30 s'
    assert r.start.timestamp() == 1020.0 + 30 * 86400 and r.end.timestamp() == 1030.0 + 30 * 86400
