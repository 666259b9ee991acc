"""What the web page shows that lives only in the running daemon: recent monitor results.

`LiveResults` is a result sink (`edge.sinks.ResultSink`) the daemon adds next to the log and
the alert pipeline. It keeps the last results of every (stream, monitor) (answer, score,
verdict, latency), runs its own copy of the alert rule engine (`alerts.rules.RuleEngine`, the
same settings, as `edge.answering.TurnOnWatch` does) so the page shows the monitor's ON/OFF
state as the alert stage decides it, and numbers every result (``seq``) so the live feed
(`/api/events`) can send each once. Written by the worker thread, read by the HTTP thread;
`submit` never blocks on anything but a short lock.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from ..results import MonitorResult

if TYPE_CHECKING:
    from alerts.config import AlertsConfig

    from ..sinks import Audio

PER_MONITOR = 360  # results kept per (stream, monitor)
RECENT = 500  # results kept for the live feed


def compact(r: MonitorResult) -> dict[str, Any]:
    """A result as the API shows it (no token ids, no audio)."""
    return {
        "stream": r.stream, "monitor": r.monitor, "question": r.question, "answer": r.answer,
        "verdict": r.verdict, "severity": r.severity, "choice": r.choice, "score": r.score,
        "threshold": r.threshold, "hysteresis": r.hysteresis, "probs": r.probs,
        "coverage": r.coverage, "latency_s": round(r.latency_s, 3), "model_id": r.model_id,
        "start": r.start.isoformat(), "end": r.end.isoformat(), "t": r.end.timestamp(),
        "level_dbfs": r.level_dbfs, "novelty": r.novelty, "reason": r.extra.get("reason"),
    }


class LiveResults:
    def __init__(self, alerts_config: AlertsConfig) -> None:
        from alerts.rules import RuleEngine

        self._lock = threading.Lock()
        self._rules = RuleEngine(alerts_config)
        self._by_pair: dict[tuple[str, str], deque[dict[str, Any]]] = {}
        self._recent: deque[dict[str, Any]] = deque(maxlen=RECENT)
        self._states: dict[tuple[str, str], tuple[str, float]] = {}  # -> (ON/OFF, since)
        self.seq = 0

    # ------------------------------------------------------------ ResultSink
    def submit(self, r: MonitorResult, audio: Audio | None, sample_rate: int) -> None:
        d = compact(r)
        with self._lock:
            self.seq += 1
            d["seq"] = self.seq
            dec = self._rules.observe(r)
            if dec.transition is not None:
                self._states[(r.stream, r.monitor)] = (dec.transition.state, time.time())
            d["state"] = self._rules.state(r.stream, r.monitor)
            self._by_pair.setdefault((r.stream, r.monitor), deque(maxlen=PER_MONITOR)).append(d)
            self._recent.append(d)

    def publish_level(self, stream: str, dbfs: float) -> None:
        pass  # the page reads levels from the streams' heard clips

    # ------------------------------------------------------------ reads (HTTP thread)
    def tick(self) -> None:
        """Turn OFF what the alert rules turn OFF for not being heard (max_not_heard_s)."""
        with self._lock:
            for tr in self._rules.tick():
                self._states[(tr.stream, tr.monitor)] = (tr.state, time.time())

    def state(self, stream: str, monitor: str) -> dict[str, Any]:
        with self._lock:
            st, since = self._states.get((stream, monitor), ("OFF", None))
        return {"state": st, "since": since}

    def history(self, stream: str, monitor: str, limit: int = PER_MONITOR) -> list[dict[str, Any]]:
        with self._lock:
            q = self._by_pair.get((stream, monitor))
            return list(q)[-limit:] if q else []

    def since(self, seq: int) -> list[dict[str, Any]]:
        with self._lock:
            return [d for d in self._recent if d["seq"] > seq]
