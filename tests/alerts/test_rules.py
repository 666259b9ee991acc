"""Hysteresis, cooldown and de-duplication of the rule engine."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from alerts.config import AlertsConfig
from alerts.rules import RuleEngine, normalise_answer
from tests.alerts.helpers import result


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def engine(**rules: float) -> tuple[RuleEngine, Clock]:
    base = {"off_after_negatives": 3, "max_not_heard_s": 100, "cooldown_s": 0, "dedupe_window_s": 0}
    base.update(rules)
    clock = Clock()
    return RuleEngine(AlertsConfig(node_id="n", rules=base), clock=clock), clock


def test_on_at_first_positive_and_off_after_n_negatives() -> None:
    e, _ = engine(off_after_negatives=3)
    d = e.observe(result("positive"))
    assert d.transition and d.transition.state == "ON" and d.raise_alert
    assert e.observe(result("negative")).transition is None
    assert e.observe(result("negative")).transition is None
    d = e.observe(result("negative"))
    assert d.transition and d.transition.state == "OFF" and d.transition.reason == "negatives"
    assert e.state("s1", "knock") == "OFF"


def test_positive_resets_negative_count_and_repeats_do_not_raise() -> None:
    e, _ = engine(off_after_negatives=2)
    assert e.observe(result("positive")).raise_alert
    e.observe(result("negative"))
    d = e.observe(result("positive"))
    assert d.transition is None and not d.raise_alert  # still ON: no second alert
    assert e.observe(result("negative")).transition is None  # count restarted
    assert e.observe(result("negative")).transition.state == "OFF"  # type: ignore[union-attr]


def test_unknown_verdicts_neither_confirm_nor_clear() -> None:
    e, _ = engine(off_after_negatives=1)
    e.observe(result("positive"))
    for _ in range(5):
        assert e.observe(result("unknown")).transition is None
    assert e.state("s1", "knock") == "ON"
    assert e.observe(result("unknown")).raise_alert is False


def test_off_after_max_not_heard_via_tick_and_via_results() -> None:
    e, clock = engine(max_not_heard_s=30, off_after_negatives=99)
    e.observe(result("positive"))
    clock.t += 29
    assert e.tick() == []
    clock.t += 1
    (tr,) = e.tick()
    assert tr.state == "OFF" and tr.reason == "not_heard"
    e.observe(result("positive"))
    clock.t += 31
    d = e.observe(result("unknown"))
    assert d.transition and d.transition.reason == "not_heard"


def test_cooldown_suppresses_the_event_but_state_follows() -> None:
    e, clock = engine(off_after_negatives=1, cooldown_s=60)
    assert e.observe(result("positive", answer="a")).raise_alert
    e.observe(result("negative"))
    clock.t += 10
    d = e.observe(result("positive", answer="b"))
    assert d.transition and d.transition.state == "ON"
    assert not d.raise_alert and d.suppressed == "cooldown"
    e.observe(result("negative"))
    clock.t += 60
    assert e.observe(result("positive", answer="c")).raise_alert


def test_dedupe_same_answer_within_window() -> None:
    e, clock = engine(off_after_negatives=1, dedupe_window_s=300)
    assert e.observe(result("positive", answer="Yes, a dog barks.")).raise_alert
    e.observe(result("negative"))
    clock.t += 100
    d = e.observe(result("positive", answer="  yes, a DOG barks "))
    assert d.suppressed == "duplicate" and not d.raise_alert
    e.observe(result("negative"))
    clock.t += 1
    assert e.observe(result("positive", answer="Glass breaking")).raise_alert  # different answer
    e.observe(result("negative"))
    clock.t += 400
    assert e.observe(result("positive", answer="Glass breaking")).raise_alert  # window passed


def test_pairs_are_independent_and_overrides_apply() -> None:
    cfg = AlertsConfig(node_id="n", rules={"off_after_negatives": 5},
                       monitor_rules={"glass": {"off_after_negatives": 1}})
    e = RuleEngine(cfg)
    e.observe(result("positive", monitor="glass"))
    e.observe(result("positive", monitor="knock"))
    e.observe(result("positive", monitor="knock", stream="s2"))
    assert e.observe(result("negative", monitor="glass")).transition.state == "OFF"  # type: ignore[union-attr]
    assert e.observe(result("negative", monitor="knock")).transition is None
    assert e.states() == {("s1", "glass"): "OFF", ("s1", "knock"): "ON", ("s2", "knock"): "ON"}


def test_normalise_answer() -> None:
    assert normalise_answer("Yes.") == normalise_answer(" yes ") == "yes"


@settings(max_examples=200, deadline=None)
@given(
    verdicts=st.lists(st.sampled_from(["positive", "negative", "unknown"]), max_size=60),
    n=st.integers(1, 4),
)
def test_matches_reference_model(verdicts: list[str], n: int) -> None:
    """Step by step against a reference model: alerts exactly on OFF->ON, OFF after n negatives."""
    e, _ = engine(off_after_negatives=n)
    state, neg = "OFF", 0
    for v in verdicts:
        d = e.observe(result(v))
        prev = state
        expect_alert = False
        if v == "positive":
            expect_alert = state == "OFF"
            state, neg = "ON", 0
        elif v == "negative" and state == "ON":
            neg += 1
            if neg >= n:
                state, neg = "OFF", 0
        assert d.raise_alert == expect_alert
        assert e.state("s1", "knock") == state
        assert (d.transition is not None) == (prev != state)


def scored(score: float, threshold: float = 0.7, hysteresis: float = 0.2, verdict: str = "unknown"):
    """A scored result: the rules must read the score, whatever the text verdict says."""
    import dataclasses

    return dataclasses.replace(result(verdict, answer="yes"), score=score, threshold=threshold,
                               hysteresis=hysteresis)


def test_scored_results_turn_on_above_threshold_and_off_below_threshold_minus_hysteresis() -> None:
    e, _ = engine(off_after_negatives=2)
    assert e.observe(scored(0.69)).transition is None  # below threshold: stays OFF
    d = e.observe(scored(0.70))
    assert d.transition and d.transition.state == "ON" and d.raise_alert
    # inside the hysteresis band (0.5 <= s < 0.7): neither confirms nor clears
    for s in (0.6, 0.55, 0.5, 0.65):
        assert e.observe(scored(s)).transition is None
    assert e.state("s1", "knock") == "ON"
    assert e.observe(scored(0.49)).transition is None  # first below 0.5
    d = e.observe(scored(0.1))
    assert d.transition and d.transition.state == "OFF" and d.transition.reason == "negatives"


def test_the_score_wins_over_the_text_verdict() -> None:
    e, _ = engine(off_after_negatives=1)
    assert e.observe(scored(0.2, verdict="positive")).transition is None
    assert e.observe(scored(0.9, verdict="negative")).raise_alert


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), max_size=30), st.floats(0.05, 0.95), st.floats(0.0, 0.5),
       st.integers(1, 4))
def test_scored_rules_match_a_reference(scores: list[float], thr: float, hyst: float, n: int) -> None:
    e, _ = engine(off_after_negatives=n)
    state, below = "OFF", 0
    for s in scores:
        e.observe(scored(s, thr, hyst))
        if s >= thr:
            state, below = "ON", 0
        elif s < thr - hyst and state == "ON":
            below += 1
            if below >= n:
                state, below = "OFF", 0
        assert e.state("s1", "knock") == state


def _gate(verdict: str, reason: str, i: int = 0):
    from dataclasses import replace

    return replace(result(verdict, monitor="unusual", answer="", i=i),
                   model_id="level-gate", extra={"reason": reason})


def test_a_gate_monitors_clear_ends_the_event_and_the_next_one_raises() -> None:
    """A gate sends one "clear" when its condition stops holding; with off_after_negatives 3
    the state stayed ON for max_not_heard_s, so the demo's second knock raised nothing."""
    e, clock = engine(off_after_negatives=3, max_not_heard_s=300, dedupe_window_s=600)
    assert e.observe(_gate("positive", "trigger: novelty > 2.5")).raise_alert
    clock.t += 40
    d = e.observe(_gate("negative", "clear", i=4))
    assert d.transition and d.transition.state == "OFF" and d.transition.reason == "cleared"
    clock.t += 95
    d = e.observe(_gate("positive", "trigger: novelty > 2.5", i=13))
    # no answer text: not a "duplicate" of the first event
    assert d.transition and d.transition.state == "ON" and d.raise_alert and d.suppressed is None
    # a scheduled negative of a gate (condition not holding at a schedule) is an ordinary one
    assert e.observe(_gate("negative", "schedule", i=14)).transition is None
    # a model's "no" never clears at once, whatever its extra says
    e2, _ = engine(off_after_negatives=3)
    e2.observe(result("positive"))
    assert e2.observe(result("negative")).transition is None
