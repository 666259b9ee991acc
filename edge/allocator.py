"""Giving memory that PyTorch freed back to the system: glibc's ``malloc_trim``, periodically.

PyTorch's CPU tensors of many sizes (encode batches, windows of 3-30 slots, decode caches) are
malloc'ed and freed by the worker thread, and glibc keeps much of what is freed in its arenas
(a heap shrinks only from its top; the dynamic mmap threshold climbs after the first large
frees, so later large tensors come from the arenas too). ``malloc_trim(0)`` hands every whole
free page of every arena back (madvise). Measured in the soak (docs/PERFORMANCE.md, "Memory
over a long soak"; 4 streams, the tiny model, 45 min of audio): RSS is flat either way once
the memories are full; glibc kept 81-109 MB free without trimming, and trimming every 10 s
kept RSS about 45 MB lower (median 537 against 581 MB) for 2.5 ms a call.

`Trimmer` is that call on its own thread, owned by the daemon (`edge.daemon.Daemon`, started
and stopped with it; ``allocator.trim_every``, 10 s, 0 = off). glibc is looked up lazily, when
the first trimmer starts; elsewhere (musl, macOS, Windows) there is nothing to call and the
trimmer is a no-op that says so once in a debug line.
"""

from __future__ import annotations

import ctypes
import threading
import time
from typing import Any, Protocol

import structlog

log = structlog.get_logger(__name__)


class Libc(Protocol):
    def malloc_trim(self, pad: int) -> int: ...


_UNSET: Any = object()
_libc: Any = _UNSET  # Libc | None once looked up


def glibc() -> Libc | None:
    """The process's C library if it is glibc (it has ``malloc_trim``), else None; looked up once."""
    global _libc
    if _libc is _UNSET:
        _libc = _find_glibc()
    return _libc


def _find_glibc() -> Libc | None:
    try:
        lib = ctypes.CDLL(None)  # the symbols the process already has: its own C library
        lib.gnu_get_libc_version  # noqa: B018 (glibc only; musl has no malloc_trim either)
        fn = lib.malloc_trim
    except (OSError, TypeError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
    return lib


def trim(libc: Libc | None = None) -> bool:
    """Return the free memory at the top and in the middle of every malloc arena to the
    system now. True if some was returned; False if none was, or this is not glibc."""
    lib = libc if libc is not None else glibc()
    return lib is not None and bool(lib.malloc_trim(0))


class Trimmer:
    """Calls `trim` every ``every_s`` seconds on its own thread until `stop`.

    ``observe(seconds)`` receives the duration of each call (the daemon's
    ``fe_malloc_trim_seconds`` histogram)."""

    def __init__(self, every_s: float, observe: Any = None, libc: Libc | None = None) -> None:
        if every_s <= 0:
            raise ValueError("every_s must be positive")
        self.every_s = every_s
        self._observe = observe
        self._libc = libc
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.calls = 0

    def start(self) -> Trimmer:
        """Start the thread, or do nothing (one debug line) where there is no glibc."""
        if self._libc is None:
            self._libc = glibc()
        if self._libc is None:
            log.debug("no glibc malloc_trim here: freed memory is left to the C library",
                      setting="allocator.trim_every")
            return self
        self._thread = threading.Thread(target=self._main, name="malloc-trim", daemon=True)
        self._thread.start()
        return self

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _main(self) -> None:
        while not self._stop.wait(self.every_s):
            self.trim_now()

    def trim_now(self) -> bool:
        t = time.perf_counter()
        released = trim(self._libc) if self._libc is not None else False
        self.calls += 1
        if self._observe is not None:
            self._observe(time.perf_counter() - t)
        return released

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout=2)
