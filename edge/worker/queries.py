"""Query scheduling: which monitors fall due on a clip, and in what order their queries run.

After each clip every monitor of its stream is asked whether it is due
(`edge.monitors.MonitorState.due`: ``every`` and/or ``triggers``). Gate monitors are
answered at once by the caller; the due AF2 monitors of one stream on one clip form one
`QueryGroup`, which shares a memory computation when it runs (`edge.worker.execute`).

Every due monitor gets a deadline: a scheduled query ``deadline`` (else ``max(30 s, every)``),
a triggered one ``trigger_deadline`` (else ``worker.trigger_deadline``, 30 s: a trigger is
about now, an answer an hour later is useless). The queue runs the group with the
**earliest deadline first**; a query not started by its deadline is skipped and counted
(``fe_queries_missed``), and groups none of whose monitors can still make it are pruned so
the queue stays bounded. In ``lossless`` mode (replay) deadlines do not apply and groups run
in the order they fell due. The groups of other streams waiting at the same time join the
first one (`QueryQueue.pop_cycle`, one group per stream): they run as shared batches.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import structlog

from ..gate import GateReading
from ..metrics import Metrics
from ..monitors import Due
from .encode import HeardClip

if TYPE_CHECKING:
    from ..config import MonitorConfig

log = structlog.get_logger(__name__)

DueMonitor = tuple["MonitorConfig", Due]


@dataclass
class QueryGroup:
    stream: str
    clip_index: int
    monitors: list[DueMonitor]
    due_wall: float  # worker clock (monotonic) when the group fell due
    reading: GateReading | None
    clip_span: tuple[int, int]
    deadlines: dict[str, float] = field(default_factory=dict)  # monitor -> worker-clock deadline
    # "ask now" (edge.worker.ask): its answer goes here, not to the sinks; None = expired/abandoned
    reply: Callable[..., bool] | None = None  # "ask now": True when the asker took it

    @property
    def deadline(self) -> float:
        return min(self.deadlines.values()) if self.deadlines else float("inf")


def due_monitors(h: HeardClip, with_model: bool) -> tuple[list[DueMonitor], list[DueMonitor]]:
    """(gate monitors, AF2 monitors) of ``h``'s stream that fall due on this clip."""
    s = h.stream
    t = s.t_rel(h.spec.end)
    values = h.reading.values()
    gate: list[DueMonitor] = []
    af2: list[DueMonitor] = []
    for ms in s.monitors:
        cfg = ms.cfg
        if cfg.kind == "af2" and not with_model:
            continue
        due = ms.due(t, values)
        if due is None:
            continue
        (gate if cfg.kind == "gate" else af2).append((cfg, due))
    return gate, af2


def deadline_s(cfg: MonitorConfig, due: Due, trigger_default: float = 30.0) -> float:
    """How long after falling due a query may still start."""
    if due.reason.startswith("trigger"):
        return cfg.trigger_deadline if cfg.trigger_deadline is not None else trigger_default
    return cfg.deadline if cfg.deadline is not None else max(30.0, cfg.every or cfg.cooldown)


def make_group(h: HeardClip, monitors: list[DueMonitor], now: float,
               trigger_default: float = 30.0) -> QueryGroup:
    deadlines = {cfg.name: now + deadline_s(cfg, due, trigger_default) for cfg, due in monitors}
    return QueryGroup(h.stream.id, h.spec.index, monitors, now, h.reading,
                      (h.spec.start, h.spec.end), deadlines)


class QueryQueue:
    """Waiting query groups. Callers hold the worker lock."""

    def __init__(self, metrics: Metrics, lossless: bool = False) -> None:
        self.metrics = metrics
        self.lossless = lossless
        self._groups: list[QueryGroup] = []

    def __len__(self) -> int:
        return len(self._groups)

    def groups(self) -> list[QueryGroup]:
        return list(self._groups)

    def add(self, group: QueryGroup, now: float) -> None:
        self._prune_expired(now)
        self._groups.append(group)

    def pop(self, now: float) -> QueryGroup | None:
        """The group with the earliest deadline (lossless: the oldest)."""
        self._prune_expired(now)
        if not self._groups:
            return None
        i = 0 if self.lossless else min(range(len(self._groups)),
                                        key=lambda j: self._groups[j].deadline)
        return self._groups.pop(i)

    def pop_cycle(self, now: float, max_groups: int) -> list[QueryGroup]:
        """The group `pop` gives, plus the earliest-deadline group of each other stream that
        waits now (at most ``max_groups`` in all): the queries due in the same cycle, which
        execution answers as shared batches. One group per stream: a stream's later clips
        wait for the next cycle, in deadline order."""
        first = self.pop(now)
        if first is None:
            return []
        out = [first]
        seen = {first.stream}
        order = (range(len(self._groups)) if self.lossless
                 else sorted(range(len(self._groups)), key=lambda j: self._groups[j].deadline))
        take: list[int] = []
        for j in order:
            if len(out) + len(take) >= max_groups:
                break
            g = self._groups[j]
            if g.stream not in seen:
                seen.add(g.stream)
                take.append(j)
        out += [self._groups[j] for j in take]
        for j in sorted(take, reverse=True):
            del self._groups[j]
        return out

    def still_in_time(self, q: QueryGroup, now: float) -> list[DueMonitor]:
        """The monitors of ``q`` that may still start; the others are counted as missed."""
        keep = []
        for cfg, due in q.monitors:
            if not self.lossless and now > q.deadlines[cfg.name]:
                self.metrics.queries_missed.labels(q.stream, cfg.name).inc()
                log.warning("query skipped: past its deadline", stream=q.stream, monitor=cfg.name)
                continue
            keep.append((cfg, due))
        return keep

    def abandon(self) -> list[QueryGroup]:
        """Empty the queue (shutdown), counting every monitor as missed; returns the groups."""
        out, self._groups = self._groups, []
        for g in out:
            if g.reply is not None:
                g.reply(None, "shutdown")
            for cfg, _ in g.monitors:
                self.metrics.queries_missed.labels(g.stream, cfg.name).inc()
        return out

    def _prune_expired(self, now: float) -> None:
        """Drop (and count) groups none of whose monitors can still meet its deadline, so the
        queue stays bounded while the worker is busy."""
        if self.lossless:
            return
        keep: list[QueryGroup] = []
        for g in self._groups:
            if all(now > g.deadlines[cfg.name] for cfg, _ in g.monitors):
                for cfg, _ in g.monitors:
                    self.metrics.queries_missed.labels(g.stream, cfg.name).inc()
                log.warning("queries skipped: past their deadline", stream=g.stream,
                            monitors=",".join(cfg.name for cfg, _ in g.monitors))
                if g.reply is not None:
                    g.reply(None)
            else:
                keep.append(g)
        self._groups = keep
