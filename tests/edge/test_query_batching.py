"""Queries due together share the model's work, through the real worker and the real (fixture)
model: monitors of one stream share one memory per window and one cross K/V per memory whatever
their decoding settings and decode as one batch; streams due in the same cycle run as one batch
(memories of different lengths padded and masked) with the same results as one at a time."""

from __future__ import annotations

import pytest

from edge.model import generate

from .test_worker import Clock, count, feed, setup


class Counting:
    """The real model, recording the calls query execution makes."""

    def __init__(self, model):
        self.model = model
        self.memory_calls = 0
        self.cross_kv_calls = 0
        self.score_calls: list[list[int]] = []  # per score_batch_kv call: the memory of each row
        self.ask_calls: list[tuple[list[int], list[int] | None]] = []  # (row memories, limits)

    def memory(self, tokens, mask):
        self.memory_calls += 1
        self.last = (self.model.memory(tokens, mask), mask)
        return self.last[0]

    def cross_kv(self, memory, mask):
        self.cross_kv_calls += 1
        return self.model.cross_kv(memory, mask)

    def score_batch_kv(self, queries):
        self.score_calls.append([id(x) for x, _, _ in queries])
        return self.model.score_batch_kv(queries)

    def ask_batch(self, queries, sampling, max_new_tokens=None):
        self.ask_calls.append(([id(x) for x, _ in queries], max_new_tokens))
        return self.model.ask_batch(queries, sampling, max_new_tokens)

    def __getattr__(self, name):
        return getattr(self.model, name)


MONITORS = [
    {"name": "k", "question": "Is there knocking?", "every": "10s", "explain": False},
    {"name": "c", "question": "What is the machine doing?", "answer": "choice",
     "choices": ["idle", "failing badly"], "alert_on": ["failing badly"], "every": "10s"},
    {"name": "t", "question": "What do you hear?", "answer": "text", "every": "10s",
     "decoding": {"max_new_tokens": 6}},
    {"name": "t2", "question": "Describe the sound.", "answer": "text", "every": "10s",
     "window": "10s", "decoding": {"max_new_tokens": 3}},
]


def _run(af2, query_streams: int):
    model = Counting(af2)
    w, st, results, m = setup(MONITORS, streams=("a", "b", "c", "d"), model=model,
                              worker={"query_streams": query_streams}, clock=Clock())
    for i, (sid, seconds) in enumerate(zip("abcd", (30, 10, 20, 40))):
        feed(st[sid], seconds, value=0.05 * (i + 1))  # different audio, different memory lengths
    while w.step():
        pass
    return {(r.stream, r.monitor, r.end): r for r, _ in results}, model, m


def test_streams_due_in_the_same_cycle_batch_with_the_results_of_one_at_a_time(af2):
    batched, bm, metrics = _run(af2, 16)
    alone, am, _ = _run(af2, 1)
    assert len(batched) == len(alone) == 10 * len(MONITORS)  # 3 + 1 + 2 + 4 clips, every one due
    assert batched.keys() == alone.keys()
    for key, r in batched.items():
        a = alone[key]
        assert r.token_ids == a.token_ids and r.answer == a.answer, key  # ids exact in float32
        assert r.verdict == a.verdict and r.choice == a.choice, key
        if r.score is not None:
            assert r.score == pytest.approx(a.score, abs=1e-5), key
            assert r.coverage == pytest.approx(a.coverage, abs=1e-5), key
            for o in r.probs:
                assert r.probs[o] == pytest.approx(a.probs[o], abs=1e-5), (key, o)
    # batched: one call held the rows of several streams (each stream: two windows = two memories)
    assert max(len(set(rows)) for rows in bm.score_calls) > 2
    assert max(len(set(rows)) for rows, _ in bm.ask_calls) > 2
    assert max(len(set(rows)) for rows in am.score_calls) <= 2
    assert len(bm.score_calls) < len(am.score_calls)
    # still one memory and one cross K/V per stream window, batched or not
    assert bm.memory_calls == am.memory_calls == bm.cross_kv_calls == am.cross_kv_calls
    for sid in "abcd":
        assert count(metrics.queries_failed, sid, "k") == count(metrics.queries_missed, sid, "k") == 0


def test_monitors_of_one_stream_share_memory_cross_kv_one_batch_and_one_kv_cache(af2, monkeypatch):
    """Four text monitors with four max_new_tokens, a scored and a choice monitor on the default
    window, a text monitor on a 10-s window: per cycle two memories, two cross K/V, one scoring
    call, one decoding batch; the self-attention cache is allocated once for all cycles."""
    made = []

    class CountingCache(generate.StaticCache):
        def __init__(self, *a, **kw):
            made.append(a[1:3])  # (batch, max_seq)
            super().__init__(*a, **kw)

    monkeypatch.setattr(generate, "StaticCache", CountingCache)
    af2.set_graphs(False)  # a fresh pool: caches made from here on are counted
    mons = [{"name": f"t{n}", "question": "What do you hear?", "answer": "text", "every": "10s",
             "decoding": {"max_new_tokens": n}} for n in (2, 3, 4, 5)]
    mons += [{"name": "k", "question": "Is there knocking?", "every": "10s", "explain": False,
              "decoding": {"max_new_tokens": 7}},
             MONITORS[1],
             {"name": "w", "question": "Describe the sound.", "answer": "text", "every": "10s",
              "window": "10s", "decoding": {"max_new_tokens": 3}}]
    model = Counting(af2)
    w, st, results, _ = setup(mons, streams=("a",), model=model, clock=Clock())
    for cycle in range(1, 4):
        feed(st["a"], 10)
        while w.step():
            pass
        assert len(results) == cycle * len(mons)
        assert model.memory_calls == model.cross_kv_calls == 2 * cycle
        assert len(model.score_calls) == cycle and len(set(model.score_calls[-1])) == 1
        assert len(model.score_calls[-1]) == 2
        rows, limits = model.ask_calls[-1]
        assert len(model.ask_calls) == cycle and len(rows) == 5 and len(set(rows)) == 2
        assert sorted(limits) == [2, 3, 3, 4, 5]
    assert made == [(5, 64)]
    # every text answer as its monitor asked alone
    by_name = {r.monitor: r for r, _ in results[-len(mons):]}
    for n in (2, 3, 4, 5):
        r = by_name[f"t{n}"]
        assert len(r.token_ids) <= n


def test_a_memory_asked_a_few_scored_questions_never_materialises_its_cross_kv(af2):
    """Scored monitors only: they attend through the folded projections (`AF2.cross_memory`),
    with the scores of the materialised K/V within 1e-5."""
    model = Counting(af2)
    w, st, results, _ = setup(MONITORS[:2], streams=("a",), model=model, clock=Clock())
    feed(st["a"], 20)
    while w.step():
        pass
    assert len(results) == 4 and model.memory_calls == 2 and model.cross_kv_calls == 0
    r = next(r for r, _ in reversed(results) if r.monitor == "k")
    mem, mask = model.last
    s = af2.score(mem, mask, r.question, options=["yes", "Yes", "no", "No"])
    assert r.score == pytest.approx(s.probs["yes"] + s.probs["Yes"], abs=1e-5)
