"""Monitors about one memory: yes_no / choice are scored, text generates, all share one K/V."""

from __future__ import annotations

import pytest
import torch

from edge.answering import MemoryQueries, Query, is_scored, options_of, variants
from edge.config import MonitorConfig
from edge.model import Sampling


def mon(**kw) -> MonitorConfig:
    base = {"name": "m", "question": "Is there knocking?", "every": 60}
    base.update(kw)
    return MonitorConfig(**base)


class Counting:
    """The real model, counting the cross-attention K/V computations."""

    def __init__(self, model):
        self.model = model
        self.cross_kv_calls = 0

    def cross_kv(self, memory, mask):
        self.cross_kv_calls += 1
        return self.model.cross_kv(memory, mask)

    def __getattr__(self, name):
        return getattr(self.model, name)


@pytest.fixture(scope="module")
def memory(af2, expected):
    return af2.memory(af2.encode(expected["clips"]), torch.ones(3)), torch.ones(3)


def test_variants_and_options():
    assert variants("yes") == ["yes", "Yes"]
    assert variants("running normally") == ["running normally", "Running normally"]
    assert variants("PUMP") == ["PUMP", "pump", "Pump"]
    assert options_of(mon()) == (["yes", "no"], {"yes"})
    assert options_of(mon(positive="no")) == (["yes", "no"], {"no"})
    c = mon(answer="choice", choices=["Idle", "failing", "grinding"], alert_on=["FAILING", "grinding"])
    assert options_of(c) == (["Idle", "failing", "grinding"], {"failing", "grinding"})
    assert is_scored(c) and not is_scored(mon(answer="choice", choices=["a", "b"], scored=False))
    assert not is_scored(mon(answer="text"))


def test_yes_no_score_is_the_probability_of_yes_among_yes_and_no_spellings(af2, memory):
    mem, mask = memory
    cfg = mon(threshold=0.5)
    [o] = MemoryQueries(af2, mem, mask).answer([Query(cfg, "is there knocking?")])
    # one scored question about a memory attends through the folded projections
    s = af2.score(mem, mask, "is there knocking?", options=["yes", "Yes", "no", "No"],
                  xkv=af2.cross_memory(mem, mask))
    want = s.probs["yes"] + s.probs["Yes"]
    assert o.score == pytest.approx(want, rel=1e-9)
    kv = af2.score(mem, mask, "is there knocking?", options=["yes", "Yes", "no", "No"])
    assert o.score == pytest.approx(kv.probs["yes"] + kv.probs["Yes"], abs=1e-5)
    assert o.probs == pytest.approx({"yes": want, "no": s.probs["no"] + s.probs["No"]})
    assert o.coverage == pytest.approx(s.coverage)
    assert o.verdict == ("positive" if want >= 0.5 else "negative")
    assert o.token_ids == () and o.answer in ("yes", "no") and not o.explained
    flipped = MemoryQueries(af2, mem, mask).answer([Query(mon(positive="no"), "is there knocking?")])[0]
    assert flipped.score == pytest.approx(1 - want)


def test_choice_score_sums_the_alert_on_options(af2, memory):
    mem, mask = memory
    cfg = mon(answer="choice", choices=["idle", "failing", "grinding"], alert_on=["failing", "grinding"])
    [o] = MemoryQueries(af2, mem, mask).answer([Query(cfg, "what is the machine doing?")])
    assert sum(o.probs.values()) == pytest.approx(1.0)
    assert o.score == pytest.approx(o.probs["failing"] + o.probs["grinding"])
    assert o.choice == max(o.probs, key=o.probs.get) == o.answer


def test_threshold_and_hysteresis_make_the_verdict(af2, memory):
    mem, mask = memory
    q = "is there knocking?"
    s = MemoryQueries(af2, mem, mask).answer([Query(mon(), q)])[0].score
    assert 0 < s < 1
    for thr, hyst, want in [(s / 2, 0.0, "positive"), ((1 + s) / 2, 0.0, "negative"),
                            ((1 + s) / 2, (1 + s) / 2 - s / 2, "unknown")]:
        o = MemoryQueries(af2, mem, mask).answer([Query(mon(threshold=thr, hysteresis=hyst), q)])[0]
        assert o.verdict == want


