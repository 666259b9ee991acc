"""The worker under overload and faults: fair encoding, earliest-deadline queries, a per-cycle
budget, counted failures, shutdown, the watchdog's idea of progress (issue 9, points 4-8).

Step-driven with a test clock wherever time matters, so nothing here sleeps for long.
"""

import logging
import threading
import time
import tracemalloc

import numpy as np

from edge.config import load_settings
from edge.daemon import Daemon
from edge.metrics import Metrics
from edge.sinks import CallbackSink
from edge.worker import InferenceWorker, StreamState
from streams.base import Frame, Source
from streams.timeline import Piece

from ..conftest import log_events
from .fakes import FakeModel

SR = 16000


class Clock:
    def __init__(self, t=1000.0):
        self.t = t

    def __call__(self):
        return self.t

    def advance(self, s):
        self.t += s


def setup(monitors=(), streams=("a", "b"), model=None, worker=None, clock=None, **audio):
    s = load_settings(data={
        "audio": audio, "worker": worker or {},
        "streams": [{"id": i, "source": "mqtt"} for i in streams],
        "monitors": list(monitors),
    })
    st = {i: StreamState(c, s) for i, c in zip(streams, s.streams)}
    results = []
    sink = CallbackSink(lambda r, a, sr: results.append((r, a)))
    m = Metrics()
    w = InferenceWorker(st, s, model=model, sink=sink, metrics=m, clock=clock or Clock())
    return w, st, results, m


def feed(stream, seconds, value=0.1):
    x = np.full(int(seconds * SR), value, np.float32)
    x[::100] = -value
    if not len(stream.timeline):
        stream.timeline.add(Piece(0, 1000.0))
    stream.ring.append(stream.ring.write_pos, x)


def count(metric, *labels):
    return metric.labels(*labels)._value.get()


def test_a_clip_cut_by_a_break_too_short_to_encode_is_counted_not_lost_silently():
    """11 s of audio, a 100-s outage (a fresh timeline piece), then 20 s: the slot the outage
    cut after 1 s (less than audio.flush_partial) is not encoded. It used to vanish without a
    count (a soak's `clips_unaccounted` was one per stream and outage); now it is a dropped clip."""
    model = FakeModel()
    w, st, _, m = setup(model=model, streams=("a",))
    feed(st["a"], 11)
    st["a"].timeline.add(Piece(11 * SR, 1000.0 + 111.0, cause="gap", gap_s=100.0))
    feed(st["a"], 20)
    while w.step():
        pass
    assert count(m.clips_dropped, "a", "too_short") == 1
    assert count(m.clips_encoded, "a") == 3  # the clip before the outage and two after it
    assert st["a"].clips.next_index - st["a"].clips.skipped == 3 + 1  # every slot accounted


# ----------------------------------------------------------------- fair encoding (point 4)
def test_no_stream_starves_when_encoding_falls_behind():
    # "a" started 100 s before "b", so its clip indexes are higher; ordering the batch by
    # clip index gave every encode to "b" while both streams were over capacity
    model = FakeModel()
    w, st, _, m = setup(model=model, encode_batch=1)
    feed(st["a"], 100)
    while w.step():
        pass
    before = count(m.clips_encoded, "a")
    for _ in range(40):
        feed(st["a"], 10)
        feed(st["b"], 10)
        w.step()
    got_a, got_b = count(m.clips_encoded, "a") - before, count(m.clips_encoded, "b")
    assert got_a >= 15 and got_b >= 15, (got_a, got_b)
    # whatever was not encoded is counted, per stream
    for sid in "ab":
        done = count(m.clips_encoded, sid) + count(m.clips_dropped, sid, "behind")
        assert done + len(st[sid].pending) == st[sid].clips.next_index


# ----------------------------------------------------------------- query order and budget (6)
def test_queries_run_earliest_deadline_first():
    model = FakeModel()
    mons = [{"name": "patient", "question": "q", "every": "10s", "deadline": "1h", "streams": ["a"]},
            {"name": "urgent", "question": "q", "every": "10s", "deadline": "20s", "streams": ["b"]}]
    w, st, results, _ = setup(mons, model=model)
    feed(st["a"], 10)
    feed(st["b"], 10)
    while w.step():
        pass
    assert [r.monitor for r, _ in results] == ["urgent", "patient"]


