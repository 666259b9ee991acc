"""Progress of long model calls, for a watchdog.

One model call can take minutes (a long generation, a 5-minute memory on a slow CPU), longer
than systemd's ``WatchdogSec``. The model's loops call `tick` once per unit of work (a
decoded token, a scored question, an encoded clip, an audio-transformer layer); a caller that
wants to see them turning installs a hook for the calls it makes from its own thread::

    with reporting(heartbeat):       # the inference worker: its watchdog beat
        model.ask_batch(...)          # heartbeat() after every token

The hook is a context variable, so it belongs to the thread (and context) that set it:
calls from other threads (a benchmark, `flamingo-edge ask`) do not see it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_hook: ContextVar[Callable[[], None] | None] = ContextVar("model_progress", default=None)


@contextmanager
def reporting(hook: Callable[[], None] | None) -> Iterator[None]:
    """Call ``hook`` on every `tick` made by this thread inside the block."""
    token = _hook.set(hook)
    try:
        yield
    finally:
        _hook.reset(token)


def tick() -> None:
    """One unit of a model call's work is done (cheap when nobody listens)."""
    hook = _hook.get()
    if hook is not None:
        hook()
