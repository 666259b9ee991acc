""""Ask now": a question from a person (the web page, `/api/ask`) about a stream's current memory.

It goes through the worker's query queue like every other query (`edge.worker.queries`): a
`QueryGroup` on the stream's newest remembered clip, with a deadline (``http.ask_deadline``),
run by the one worker thread in deadline order among the monitors' queries, so it never
blocks ingest nor jumps the queue ahead of a more urgent trigger. The answer comes back on a
`concurrent.futures.Future` (resolved with the `MonitorResult`, or with `AskError` when the
query missed its deadline or the worker shut down); it is not passed to the result sinks (a
question asked by hand raises no alert and is not published).

An answer that comes too late for its asker is counted in ``fe_queries_missed{monitor="ask-now"}``
(not in ``fe_queries``) and logged, like a monitor's late answer: one finished after the
shutdown drain deadline (it still reaches an asker who waits: counted by the worker's
`abandon`), and one finished after the asker stopped waiting (the web API gives up after
``http.ask_deadline`` + 120 s, answers 504 and cancels the future: the answer has nobody to go to).

The question is taken literally (no ``{field}`` templating). ``answer``: ``text`` (generated),
``yes_no`` or ``choice`` (scored: the probability of every option, like a scored monitor).
"""

from __future__ import annotations

from concurrent.futures import Future, InvalidStateError
from typing import TYPE_CHECKING

from ..monitors import Due
from .queries import QueryGroup

if TYPE_CHECKING:
    from ..config import MonitorConfig
    from ..results import MonitorResult
    from .state import StreamState

ASK_MONITOR = "ask-now"


class AskError(Exception):
    """The question was not answered (``reason``: no_model, no_audio, deadline, shutdown, busy)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def ask_config(question: str, answer: str, choices: list[str], window_s: float,
               deadline_s: float) -> MonitorConfig:
    """The one-off monitor a question runs as (raises ValueError for a bad answer spec)."""
    from ..config import MonitorConfig

    return MonitorConfig(
        name=ASK_MONITOR, kind="af2", question=question.replace("{", "{{").replace("}", "}}"),
        answer=answer,
        choices=list(choices), alert_on=list(choices[:1]) if answer == "choice" else [],
        every=3600.0, window=window_s, deadline=deadline_s, explain=False, cooldown=0.0)


def ask_group(s: StreamState, cfg: MonitorConfig, now: float, deadline_s: float,
              future: Future[MonitorResult]) -> QueryGroup:
    """A query group for ``cfg`` on the newest remembered clip of ``s``."""
    clips = s.memory.clips()
    if not any(c.valid for c in clips):
        raise AskError("no_audio", f"no audio of {s.id} in memory yet")
    last = clips[-1]

    def reply(result: MonitorResult | None, reason: str = "deadline") -> bool:
        """Hand the outcome to the asker; False when nobody takes it any more (answered
        already, or the asker stopped waiting: the HTTP request timed out and cancelled it)."""
        try:
            if result is not None:
                future.set_result(result)
            else:
                future.set_exception(AskError(reason, f"not answered: {reason}"))
        except InvalidStateError:  # done or cancelled, even between a check and the set
            return False
        return True

    return QueryGroup(s.id, last.index, [(cfg, Due("ask"))], now, last.reading,
                      (last.start, last.end), {cfg.name: now + deadline_s}, reply=reply)