def test_encoding_cannot_starve_queries_nor_queries_the_encoding():
    model = FakeModel()
    w, st, results, m = setup([{"name": "k", "question": "q", "every": "10s", "deadline": "1h"}],
                              streams=("a",), model=model)
    encoded = []
    for _ in range(20):  # a new clip before every step: encoding alone could fill every turn
        feed(st["a"], 10)
        w.step()
        encoded.append(count(m.clips_encoded, "a"))
    assert len(results) >= 8  # queries got their turns while clips kept arriving
    assert encoded[-1] >= 8  # and so did the encoder, with queries always waiting
    assert all(b - a <= 8 for a, b in zip(encoded, encoded[1:]))


def test_budget_is_a_setting():
    model = FakeModel()
    w, st, results, m = setup([{"name": "k", "question": "q", "every": "10s", "deadline": "1h"}],
                              streams=("a",), model=model, worker={"encode_turns": 3})
    kinds = []
    for _ in range(12):
        feed(st["a"], 10)
        n0, e0 = len(results), count(m.clips_encoded, "a")
        w.step()
        kinds.append("q" if len(results) > n0 else "e" if count(m.clips_encoded, "a") > e0 else "-")
    assert "".join(kinds) == "eeeqeeeqeeeq"


def test_a_triggered_query_has_its_own_deadline():
    # every 1 h + a trigger: the triggered query inherited a 1-h deadline from `every`
    clock = Clock()
    model = FakeModel()
    mons = [{"name": "k", "question": "q", "every": "1h", "triggers": ["level_dbfs > -100"]}]
    w, st, results, m = setup(mons, streams=("a",), model=model, clock=clock)
    feed(st["a"], 10)
    w.step()  # encode: the trigger fires, a query group is queued
    assert len(w.queries) == 1
    clock.advance(31)  # worker.trigger_deadline defaults to 30 s
    while w.step():
        pass
    assert results == [] and count(m.queries_missed, "a", "k") == 1


def test_trigger_deadline_per_monitor():
    clock = Clock()
    model = FakeModel()
    mons = [{"name": "k", "question": "q", "every": "1h", "triggers": ["level_dbfs > -100"],
             "trigger_deadline": "5m", "cooldown": 0}]
    w, st, results, _m = setup(mons, streams=("a",), model=model, clock=clock)
    feed(st["a"], 10)
    w.step()
    clock.advance(200)
    while w.step():
        pass
    assert [r.monitor for r, _ in results] == ["k"]


# ----------------------------------------------------------------- failures (point 5)
class BrokenEncoder(FakeModel):
    def __init__(self, fail_calls=1, **kw):
        super().__init__(**kw)
        self.fail_calls = fail_calls

    def encode(self, clips):
        if self.fail_calls > 0:
            self.fail_calls -= 1
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return super().encode(clips)


def test_an_encoder_error_is_counted_the_gate_still_runs_and_the_worker_carries_on(caplog):
    caplog.set_level(logging.INFO, logger="edge.worker")
    model = BrokenEncoder(fail_calls=3)
    mons = [{"name": "loud", "kind": "gate", "triggers": ["level_dbfs > -40"], "cooldown": 0},
            {"name": "k", "question": "q", "every": "10s"}]
    w, st, results, m = setup(mons, streams=("a",), model=model, encode_batch=1)
    for _ in range(4):
        feed(st["a"], 10, value=0.5)
        while w.step():
            pass
    assert [r.monitor for r, _ in results].count("loud") == 4  # the gate ran on every clip
    assert count(m.clips_dropped, "a", "encoder_error") == 3
    assert count(m.queries_failed, "a", "k") == 3
    assert [c.index for c in st["a"].memory.clips()] == [3]
    assert [r.monitor for r, _ in results if r.monitor == "k"] == ["k"]  # carried on
    errors = [e for e in log_events(caplog.records) if e["event"].startswith("stage failed")
              and e["stage"] == "clip encoder"]
    assert len(errors) == 1 and errors[0]["exc_info"]  # once per burst, with the traceback
    assert errors[0]["detail"] == "1 clip(s) of a"
    assert any(e["stage"] == "clip encoder" and e["failures"] == 3
               for e in log_events(caplog.records, "stage works again"))


class BrokenAsk(FakeModel):
    def ask_batch(self, queries, sampling, max_new_tokens=None):
        self.tried = [*getattr(self, "tried", []), [q for _, q in queries]]
        if any("boom" in q for _, q in queries):
            raise RuntimeError("decoder exploded")
        return super().ask_batch(queries, sampling, max_new_tokens)


