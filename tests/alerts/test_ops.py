"""/metrics + /healthz over a real socket, and sd_notify against real datagram sockets."""

from __future__ import annotations

import json
import os
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from alerts.config import AlertsConfig
from edge.http import start_http_server
from edge.metrics import Metrics
from edge.sdnotify import Notifier, ProgressGate, Watchdog, watchdog_interval


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_metrics_and_healthz() -> None:
    m = Metrics()
    m.alerts_sent.labels("mqtt").inc(3)
    m.mqtt_connected.set(1)
    state = {"ok": True, "mqtt": {"connected": True}}
    ep = start_http_server(0, m, lambda: dict(state), host="127.0.0.1")
    try:
        base = f"http://127.0.0.1:{ep.port}"
        code, body = _get(base + "/metrics")
        assert code == 200
        assert 'fe_alerts_sent_total{sink="mqtt"} 3.0' in body and "fe_mqtt_connected 1.0" in body
        for name in ("fe_frames_in_total", "fe_frames_dropped_total", "fe_gap_samples_total", "fe_encode_seconds",
                     "fe_clips_behind", "fe_query_seconds", "fe_decode_tokens_per_second", "fe_alerts_queued",
                     "fe_alerts_failed_total"):
            assert f"# TYPE {name.removesuffix('_total')}" in body, name
        code, body = _get(base + "/healthz")
        assert code == 200 and json.loads(body)["mqtt"]["connected"] is True
        state["ok"] = False
        code, body = _get(base + "/healthz")
        assert code == 503 and json.loads(body)["ok"] is False
        assert _get(base + "/nope")[0] == 404
    finally:
        ep.stop()


def test_healthz_503_when_health_raises() -> None:
    def broken() -> dict:
        raise RuntimeError("worker gone")

    ep = start_http_server(0, Metrics(), broken, host="127.0.0.1")
    try:
        code, body = _get(f"http://127.0.0.1:{ep.port}/healthz")
        assert code == 503 and "worker gone" in body
    finally:
        ep.stop()


def test_pipeline_health_plugs_into_healthz(tmp_path: Path) -> None:
    from alerts.pipeline import AlertPipeline

    cfg = AlertsConfig.model_validate({"node_id": "n", "mqtt": {"enabled": False}})
    p = AlertPipeline(cfg, Metrics(), "b", tmp_path).start()
    ep = start_http_server(0, p.metrics, p.health, host="127.0.0.1")
    try:
        assert _get(f"http://127.0.0.1:{ep.port}/healthz")[0] == 200
        p.stop(2)
        code, body = _get(f"http://127.0.0.1:{ep.port}/healthz")
        assert code == 503 and json.loads(body)["worker_alive"] is False
    finally:
        ep.stop()


# ----------------------------------------------------------------------------- sd_notify
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
            except socket.timeout:
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
