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
from typing import Generic, Protocol, TypeVar
from collections.abc import Callable

from .results import Verdict

from .results import CLEAR_REASON

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
    verdict: Verdict
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


# Negation: a mention of an option does not count when a negator precedes it in the same
# clause ("there is no knocking", "not failing, just idle") or a negated verb follows it
# ("knocking is not present"). Clauses end at punctuation and at contrast words.
_NEGATORS = re.compile(
    r"(?<![\w'])(?:no|not|never|without|nothing|none|neither|nor|absence|absent|lack|lacks|"
    r"lacking|free of|cannot|\w+n't|isnt|arent|wasnt|werent|doesnt|dont|didnt|cant|wont|"
    r"hasnt|havent|hadnt|couldnt|wouldnt|shouldnt)(?![\w'])"
)
_CLAUSE_END = re.compile(r"[.;:!?,()\[\]\n]|(?<!\w)(?:but|just|only|rather|instead|though|although|"
                         r"however|whereas|while|yet)(?!\w)")
_POST_NEG = re.compile(
    r"^\s*(?:sounds?|noises?)?\s*(?:(?:is|are|was|were|does|do|did|has|have|can|could)"
    r"(?:\s+not|n't)|isnt|arent|wasnt|werent|doesnt|dont|didnt|cannot)(?!\w)"
)
_LEAD = r"^[\s\"'(\[*_`>#-]*"


def _clean(s: str) -> str:
    """Lower case, typographic apostrophes straightened, whitespace collapsed."""
    s = s.replace("\u2019", "'").replace("\u2018", "'")
    return re.sub(r"\s+", " ", s.strip().lower())


def _option_pattern(option: str) -> re.Pattern[str]:
    """Whole words only ("cart" is not in "cartoon", "yes" not in "yesterday"); any run of
    spaces between an option's words."""
    words = [re.escape(w) for w in _clean(option).split(" ")]
    return re.compile(r"(?<![\w'])" + r"\s+".join(words) + r"(?![\w]|'\w)")


def negated(text: str, start: int, end: int) -> bool:
    """Whether the mention text[start:end] is negated within its clause."""
    before = text[:start]
    cut = 0
    for m in _CLAUSE_END.finditer(before):
        cut = m.end()
    if _NEGATORS.search(before[cut:]):
        return True
    after = text[end:]
    stop = _CLAUSE_END.search(after)
    return bool(_POST_NEG.match(after[: stop.start()] if stop else after))


def mentions(answer: str, options: list[str]) -> list[tuple[int, int, str, bool]]:
    """Every whole-word mention of every option: (start, end, option, negated), in text order;
    of overlapping mentions the longest wins ("no knocking" over "knocking")."""
    text = _clean(answer)
    found = []
    for opt in options:
        for m in _option_pattern(opt).finditer(text):
            found.append((m.start(), m.end(), opt))
    found.sort(key=lambda f: (f[0], -(f[1] - f[0])))
    out: list[tuple[int, int, str, bool]] = []
    last_end = -1
    for a, b, opt in found:
        if a < last_end:  # inside a longer mention found first
            continue
        out.append((a, b, opt, negated(text, a, b)))
        last_end = b
    return out


def parse_yes_no(answer: str, positive: str = "yes") -> Parsed:
    """The answer's leading "yes" or "no" (as a whole word; quotes/markdown before it allowed).
    Anything else is unknown: a yes/no word later in a sentence is too often part of something
    else ("there is no doubt: ...")."""
    m = re.match(_LEAD + r"(yes|no)(?!\w|'\w)", _clean(answer))
    if not m:
        return Parsed("unknown")
    word = m.group(1)
    return Parsed("positive" if word == positive else "negative", choice=word)


def parse_choice(answer: str, choices: list[str], alert_on: list[str]) -> Parsed:
    """The first mention of a choice that is not negated wins. If every mention is negated
    and one of them is an `alert_on` option ("there is no knocking"), the answer is negative
    without a choice; otherwise unknown."""
    ms = mentions(answer, choices)
    pos = {_norm(x) for x in alert_on}
    hit = next((opt for _, _, opt, neg in ms if not neg), None)
    if hit is None:
        if any(neg and _norm(opt) in pos for _, _, opt, neg in ms):
            return Parsed("negative")
        return Parsed("unknown")
    return Parsed("positive" if _norm(hit) in pos else "negative", choice=hit)


def parse_text(answer: str, alert_if: str | None) -> Parsed:
    """Positive if `alert_if` matches somewhere it is not negated ("no grinding" does not
    count for ``grind``)."""
    if alert_if is None:
        return Parsed("unknown")
    text = _clean(answer)
    for m in re.finditer(alert_if, text, re.IGNORECASE):
        end = m.end()
        while end < len(text) and text[end].isalnum():  # "grind" in "grinding ...": whole word
            end += 1
        if m.end() > m.start() and not negated(text, m.start(), end):
            return Parsed("positive")
    return Parsed("negative")


class MonitorSpec(Protocol):
    """What answer parsing and due-time bookkeeping read of a monitor's settings: an
    `edge.config.MonitorConfig` (the settings layer above, which validates against this module)."""

    @property
    def kind(self) -> str: ...  # "af2" or "gate"
    @property
    def answer(self) -> str: ...  # "yes_no", "choice" or "text"
    @property
    def positive(self) -> str: ...
    @property
    def choices(self) -> list[str]: ...
    @property
    def alert_on(self) -> list[str]: ...
    @property
    def alert_if(self) -> str | None: ...
    @property
    def every(self) -> float | None: ...  # seconds
    @property
    def cooldown(self) -> float: ...
    @property
    def triggers(self) -> list[str]: ...


def parse_answer(cfg: MonitorSpec, answer: str) -> Parsed:
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


M = TypeVar("M", bound=MonitorSpec)


class MonitorState(Generic[M]):
    """Due-time bookkeeping of one (stream, monitor) pair, on the stream's audio clock;
    ``cfg`` is the monitor's settings as given (an `edge.config.MonitorConfig`)."""

    def __init__(self, cfg: M) -> None:
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
            assert every is not None  # next_due is only ever set from `every`
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
            if triggered and hit is not None:
                return Due(f"trigger: {hit.text}", positive=True)
            if was and hit is None:  # tell the alert stage the condition cleared
                return Due(CLEAR_REASON, positive=False)
            if scheduled:
                return Due("schedule", positive=hit is not None)
            return None
        if triggered and hit is not None:
            return Due(f"trigger: {hit.text}")
        if scheduled:
            return Due("schedule")
        return None