def test_an_exception_part_way_through_a_query_group_loses_only_its_monitors():
    # text monitors: the batch holding k1 fails (k1, k2 and k3 differ at most in length and
    # the wide window's memory joins them: one batch); retried one query at a time, only k1,
    # whose own query fails, is lost
    model = BrokenAsk()
    mons = [{"name": "k1", "question": "boom?", "answer": "text", "every": "10s"},
            {"name": "k2", "question": "fine?", "answer": "text", "every": "10s"},
            {"name": "k3", "question": "other decoding", "answer": "text", "every": "10s",
             "decoding": {"max_new_tokens": 5}},
            {"name": "wide", "question": "wide?", "answer": "text", "every": "10s", "window": "5m"}]
    w, st, results, m = setup(mons, streams=("a",), model=model)
    feed(st["a"], 10)
    while w.step():
        pass
    assert sorted(r.monitor for r, _ in results) == ["k2", "k3", "wide"]
    assert count(m.queries_failed, "a", "k1") == 1 and count(m.queries_failed, "a", "k2") == 0
    # one batch first, then each query alone
    assert sorted(model.tried[0]) == ["boom?", "fine?", "other decoding", "wide?"]
    assert sorted(map(tuple, model.tried[1:])) == [("boom?",), ("fine?",), ("other decoding",), ("wide?",)]
    assert w.errors == 0


# ----------------------------------------------------------------- evidence audio (point 9)
def test_results_carry_a_reference_to_their_audio_not_a_copy():
    model = FakeModel()
    mons = [{"name": f"k{i}", "question": f"q{i}", "every": "10s", "window": "30s",
             "decoding": {"max_new_tokens": i + 1}} for i in range(10)]
    w, st, results, _ = setup(mons, streams=("a",), model=model)
    feed(st["a"], 30)
    tracemalloc.start()
    try:
        while w.step():
            pass
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # 30 results of a 30-s window: copies would hold 30 x 1.9 MB
    assert len(results) >= 10 and held < 2_000_000, held
    _r, span = results[-1]
    x = span.read()
    assert x.shape == (30 * SR,) and np.array_equal(x, st["a"].ring.read(0, 30 * SR))


# ----------------------------------------------------------------- overload for a long time
def test_a_worker_slower_than_real_time_for_ten_minutes_accounts_for_everything():
    clock = Clock(0.0)

    class Slow(FakeModel):
        def encode(self, clips):
            clock.advance(15.0 * clips.shape[0])  # 1.5x slower than real time
            return super().encode(clips)

        def ask_many(self, memory, mask, questions, sampling):
            clock.advance(20.0)
            return super().ask_many(memory, mask, questions, sampling)

    model = Slow()
    mons = [{"name": "k", "question": "q", "every": "1m", "window": "5m"}]
    w, st, results, m = setup(mons, streams=("a", "b"), model=model, clock=clock, encode_batch=1)
    groups = []
    add = w.queries.add
    w.queries.add = lambda g, now: (groups.append(g), add(g, now))
    while clock.t < 600:
        for s in st.values():  # audio arrives in real time on the test clock
            feed(s, clock.t - (s.ring.write_pos / SR))
        if not w.step():
            clock.advance(1.0)  # idle: the next audio arrives
        assert len(w.queries) <= 4 and all(len(s.pending) <= 6 for s in st.values())
    while w.step():
        pass
    for sid, s in st.items():
        encoded = count(m.clips_encoded, sid)
        dropped = count(m.clips_dropped, sid, "behind")
        assert encoded > 0 and dropped > 0
        assert encoded + dropped == s.clips.next_index  # every clip encoded or counted
        assert len(s.memory) <= s.memory_clips
    answered = [r for r, _ in results]
    missed = sum(count(m.queries_missed, sid, "k") for sid in st)
    assert answered and len(answered) + missed == len(groups)  # every query answered or counted


# ----------------------------------------------------------------- daemon: shutdown (point 7)
class Feeder(Source):
    """A live source: ``seconds`` of audio at once, then silence (no frames) until stopped."""

    finite = False

    def __init__(self, seconds, value=0.1):
        self.streams = ("s",)
        self.seconds = seconds
        self.value = value
        self.sent = threading.Event()

    def run(self, emit, stop):
        n = 16000
        for i in range(int(self.seconds)):
            emit(Frame("s", i * n, 1000.0 + i, i, np.full(n, self.value, np.float32)))
        self.sent.set()
        stop.wait()


