"""What a monitor run produces: the hand-off from the monitor stage to the alert stage.

The data path is source -> ring -> encoder -> memory -> monitor -> **result** -> alert -> sink.
Everything downstream of the monitors (alert rules, MQTT, history, webhooks) consumes
`MonitorResult` and nothing else, so sinks can be built and tested without a model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Literal

import numpy as np

Verdict = Literal["positive", "negative", "unknown"]

#: ``extra["reason"]`` of a gate monitor's result when its condition stopped holding: a
#: measurement that the event is over (not one noisy "no" among several), so it clears at once
CLEAR_REASON = "clear"


@dataclass(frozen=True)
class MonitorResult:
    stream: str  # stream id, e.g. "compressor-1"
    monitor: str  # monitor name from config, e.g. "knocking"
    question: str  # the question as sent to the model (after templating)
    answer: str  # decoded answer text (empty for model-free monitors)
    token_ids: tuple[int, ...]  # generated ids, EOS excluded (empty for model-free monitors)
    verdict: Verdict  # parsed from the answer (yes_no / choice / regex) or from a level/novelty rule
    start: datetime  # UTC start of the audio span the answer is about
    end: datetime  # UTC end of that span
    latency_s: float  # wall time from the query being due to the answer
    model_id: str  # e.g. "af2-3b@sha256:..." or "level-gate" for model-free monitors
    severity: str = "info"  # "info" | "warning" | "critical", from the monitor's config
    choice: str | None = None  # the matched option for `choice` monitors
    level_dbfs: float | None = None  # loudness of the span, when known
    novelty: float | None = None  # novelty score of the span, when known
    extra: dict[str, Any] = field(default_factory=dict)
    # scored monitors (`answer: yes_no` / `choice`, see edge.queries): the probability of the
    # alerting option(s), the settings that turn it into a verdict, the probability of every
    # option (case variants summed) and how much of the answer's first token the options cover
    score: float | None = None
    threshold: float | None = None
    hysteresis: float | None = None
    probs: dict[str, float] | None = None
    coverage: float | None = None

    @property
    def positive(self) -> bool:
        return self.verdict == "positive"

    @property
    def clears(self) -> bool:
        """A negative that ends the event by itself (a gate monitor's condition cleared)."""
        return self.verdict == "negative" and self.extra.get("reason") == CLEAR_REASON

    @property
    def score_verdict(self) -> Verdict:
        """The verdict the alert rules use: from the score when there is one."""
        if self.score is None or self.threshold is None:
            return self.verdict
        return verdict_of_score(self.score, self.threshold, self.hysteresis or 0.0)

    def to_json_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["token_ids"] = list(self.token_ids)
        d["start"] = self.start.isoformat()
        d["end"] = self.end.isoformat()
        return d


@dataclass(frozen=True)
class AudioSpan:
    """The audio a result is about, read from the stream's ring only when someone needs it
    (the evidence clip of a raised alert). Queues hold this reference, never a copy of the
    samples; `read` returns None once the ring has overwritten the span."""

    start: int  # sample index on the stream's clock (inclusive)
    end: int  # (exclusive)
    sample_rate: int
    reader: Callable[[int, int], np.ndarray | None] = field(repr=False, compare=False)

    @property
    def seconds(self) -> float:
        return (self.end - self.start) / self.sample_rate

    def read(self) -> np.ndarray | None:
        return self.reader(self.start, self.end)


def verdict_of_score(score: float, threshold: float, hysteresis: float = 0.0) -> Verdict:
    """positive at or above `threshold`; negative below `threshold - hysteresis`; in between
    (the hysteresis band) unknown: it neither turns a monitor ON nor counts towards OFF."""
    if score >= threshold:
        return "positive"
    if score < threshold - hysteresis:
        return "negative"
    return "unknown"


def printable(text: str) -> str:
    """One line of terminal-safe text: newlines, tabs and other control or format characters
    (ESC sequences, NUL, bidi overrides) written as escapes (``\\n``, ``\\x1b``, ``\\u202e``)."""
    import unicodedata

    out = []
    for c in text:
        if c == "\\":
            out.append("\\\\")
        elif unicodedata.category(c)[0] == "C":
            esc = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(c)
            out.append(esc or (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}"))
        else:
            out.append(c)
    return "".join(out)
