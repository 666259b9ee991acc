"""systemd notification protocol, spoken directly over ``$NOTIFY_SOCKET`` (no libsystemd).

* `Notifier` sends ``READY=1``, ``STATUS=...``, ``WATCHDOG=1``, ``STOPPING=1`` as
  datagrams to the socket systemd names in ``$NOTIFY_SOCKET`` (a filesystem path, or an
  abstract-namespace name written with a leading ``@``). Without ``$NOTIFY_SOCKET``
  (not started by systemd, ``Type=simple``) every call is a silent no-op.
* `Watchdog` pings ``WATCHDOG=1`` at half the interval systemd asks for
  (``$WATCHDOG_USEC``), but only while a caller-supplied *progress* predicate returns
  True; when the pipeline stalls, the pings stop and systemd restarts the unit.
* `ProgressGate` is a ready-made predicate: stages call ``beat(name)`` whenever they
  make progress, and the gate is true while every named stage beat recently.
* `ShutdownSignal` turns SIGTERM/SIGINT into an event for the main thread.

Typical use in the daemon::

    n = Notifier()
    gate = ProgressGate(["audio", "worker"], max_age_s=30)
    pipeline.start(); n.ready("running")
    Watchdog(n, gate).start()
    sig = ShutdownSignal().install()
    sig.wait()
    n.stopping(); pipeline.stop(timeout=10)   # flush + publish offline
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable

import structlog

log = structlog.get_logger(__name__)


class Notifier:
    def __init__(self, address: str | None = None) -> None:
        addr = os.environ.get("NOTIFY_SOCKET") if address is None else address
        self._addr: str | bytes | None = None
        if addr:
            if addr.startswith("@"):
                self._addr = "\0" + addr[1:]
            elif addr.startswith("/"):
                self._addr = addr
            else:
                log.warning("unsupported NOTIFY_SOCKET address, notifications disabled", address=addr)
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self._addr is not None

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=VALUE`` lines in one datagram; True if sent. Never raises."""
        if self._addr is None:
            return False
        msg = "\n".join(assignments).encode("utf-8")
        try:
            with self._lock, socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.connect(self._addr)
                s.sendall(msg)
            return True
        except OSError as e:
            log.warning("sd_notify failed", error=str(e))
            return False

    def ready(self, status: str | None = None) -> bool:
        return self.notify("READY=1", *( [f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def stopping(self, status: str | None = None) -> bool:
        return self.notify("STOPPING=1", *([f"STATUS={status}"] if status else []))


def watchdog_interval() -> float | None:
    """The watchdog timeout systemd asks for, in seconds, or None when not enabled for us."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec:
        return None
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None
    try:
        v = int(usec)
    except ValueError:
        return None
    return v / 1e6 if v > 0 else None


class ProgressGate:
    """True while every named stage called `beat` within the last ``max_age_s`` seconds."""

    def __init__(self, stages: Iterable[str], max_age_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._max_age = max_age_s
        now = clock()
        self._last = {s: now for s in stages}
        self._lock = threading.Lock()

    def beat(self, stage: str) -> None:
        with self._lock:
            self._last[stage] = self._clock()

    def stale(self) -> list[str]:
        now = self._clock()
        with self._lock:
            return [s for s, t in self._last.items() if now - t > self._max_age]

    def __call__(self) -> bool:
        return not self.stale()


class Watchdog:
    """Pings WATCHDOG=1 every ``interval/2`` seconds while ``progress()`` is true."""

    def __init__(self, notifier: Notifier, progress: Callable[[], bool], interval_s: float | None = None) -> None:
        self._n = notifier
        self._progress = progress
        self._interval = interval_s if interval_s is not None else watchdog_interval()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.pings = 0
        self.withheld = 0

    def start(self) -> Watchdog:
        if self._interval is None or not self._n.enabled:
            return self
        self._thread = threading.Thread(target=self._run, name="sd-watchdog", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        period = self._interval / 2  # type: ignore[operator]
        while not self._stop.wait(period):
            try:
                ok = bool(self._progress())
            except Exception:  # a broken predicate must stop the pings, not the thread
                log.exception("watchdog progress predicate failed")
                ok = False
            if ok:
                self._n.watchdog()
                self.pings += 1
            else:
                self.withheld += 1
                if self.withheld == 1 or self.withheld % 10 == 0:
                    log.warning("no progress: withholding watchdog ping", withheld=self.withheld)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


class ShutdownSignal:
    """SIGTERM / SIGINT -> an event. Install from the main thread."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signum: int | None = None

    def install(self, signals: Iterable[int] = (signal.SIGTERM, signal.SIGINT)) -> ShutdownSignal:
        for s in signals:
            signal.signal(s, self._handle)
        return self

    def _handle(self, signum: int, _frame: object) -> None:
        self.signum = signum
        self.event.set()

    def wait(self, timeout: float | None = None) -> bool:
        return self.event.wait(timeout)
