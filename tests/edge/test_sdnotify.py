"""sd_notify against real datagram sockets: READY/STOPPING, watchdog pings only while progressing."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from edge.sdnotify import Notifier, ProgressGate, Watchdog, watchdog_interval


def _dgram(addr: str | bytes) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(addr)
    s.settimeout(5)
    return s


def test_notify_filesystem_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "notify.sock")
    srv = _dgram(path)
    n = Notifier(path)
    assert n.enabled
    assert n.ready("running")
    assert srv.recv(4096) == b"READY=1\nSTATUS=running"
    n.watchdog()
    assert srv.recv(4096) == b"WATCHDOG=1"
    n.status("flushing")
    assert srv.recv(4096) == b"STATUS=flushing"
    n.stopping()
    assert srv.recv(4096) == b"STOPPING=1"
    srv.close()


def test_notify_abstract_socket_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"fe-test-{os.getpid()}-{time.monotonic_ns()}"
    srv = _dgram("\0" + name)
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    assert Notifier().ready()
    assert srv.recv(4096) == b"READY=1"
    srv.close()


def test_notify_without_socket_is_a_noop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    n = Notifier()
    assert not n.enabled and n.ready() is False


def test_notify_to_vanished_socket_does_not_raise(tmp_path: Path) -> None:
    assert Notifier(str(tmp_path / "gone.sock")).ready() is False


def test_watchdog_interval_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "3000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert watchdog_interval() == 3.0
    monkeypatch.setenv("WATCHDOG_PID", "1")
    assert watchdog_interval() is None
    monkeypatch.delenv("WATCHDOG_USEC")
    assert watchdog_interval() is None


def test_watchdog_pings_only_while_progressing(tmp_path: Path) -> None:
    path = str(tmp_path / "wd.sock")
    srv = _dgram(path)
    srv.settimeout(0.05)
    progressing = {"v": True}
    wd = Watchdog(Notifier(path), lambda: progressing["v"], interval_s=0.1).start()

    def drain(seconds: float) -> int:
        end, n = time.monotonic() + seconds, 0
        while time.monotonic() < end:
            try:
                assert srv.recv(64) == b"WATCHDOG=1"
                n += 1
            except TimeoutError:
                pass
        return n

    try:
        assert drain(0.5) >= 2
        progressing["v"] = False
        drain(0.1)  # a ping already decided may still be in flight
        assert drain(0.5) == 0
        assert wd.withheld >= 2
        progressing["v"] = True
        assert drain(0.5) >= 2
    finally:
        wd.stop()
        srv.close()


def test_progress_gate() -> None:
    t = {"now": 0.0}
    g = ProgressGate(["audio", "worker"], max_age_s=10, clock=lambda: t["now"])
    assert g()
    t["now"] = 11
    assert not g() and sorted(g.stale()) == ["audio", "worker"]
    g.beat("audio")
    assert g.stale() == ["worker"]
    g.beat("worker")
    assert g()