def daemon_settings(tmp_path, monitors, **extra):
    return load_settings(data={"data_dir": str(tmp_path / "data"),
                               "streams": [{"id": "s", "source": "mqtt"}],
                               "monitors": monitors, "alerts": {"mqtt": {"enabled": False}},
                               **extra})


class Blocking(FakeModel):
    """A query that takes 'five minutes': scoring blocks until released."""

    def __init__(self):
        super().__init__()
        self.started = threading.Event()
        self.release = threading.Event()

    def score_batch_kv(self, queries):
        self.started.set()
        self.release.wait(30)
        return super().score_batch_kv(queries)


def test_stop_during_a_long_query_counts_and_logs_what_it_abandons(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="edge.worker")
    model = Blocking()
    s = daemon_settings(tmp_path, [{"name": "k", "question": "q", "every": "10s"}])
    got = []
    src = Feeder(40)
    d = Daemon(s, model=model, sources=[src], sinks=[CallbackSink(lambda r, a, sr: got.append(r))])
    d.start()
    try:
        # clip 0's query runs "for five minutes"; clips 1-3 (or their queries) wait behind it
        assert src.sent.wait(10) and model.started.wait(10)
    finally:
        t0 = time.monotonic()
        left = d.stop(timeout=2)
        took = time.monotonic() - t0
    model.release.set()
    d._worker_thread.join(10)  # the long query finishes after the deadline
    assert not d._worker_thread.is_alive()
    assert took < 3.5
    assert left["queries_running"] == 1 and left["clips"] + left["queries_queued"] == 3
    assert count(d.metrics.clips_dropped, "s", "shutdown") == left["clips"]
    assert count(d.metrics.queries_missed, "s", "k") == 1 + left["queries_queued"]
    assert [e["at"] for e in log_events(caplog.records, "work abandoned")] == ["shutdown"]
    assert not [r for r in got if r.monitor == "k"]  # nothing passed on after the deadline
    # counted once: missed, not also run (nor its result dropped)
    assert count(d.metrics.queries, "s", "k") == 0
    assert count(d.metrics.results_dropped, "s", "k", "shutdown") == 0
    assert d.alerts_pipeline.health()["ok"] is False  # the alert stage was flushed and stopped


def test_stop_during_a_long_encode_counts_the_clips_in_the_encoder(tmp_path):
    release = threading.Event()

    class SlowEncoder(FakeModel):
        def encode(self, clips):
            release.wait(30)
            return super().encode(clips)

    model = SlowEncoder()
    s = daemon_settings(tmp_path, [{"name": "k", "question": "q", "every": "10s"}])
    src = Feeder(20)
    d = Daemon(s, model=model, sources=[src], alerts=False)
    d.start()
    try:
        assert src.sent.wait(10)
        deadline = time.time() + 10
        while not d.worker._encoding and time.time() < deadline:
            time.sleep(0.02)
        time.sleep(0.1)  # the worker is blocked in encode() with this batch
        in_encoder = len(d.worker._encoding)  # 1 or 2, as the first collect found them
    finally:
        left = d.stop(timeout=1)
    release.set()
    d._worker_thread.join(10)  # the encoder returns after the deadline: nothing more is recorded
    assert not d._worker_thread.is_alive()
    assert left["clips"] == 2 and count(d.metrics.clips_dropped, "s", "shutdown") == 2
    assert count(d.metrics.clips_encoded, "s") == 0
    # the queries due on the clips in the encoder are counted; a pending clip never fell due
    assert in_encoder >= 1 and count(d.metrics.queries_missed, "s", "k") == in_encoder


def test_gate_results_built_after_the_drain_deadline_are_counted_not_lost(tmp_path):
    hearing, release = threading.Event(), threading.Event()

    class SlowLevels(CallbackSink):  # the gate stage is still hearing the clip at the deadline
        def publish_level(self, stream, dbfs):
            hearing.set()
            release.wait(30)

    got = []
    s = daemon_settings(tmp_path, [{"name": "g", "kind": "gate", "triggers": ["level_dbfs > -40"]}])
    d = Daemon(s, sources=[Feeder(10)], alerts=False,
               sinks=[SlowLevels(lambda r, a, sr: got.append(r))])
    d.start()
    try:
        assert hearing.wait(10)
    finally:
        left = d.stop(timeout=1)
    release.set()
    d._worker_thread.join(10)
    assert not d._worker_thread.is_alive()
    assert left["clips"] == 1 and count(d.metrics.clips_dropped, "s", "shutdown") == 1
    assert got == []  # not passed on after the deadline, but counted
    assert count(d.metrics.results_dropped, "s", "g", "shutdown") == 1


