"""Progress of a TensorRT engine build, for the person waiting on it.

A build of the AF-CLAP engine takes minutes (tens of minutes on a Jetson) and TensorRT says
nothing between "building" and "engine written" unless asked. TensorRT 10 asks through
``IProgressMonitor``: the builder calls ``phase_start(name, parent, steps)``,
``step_complete(name, step)`` (return False to cancel the build) and ``phase_finish(name)``
on its own threads. `BuildProgress` turns those calls into log lines: each top-level phase when
it starts and finishes, and the innermost phase's step count at most every ``every_s``
seconds, e.g.::

    build progress: Building engine > Tactic selection 37/120 (31%), 42 s

`trt_monitor` wraps it in a subclass of ``trt.IProgressMonitor`` (imported lazily: TensorRT
is optional) and returns None on TensorRT versions that have none (8.6), after one line
saying that the build shows no progress.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any


class BuildProgress:
    """Phase/step bookkeeping and throttled log lines; no TensorRT needed (tested on its own)."""

    def __init__(self, log: Callable[[str], None], every_s: float = 5.0,
                 cancel: threading.Event | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self._log = log
        self._every_s = every_s
        self._cancel = cancel
        self._clock = clock
        self._t0 = clock()
        self._last = -float("inf")
        self._lock = threading.Lock()  # TensorRT may call from several builder threads
        self._phases: dict[str, tuple[str | None, int, int]] = {}  # name -> (parent, steps, done)

    def _path(self, name: str) -> str:
        parts = [name]
        parent = self._phases.get(name, (None, 0, 0))[0]
        while parent is not None and parent in self._phases:
            parts.append(parent)
            parent = self._phases[parent][0]
        return " > ".join(reversed(parts))

    def _emit(self, text: str) -> None:
        self._log(f"build progress: {text}, {self._clock() - self._t0:.0f} s")

    def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
        with self._lock:
            self._phases[phase_name] = (parent_phase, int(num_steps), 0)
            if parent_phase is None:
                self._emit(f"{phase_name} started ({num_steps} steps)")
                self._last = self._clock()

    def step_complete(self, phase_name: str, step: int) -> bool:
        """Record one step; False cancels the build (the cancel event is set: the daemon stops)."""
        with self._lock:
            parent, steps, _ = self._phases.get(phase_name, (None, 0, 0))
            done = int(step) + 1
            self._phases[phase_name] = (parent, steps, done)
            now = self._clock()
            if now - self._last >= self._every_s:
                pct = f" ({100 * done / steps:.0f}%)" if steps else ""
                self._emit(f"{self._path(phase_name)} {done}/{steps}{pct}")
                self._last = now
        return not (self._cancel is not None and self._cancel.is_set())

    def phase_finish(self, phase_name: str) -> None:
        with self._lock:
            parent = self._phases.get(phase_name, (None, 0, 0))[0]
            if parent is None:
                self._emit(f"{phase_name} finished")
            self._phases.pop(phase_name, None)


def trt_monitor(trt: Any, progress: BuildProgress, log: Callable[[str], None]) -> Any | None:
    """An ``IProgressMonitor`` of module ``trt`` forwarding to ``progress``; None (and one log
    line) when this TensorRT has no progress monitor interface."""
    base = getattr(trt, "IProgressMonitor", None)
    if base is None:
        log(f"TensorRT {getattr(trt, '__version__', '?')} has no IProgressMonitor: the build "
            "shows no progress until it ends (TensorRT 10 or later shows it)")
        return None

    class _Monitor(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            super().__init__()  # pybind11 trampolines need the base constructor called

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            progress.phase_start(phase_name, parent_phase, num_steps)

        def step_complete(self, phase_name: str, step: int) -> bool:
            return progress.step_complete(phase_name, step)

        def phase_finish(self, phase_name: str) -> None:
            progress.phase_finish(phase_name)

    return _Monitor()
