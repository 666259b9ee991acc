"""Engine builds show progress (issue 12): TensorRT 10's IProgressMonitor calls become
throttled log lines and a way to cancel; an older TensorRT gets one line saying it has none.
TensorRT cannot be installed here, so the monitor's base class is the seam: a stand-in
module with an `IProgressMonitor` class, as TensorRT's bindings provide."""

from __future__ import annotations

import threading
import types

from trt_builders.progress import BuildProgress, trt_monitor


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _build(monitor, clock, steps=120, dt=0.5):
    """The call sequence TensorRT makes: nested phases, steps, finishes."""
    monitor.phase_start("Building engine", None, 3)
    monitor.phase_start("Tactic selection", "Building engine", steps)
    results = []
    for i in range(steps):
        clock.t += dt
        results.append(monitor.step_complete("Tactic selection", i))
    monitor.phase_finish("Tactic selection")
    monitor.step_complete("Building engine", 0)
    monitor.phase_finish("Building engine")
    return results


def test_phases_and_steps_become_throttled_lines():
    lines: list[str] = []
    clock = Clock()
    p = BuildProgress(lines.append, every_s=10.0, clock=clock)
    assert all(_build(p, clock))  # no cancel: the build continues
    assert lines[0] == "build progress: Building engine started (3 steps), 0 s"
    assert lines[-1] == "build progress: Building engine finished, 60 s"
    steps = [ln for ln in lines if "Tactic selection" in ln]
    # 60 s of steps, a line at most every 10 s, each naming the path, count and share
    assert 5 <= len(steps) <= 6
    assert steps[0] == "build progress: Building engine > Tactic selection 20/120 (17%), 10 s"
    assert "Tactic selection 120/120 (100%)" in steps[-1] or "100/120" in steps[-1]


def test_a_set_cancel_event_stops_the_build():
    cancel = threading.Event()
    clock = Clock()
    p = BuildProgress(lambda s: None, cancel=cancel, clock=clock)
    p.phase_start("Building engine", None, 1)
    assert p.step_complete("Building engine", 0) is True
    cancel.set()
    assert p.step_complete("Building engine", 1) is False


def test_monitor_subclasses_tensorrts_interface_and_forwards():
    class IProgressMonitor:  # what the bindings expose (a pybind11 trampoline class)
        def __init__(self) -> None:
            self.base_initialised = True

    trt = types.SimpleNamespace(IProgressMonitor=IProgressMonitor, __version__="10.3.0")
    lines: list[str] = []
    clock = Clock()
    m = trt_monitor(trt, BuildProgress(lines.append, every_s=0.0, clock=clock), lines.append)
    assert isinstance(m, IProgressMonitor) and m.base_initialised
    assert all(_build(m, clock, steps=3))
    assert lines == [
        "build progress: Building engine started (3 steps), 0 s",
        "build progress: Building engine > Tactic selection 1/3 (33%), 0 s",
        "build progress: Building engine > Tactic selection 2/3 (67%), 1 s",
        "build progress: Building engine > Tactic selection 3/3 (100%), 2 s",
        "build progress: Building engine 1/3 (33%), 2 s",
        "build progress: Building engine finished, 2 s",
    ]


def test_tensorrt_without_a_progress_monitor_says_so_once():
    lines: list[str] = []
    assert trt_monitor(types.SimpleNamespace(__version__="8.6.2"), BuildProgress(lines.append), lines.append) is None
    assert lines == [("TensorRT 8.6.2 has no IProgressMonitor: the build shows no progress until it ends "
                      "(TensorRT 10 or later shows it)")]