def test_stop_drains_queued_work_before_stopping(tmp_path):
    model = FakeModel()
    model.ask_many = _slow(model.ask_many, 0.05)
    s = daemon_settings(tmp_path, [{"name": "k", "question": "q", "every": "10s"}])
    got = []
    src = Feeder(60)
    d = Daemon(s, model=model, sources=[src], alerts=False,
               sinks=[CallbackSink(lambda r, a, sr: got.append(r))])
    d.start()
    try:
        assert src.sent.wait(10)
    finally:
        left = d.stop(timeout=20)
    assert len(got) == 6 and not any(left.values())
    assert count(d.metrics.queries_missed, "s", "k") == 0


def _slow(fn, s):
    def wrapped(*a, **kw):
        time.sleep(s)
        return fn(*a, **kw)
    return wrapped


# ----------------------------------------------------------------- watchdog and silence (8)
def test_silent_input_is_a_health_state_never_a_reason_to_restart(tmp_path):
    s = daemon_settings(tmp_path, [], health={"silent_after": "0.3s"})
    src = Feeder(2)
    d = Daemon(s, sources=[src], alerts=False, watchdog_max_age=0.5)
    d.start()
    try:
        assert src.sent.wait(10)
        assert not d.health()["streams"]["s"]["silent"]
        time.sleep(1.0)  # no frames for longer than the watchdog's max age
        assert d.progress_ok()  # the worker turns: keep pinging systemd
        h = d.health()
        assert h["ok"] and h["streams"]["s"]["silent"] and h["silent_streams"] == ["s"]
        assert d.metrics.registry.get_sample_value("fe_stream_silent", {"stream": "s"}) == 1.0
    finally:
        d.stop(timeout=2)


def test_a_long_query_group_keeps_the_watchdog_fed_while_each_model_call_returns(tmp_path):
    model = FakeModel()
    model.ask_many = _slow(model.ask_many, 0.3)
    mons = [{"name": f"k{i}", "question": "q", "every": "10s", "decoding": {"max_new_tokens": i + 1}}
            for i in range(6)]  # six decoding settings: six model calls, ~1.8 s in one group
    s = daemon_settings(tmp_path, mons)
    src = Feeder(10)
    got = []
    d = Daemon(s, model=model, sources=[src], alerts=False, watchdog_max_age=1.0,
               sinks=[CallbackSink(lambda r, a, sr: got.append(r))])
    d.start()
    try:
        ok = []
        deadline = time.time() + 20
        while len(got) < 6 and time.time() < deadline:
            ok.append(d.progress_ok())
            time.sleep(0.05)
    finally:
        d.stop(timeout=2)
    assert len(got) == 6 and all(ok)


