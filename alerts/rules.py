"""Per-(stream, monitor) ON/OFF state with hysteresis, cooldown and de-duplication.

`RuleEngine.observe(result)` is called once per `MonitorResult` and returns a
`Decision`: whether the binary state changed, and whether an alert event should be
raised. `RuleEngine.tick()` must be called periodically (the pipeline does it about
once a second) so that a state goes OFF after ``max_not_heard_s`` even when the
monitor stops producing results.

Semantics (see `alerts.config.RuleConfig`):

* OFF -> ON on the first ``positive`` result.
* ON -> OFF after ``off_after_negatives`` consecutive ``negative`` results, or when
  ``max_not_heard_s`` seconds passed since the last positive one. ``unknown`` verdicts
  neither confirm nor clear a state. A gate monitor's *clear* (its condition stopped
  holding; `MonitorResult.clears`) is a measurement, not a noisy answer: it turns the state
  OFF at once (a gate sends one clear per event, so waiting for three never ended it).
* Scored monitors (results with a ``score`` and a ``threshold``) are judged on the score,
  not on the text: positive at or above the threshold, negative below
  ``threshold - hysteresis``, unknown in between (`edge.results.verdict_of_score`). So ON
  above the threshold, OFF after ``off_after_negatives`` scores below threshold - hysteresis.
* An alert is raised only on OFF -> ON, and suppressed (the state still turns ON) when
  the previous alert of the pair is younger than ``cooldown_s``, or had the same
  normalised, non-empty answer and is younger than ``dedupe_window_s`` (model-free
  monitors have no answer: two events of theirs are never duplicates of each other).

The engine is not thread-safe; the pipeline's worker thread owns it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from alerts.config import AlertsConfig
from edge.results import MonitorResult

State = Literal["ON", "OFF"]


def normalise_answer(text: str) -> str:
    """Lower-case, collapse whitespace, strip surrounding punctuation: 'Yes.' == 'yes'."""
    return re.sub(r"\s+", " ", text.lower()).strip(" \t\n.!?,;:\"'")


@dataclass(frozen=True)
class Transition:
    stream: str
    monitor: str
    state: State
    reason: str  # "positive" | "negatives" | "cleared" | "not_heard"
    at: float  # clock() time


@dataclass(frozen=True)
class Decision:
    transition: Transition | None = None
    raise_alert: bool = False
    suppressed: str | None = None  # "cooldown" | "duplicate" when an ON did not raise


@dataclass
class _PairState:
    state: State = "OFF"
    negatives: int = 0
    last_positive: float = 0.0
    last_alert_at: float | None = None
    last_alert_answer: str | None = None


class RuleEngine:
    def __init__(self, config: AlertsConfig, clock: Callable[[], float] = time.time) -> None:
        self._config = config
        self._clock = clock
        self._pairs: dict[tuple[str, str], _PairState] = {}

    def state(self, stream: str, monitor: str) -> State:
        p = self._pairs.get((stream, monitor))
        return p.state if p else "OFF"

    def states(self) -> dict[tuple[str, str], State]:
        return {k: v.state for k, v in self._pairs.items()}

    def observe(self, result: MonitorResult) -> Decision:
        key = (result.stream, result.monitor)
        rule = self._config.rule_for(result.monitor)
        now = self._clock()
        p = self._pairs.setdefault(key, _PairState())
        verdict = result.score_verdict
        if verdict == "positive":
            p.negatives = 0
            p.last_positive = now
            if p.state == "ON":
                return Decision()
            p.state = "ON"
            tr = Transition(result.stream, result.monitor, "ON", "positive", now)
            answer = normalise_answer(result.answer)
            if p.last_alert_at is not None:
                age = now - p.last_alert_at
                if age < rule.cooldown_s:
                    return Decision(tr, False, "cooldown")
                if answer and answer == p.last_alert_answer and age < rule.dedupe_window_s:
                    return Decision(tr, False, "duplicate")
            p.last_alert_at = now
            p.last_alert_answer = answer
            return Decision(tr, True)
        if p.state == "ON":
            if verdict == "negative" and result.clears:
                return Decision(self._off(key, p, "cleared", now))
            if verdict == "negative":
                p.negatives += 1
                if p.negatives >= rule.off_after_negatives:
                    return Decision(self._off(key, p, "negatives", now))
            if now - p.last_positive >= rule.max_not_heard_s:
                return Decision(self._off(key, p, "not_heard", now))
        return Decision()

    def tick(self) -> list[Transition]:
        """Turn OFF every ON state not confirmed for ``max_not_heard_s``."""
        now = self._clock()
        out = []
        for key, p in self._pairs.items():
            if p.state == "ON" and now - p.last_positive >= self._config.rule_for(key[1]).max_not_heard_s:
                out.append(self._off(key, p, "not_heard", now))
        return out

    @staticmethod
    def _off(key: tuple[str, str], p: _PairState, reason: str, now: float) -> Transition:
        p.state = "OFF"
        p.negatives = 0
        return Transition(key[0], key[1], "OFF", reason, now)