def test_monitors_with_different_decoding_settings_share_one_cross_kv(af2, memory):
    """Four text monitors with four max_new_tokens and two scored monitors: one K/V."""
    mem, mask = memory
    model = Counting(af2)
    qs = [Query(mon(name=f"t{n}", answer="text", decoding={"max_new_tokens": n}), "what is it?")
          for n in (2, 3, 4, 5)]
    qs += [Query(mon(name="k", decoding={"max_new_tokens": 6}), "is there knocking?"),
           Query(mon(name="c", answer="choice", choices=["idle", "failing"], alert_on=["failing"]),
                 "what is the machine doing?")]
    mq = MemoryQueries(model, mem, mask)
    outs = mq.answer(qs)
    assert model.cross_kv_calls == 1
    assert [len(o.token_ids) for o in outs[:4]] == [2, 3, 4, 5]
    # the same answers as each monitor asked on its own
    for q, o in zip(qs[:4], outs[:4]):
        alone = af2.ask(mem, mask, q.question, q.cfg.decoding.sampling())
        assert o.token_ids == tuple(alone.token_ids) and o.answer == alone.text
    explained = mq.explain(qs[4], outs[4])
    assert model.cross_kv_calls == 1
    assert explained.explained and explained.score == outs[4].score
    assert explained.answer == af2.ask(mem, mask, "is there knocking?", Sampling(max_new_tokens=6)).text


def test_explain_runs_only_when_the_monitor_turns_on():
    """Words are generated for the result that turns a scored monitor ON (by the alert rules'
    own semantics), not for the positives that follow nor for negatives."""
    import math
    from datetime import datetime, timezone

    from alerts.config import AlertsConfig
    from edge.answering import TurnOnWatch, answer_due
    from edge.results import MonitorResult

    from .fakes import FakeModel

    model = FakeModel(answer="Yes, a loud knocking.")
    watch = TurnOnWatch(AlertsConfig(node_id="n", rules={"off_after_negatives": 2, "cooldown_s": 0}))
    cfg = mon(name="k", threshold=0.7, hysteresis=0.2, decoding={"max_new_tokens": 9})
    silent = mon(name="q", threshold=0.7, explain=False)
    t = datetime(2026, 1, 1, tzinfo=timezone.utc)

    def make(q, o):
        return MonitorResult(
            stream="s", monitor=q.cfg.name, question=q.question, answer=o.answer,
            token_ids=o.token_ids, verdict=o.verdict, start=t, end=t, latency_s=0.0,
            model_id="fake", score=o.score, threshold=q.cfg.threshold,
            hysteresis=q.cfg.hysteresis, probs=o.probs, coverage=o.coverage,
            extra={"explained": o.explained})

    seen = []
    for p_yes in (0.1, 0.9, 0.8, 0.6, 0.3, 0.95, 0.2, 0.1, 0.9):
        model.logprobs = {"yes": math.log(p_yes), "no": math.log(1 - p_yes)}
        model.ask_calls.clear()
        [r, r2] = answer_due(model, None, None, [Query(cfg, "knock?"), Query(silent, "quiet?")], make, watch)
        assert r.score == pytest.approx(p_yes, abs=1e-3)
        seen.append(r.extra["explained"])
        if r.extra["explained"]:
            assert r.answer == "Yes, a loud knocking." and r.token_ids == (7, len("knock?"))
            assert model.ask_calls == [(["knock?"], cfg.decoding.sampling())]
        else:
            assert r.answer in ("yes", "no") and r.token_ids == () and model.ask_calls == []
        assert not r2.extra["explained"]  # explain: false never generates
    # ON at 0.9; 0.8 / 0.6 (band) / 0.3 / 0.95 keep it ON (one below 0.5, then a positive);
    # 0.2, 0.1 turn it OFF; 0.9 turns it ON again
    assert seen == [False, True, False, False, False, False, False, False, True]
    assert model.cross_kv_calls == 9  # one per memory, shared by both monitors and the explain


def test_threshold_minus_hysteresis_must_stay_above_zero():
    with pytest.raises(ValueError, match="threshold - hysteresis"):
        mon(threshold=0.3, hysteresis=0.3)
    with pytest.raises(ValueError):
        mon(threshold=1.0)