def test_healthz_says_which_stream_went_silent_per_stream_silent_after(tmp_path):
    """/healthz stayed 200 {"ok": true} after audio stopped: now each stream has a state, a
    last-frame age and its own silent_after; the report is degraded with one reason per
    stream, over HTTP and in /metrics."""
    import json
    import urllib.request

    s = load_settings(data={
        "data_dir": str(tmp_path / "data"), "health": {"silent_after": "30s"},
        "http": {"enabled": True, "port": 0},
        "streams": [{"id": "s", "source": "file", "path": "x", "silent_after": "0.4s"},
                    {"id": "quiet", "source": "mqtt"}],
        "alerts": {"mqtt": {"enabled": False}}})
    class Idle(Source):  # a live source that never hears anything
        finite = False
        streams = ("quiet",)

        def run(self, emit, stop):
            stop.wait()

    src = Feeder(2)
    d = Daemon(s, sources=[src, Idle()], alerts=False)
    d.start()
    try:
        assert src.sent.wait(10)
        url = f"http://127.0.0.1:{d.http_endpoint.port}"

        def get(path):
            with urllib.request.urlopen(url + path) as r:
                return r.status, r.read().decode()

        code, body = get("/healthz")
        h = json.loads(body)
        assert code == 200 and h["status"] == "ok" and h["reasons"] == []
        assert h["streams"]["s"]["state"] == "live" and h["streams"]["s"]["silent_after_s"] == 0.4
        assert h["streams"]["quiet"]["state"] == "starting"
        assert h["streams"]["quiet"]["last_frame_age_s"] is None
        assert h["streams"]["quiet"]["silent_after_s"] == 30.0
        time.sleep(0.8)
        code, body = get("/healthz")
        h = json.loads(body)
        # degraded is a documented field with 200: a quiet input is no reason for a restart
        assert code == 200 and h["status"] == "degraded" and h["ok"]
        assert h["streams"]["s"]["state"] == "silent" and h["streams"]["s"]["last_frame_age_s"] >= 0.4
        assert h["streams"]["quiet"]["state"] == "starting"  # 30 s not over yet
        assert len(h["reasons"]) == 1 and h["reasons"][0].startswith("stream s is silent: no audio")
        _, metrics = get("/metrics")
        assert 'fe_stream_state{state="silent",stream="s"} 1.0' in metrics
        assert 'fe_stream_state{state="live",stream="s"} 0.0' in metrics
        assert 'fe_stream_silent{stream="s"} 1.0' in metrics
        age = float(next(x for x in metrics.splitlines()
                         if x.startswith('fe_stream_last_frame_age_seconds{stream="s"}')).split()[-1])
        assert age >= 0.4
    finally:
        d.stop(timeout=2)
    # the worker stopped: failing, 503
    h = d.health()
    assert h["status"] == "failing" and h["http_status"] == 503 and not h["ok"]


def test_one_model_call_longer_than_the_watchdog_interval_keeps_systemd_fed(
        tmp_path, monkeypatch, fixture_dir):
    """A single generation (one `ask_batch` call of a real AF2 model) that takes several
    WatchdogSec on a slow CPU: the decoder's token loop beats the worker's heartbeat, so the
    WATCHDOG=1 datagrams on the real notify socket never pause for a WatchdogSec."""
    import os
    import socket

    from edge.model import AF2
    from edge.model.generate import StaticDecoder
    from edge.model.tokenizer import AF2Tokenizer
    from tests.edge.model.test_score import tiny_config

    interval = 0.8  # WatchdogSec
    tok = AF2Tokenizer.from_dir(fixture_dir / "checkpoint" / "lm")
    model = AF2.random(tiny_config(32, 1, 2, 2, 1), seed=1, tokenizer=tok)
    step = StaticDecoder.step

    def slow_step(self, tokens):  # a slow CPU: 50 ms per decoded token
        time.sleep(0.05)
        return step(self, tokens)

    monkeypatch.setattr(StaticDecoder, "step", slow_step)
    calls = []
    ask_batch = model.ask_batch

    def timed(queries, sampling, **kw):
        t0 = time.monotonic()
        out = ask_batch(queries, sampling, **kw)
        calls.append((t0, time.monotonic(), [len(a.token_ids) for a in out]))
        return out

    model.ask_batch = timed
    name = f"fe-wd-{os.getpid()}-{time.monotonic_ns()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(0.1)
    pings = []
    reading = threading.Event()
    reading.set()

    def read():
        while reading.is_set():
            try:
                if sock.recv(64) == b"WATCHDOG=1":
                    pings.append(time.monotonic())
            except TimeoutError:
                pass

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    monkeypatch.setenv("WATCHDOG_USEC", str(int(interval * 1e6)))
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    s = daemon_settings(tmp_path, [{"name": "t", "question": "What do you hear?", "answer": "text",
                                    "every": "10s", "decoding": {"max_new_tokens": 70}}])
    d = Daemon(s, model=model, sources=[Feeder(10)], alerts=False, watchdog_max_age=interval)
    d.start()
    try:
        deadline = time.monotonic() + 60
        while not calls and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        d.stop(timeout=2)
        reading.clear()
        reader.join(2)
        sock.close()
    assert calls, "the query never ran"
    t0, t1, ntok = calls[0]
    assert ntok == [70] and t1 - t0 > 4 * interval  # one model call, 4+ watchdog intervals long
    during = [t for t in pings if t0 <= t <= t1]
    edges = [t0, *during, t1]
    assert len(during) >= 4 and max(b - a for a, b in zip(edges, edges[1:])) < interval
