"""Monitors: when a question is due, how it is worded, and what its answer means.

A monitor is bound to streams. After every clip of a stream it is asked `MonitorState.due`:
it falls due on its schedule (``every``, on the stream's audio clock, so a replay gives the
same timeline as live) and/or when one of its triggers holds on that clip's gate reading
(``novelty > 3``, ``level_dbfs > -30 and novelty > 2``), at most once per ``cooldown`` for
trigger runs. Everything here is model-free and cheap.
"""

from __future__ import annotations

import operator
import re
import string
from dataclasses import dataclass
from typing import Any, Callable

TRIGGER_VARS = ("level_dbfs", "peak_dbfs", "rms", "novelty")
TEMPLATE_FIELDS = frozenset({"stream", "monitor", "window_s", "window_min", "labels"})
_OPS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le,
}
_COND = re.compile(r"^\s*([a-z_]+)\s*(>=|<=|>|<)\s*([-+]?(?:\d+(?:\.\d*)?|\.\d+))\s*$")


@dataclass(frozen=True)
class Comparison:
    var: str
    op: str
    value: float

    def __call__(self, values: dict[str, float | None]) -> bool:
        v = values.get(self.var)
        return v is not None and _OPS[self.op](float(v), self.value)


@dataclass(frozen=True)
class Condition:
    """A conjunction of comparisons (``a > 1 and b < 2``)."""

    text: str
    terms: tuple[Comparison, ...]

    def __call__(self, values: dict[str, float | None]) -> bool:
        return all(t(values) for t in self.terms)


def parse_condition(text: str) -> Condition:
    terms = []
    for part in re.split(r"\s+and\s+", text.strip()):
        m = _COND.match(part)
        if not m:
            raise ValueError(
                f"trigger {text!r}: expected '<var> <op> <number>' joined by 'and', "
                f"var one of {', '.join(TRIGGER_VARS)}, op one of > >= < <="
            )
        if m.group(1) not in TRIGGER_VARS:
            raise ValueError(f"trigger {text!r}: unknown variable {m.group(1)!r}")
        terms.append(Comparison(m.group(1), m.group(2), float(m.group(3))))
    return Condition(text.strip(), tuple(terms))


# ------------------------------------------------------------------ answers
@dataclass(frozen=True)
class Parsed:
    verdict: str  # "positive" | "negative" | "unknown"
    choice: str | None = None


def _norm(s: str) -> str:
    return re.sub(r"\s+", " ", s.strip().lower())


def parse_answer_spec(kind: str, choices: list[str], alert_on: list[str],
                      alert_if: str | None) -> None:
    """Validate the answer settings of a monitor (raises ValueError)."""
    if kind == "choice":
        if len(choices) < 2:
            raise ValueError("answer: choice needs at least two `choices`")
        low = [_norm(c) for c in choices]
        if len(set(low)) != len(low):
            raise ValueError("choices must be distinct")
        for a in alert_on:
            if _norm(a) not in low:
                raise ValueError(f"alert_on option {a!r} is not one of the choices")
    elif choices or alert_on:
        raise ValueError("`choices` / `alert_on` only apply to answer: choice")
    if alert_if is not None and kind != "text":
        raise ValueError("`alert_if` only applies to answer: text")


def parse_yes_no(answer: str, positive: str = "yes") -> Parsed:
    m = re.match(r"^[\s\"'(\[*_`]*(yes|no)\b", answer, re.IGNORECASE)
    if not m:
        return Parsed("unknown")
    word = m.group(1).lower()
    return Parsed("positive" if word == positive else "negative", choice=word)


def parse_choice(answer: str, choices: list[str], alert_on: list[str]) -> Parsed:
    a = _norm(answer)
    a_clean = re.sub(r"^[\s\"'(\[*_`]+", "", a)
    opts = sorted(choices, key=len, reverse=True)  # longest first: "no knocking" before "knocking"
    hit = next((c for c in opts if a_clean.startswith(_norm(c))), None)
    if hit is None:
        hit = next((c for c in opts if re.search(r"\b" + re.escape(_norm(c)) + r"\b", a)), None)
    if hit is None:
        return Parsed("unknown")
    pos = {_norm(x) for x in alert_on}
    return Parsed("positive" if _norm(hit) in pos else "negative", choice=hit)


def parse_text(answer: str, alert_if: str | None) -> Parsed:
    if alert_if is None:
        return Parsed("unknown")
    return Parsed("positive" if re.search(alert_if, answer, re.IGNORECASE) else "negative")


def parse_answer(cfg: Any, answer: str) -> Parsed:
    """``cfg`` is a `edge.config.MonitorConfig`."""
    if cfg.answer == "yes_no":
        return parse_yes_no(answer, cfg.positive)
    if cfg.answer == "choice":
        return parse_choice(answer, cfg.choices, cfg.alert_on)
    return parse_text(answer, cfg.alert_if)


class _Labels(dict):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


class _Ns:
    def __init__(self, d: dict[str, str]) -> None:
        self.__dict__.update(d)

    def __getattr__(self, name: str) -> str:  # unknown label: leave it visible
        return "{labels." + name + "}"


def render_question(template: str, stream: str, monitor: str, window_s: float,
                    labels: dict[str, str] | None = None) -> str:
    fields = _Labels(stream=stream, monitor=monitor, window_s=f"{window_s:g}",
                     window_min=f"{window_s / 60:g}", labels=_Ns(dict(labels or {})))
    return string.Formatter().vformat(template, (), fields)


# ------------------------------------------------------------------ scheduling
@dataclass(frozen=True)
class Due:
    reason: str  # "schedule" or "trigger: <condition>"
    positive: bool | None = None  # gate monitors: whether the condition holds


class MonitorState:
    """Due-time bookkeeping of one (stream, monitor) pair, on the stream's audio clock."""

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.conditions = [parse_condition(t) for t in cfg.triggers]
        self.next_due: float | None = cfg.every
        self.last_trigger: float | None = None
        self.active = False  # gate monitors: the condition held on the last clip

    def due(self, t: float, values: dict[str, float | None]) -> Due | None:
        """Called once per clip; ``t`` = seconds of audio since the stream's origin at the
        clip's end."""
        hit = next((c for c in self.conditions if c(values)), None)
        scheduled = False
        if self.next_due is not None and t + 1e-9 >= self.next_due:
            scheduled = True
            every = self.cfg.every
            while self.next_due <= t + 1e-9:  # missed periods collapse into one run
                self.next_due += every
        triggered = False
        if hit is not None and (
            self.last_trigger is None or t - self.last_trigger + 1e-9 >= self.cfg.cooldown
        ):
            triggered = True
            self.last_trigger = t
        if self.cfg.kind == "gate":
            was, self.active = self.active, hit is not None
            if triggered:
                return Due(f"trigger: {hit.text}", positive=True)
            if was and hit is None:  # tell the alert stage the condition cleared
                return Due("clear", positive=False)
            if scheduled:
                return Due("schedule", positive=hit is not None)
            return None
        if triggered:
            return Due(f"trigger: {hit.text}")
        if scheduled:
            return Due("schedule")
        return None
