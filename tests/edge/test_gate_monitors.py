import numpy as np
import pytest

from edge.config import MonitorConfig
from edge.demo import DEMO_EVENTS, generate_demo
from edge.gate import Gate, dbfs
from edge.monitors import (
    MonitorState, parse_answer, parse_choice, parse_condition, parse_yes_no, render_question,
)

SR = 16000


def test_level_of_a_sine():
    t = np.arange(SR * 10) / SR
    r = Gate().process((0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32))
    assert abs(r.level_dbfs - dbfs(0.5 / np.sqrt(2))) < 0.01
    assert abs(r.peak_dbfs - dbfs(0.5)) < 0.01
    assert r.novelty is None  # warming up
    assert Gate().process(np.zeros(SR * 10, np.float32)).level_dbfs == -120.0


def test_novelty_finds_the_demo_events():
    x = generate_demo()
    g = Gate(warmup_clips=3)
    scores = []
    for k in range(len(x) // (10 * SR)):
        scores.append(g.process(x[k * 10 * SR:(k + 1) * 10 * SR]).novelty)
    assert scores[:3] == [None] * 3
    event = [any(s < (k + 1) * 10 and e > k * 10 for s, e, _ in DEMO_EVENTS) for k in range(len(scores))]
    calm = [s for s, ev in zip(scores[3:], event[3:]) if not ev]
    hot = [s for s, ev in zip(scores[3:], event[3:]) if ev]
    assert max(calm) < 1.5 and min(hot) > 2.5


def test_conditions():
    c = parse_condition("level_dbfs > -30 and novelty >= 2")
    assert c({"level_dbfs": -20, "novelty": 2})
    assert not c({"level_dbfs": -20, "novelty": None})
    assert not c({"level_dbfs": -40, "novelty": 5})
    for bad in ("novelty >> 3", "foo > 1", "novelty > x", ""):
        with pytest.raises(ValueError):
            parse_condition(bad)


@pytest.mark.parametrize("answer,verdict", [
    ("Yes.", "positive"), ("yes, there is knocking", "positive"), ('"No"', "negative"),
    ("  NO", "negative"), ("Maybe", "unknown"), ("yesterday", "unknown"), ("", "unknown"),
])
def test_yes_no(answer, verdict):
    assert parse_yes_no(answer).verdict == verdict
    flipped = {"positive": "negative", "negative": "positive", "unknown": "unknown"}[verdict]
    assert parse_yes_no(answer, positive="no").verdict == flipped


def test_choice_and_text():
    ch = ["running normally", "idle", "failing"]
    assert parse_choice("Failing, it grinds", ch, ["failing"]).verdict == "positive"
    p = parse_choice("The machine is idle.", ch, ["failing"])
    assert p.verdict == "negative" and p.choice == "idle"
    assert parse_choice("no idea", ch, ["failing"]).verdict == "unknown"
    m = MonitorConfig(name="d", question="q", answer="text", alert_if="grind|squeal", every=60)
    assert parse_answer(m, "a loud GRINDING noise").verdict == "positive"
    assert parse_answer(m, "a hum").verdict == "negative"


def test_templates():
    q = render_question("Is {labels.machine} at {stream} ok over {window_s} s? {labels.nope}",
                        "c1", "k", 30.0, {"machine": "compressor 1"})
    assert q == "Is compressor 1 at c1 ok over 30 s? {labels.nope}"
    with pytest.raises(ValueError):
        MonitorConfig(name="x", question="{bogus}", every=10)


def test_schedule_on_the_audio_clock_and_trigger_cooldown():
    m = MonitorConfig(name="k", question="q", every="30s", triggers=["novelty > 3"], cooldown="20s")
    st = MonitorState(m)
    hot, cold = {"novelty": 5.0}, {"novelty": 0.0}
    out = {t: st.due(t, hot if t in (10, 20, 40, 50) else cold) for t in range(10, 130, 10)}
    assert out[10].reason.startswith("trigger")
    assert out[20] is None  # cooldown
    assert out[30].reason == "schedule"
    assert out[40].reason.startswith("trigger")
    assert out[50] is None and out[60].reason == "schedule"
    assert [t for t, d in out.items() if d] == [10, 30, 40, 60, 90, 120]


def test_gate_monitor_reports_on_and_clear():
    m = MonitorConfig(name="g", kind="gate", triggers=["level_dbfs > -20"], cooldown="30s")
    st = MonitorState(m)
    seq = [-30, -10, -10, -10, -30, -30, -10]
    got = [st.due(10 * (i + 1), {"level_dbfs": v}) for i, v in enumerate(seq)]
    kinds = [None if d is None else (d.reason.split(":")[0], d.positive) for d in got]
    assert kinds == [None, ("trigger", True), None, None, ("clear", False), None, ("trigger", True)]
