"""Webhook against a real local HTTP server that fails the first attempts."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from alerts.config import AlertsConfig
from alerts.pipeline import AlertPipeline
from alerts.webhook import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign, verify
from edge.metrics import Metrics
from tests.alerts.helpers import alternating, log_events, wait_until

SECRET = "whsec-Test-Key-42"


class Receiver:
    """A real HTTP server; answers the scripted status codes, then 200."""

    def __init__(self, script: list[int]) -> None:
        self.script = list(script)
        self.requests: list[dict] = []
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.requests.append({"t": time.monotonic(), "headers": dict(self.headers), "body": body,
                                       "path": self.path})
                code = outer.script.pop(0) if outer.script else 200
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver_factory() -> Iterator:
    made: list[Receiver] = []

    def make(script: list[int]) -> Receiver:
        r = Receiver(script)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


def _cfg(url: str, **kw: object) -> AlertsConfig:
    wh = {"enabled": True, "url": url, "secret": SECRET, "backoff_initial_s": 0.2, "backoff_max_s": 1.0,
          "timeout_s": 2.0}
    wh.update(kw)
    return AlertsConfig.model_validate({
        "node_id": "n", "mqtt": {"enabled": False}, "webhook": wh,
        "rules": {"off_after_negatives": 2, "cooldown_s": 0, "dedupe_window_s": 0},
    })


def test_retries_with_backoff_then_delivers_signed_json(
    receiver_factory, tmp_path: Path, log_capture
) -> None:
    rx = receiver_factory([503, 500, 429])
    m = Metrics()
    p = AlertPipeline(_cfg(rx.url), m, "boot-W", tmp_path).start()
    try:
        for r in alternating(2):
            p.submit(r)
        assert wait_until(lambda: len(rx.requests) >= 5, 20)
        assert wait_until(lambda: p.outbox.count("webhook") == 0, 5)  # type: ignore[union-attr]
    finally:
        p.stop(2)
    reqs = rx.requests
    assert len(reqs) == 5  # 3 failures + 2 deliveries, nothing more
    bodies = [json.loads(r["body"]) for r in reqs]
    # the same alert is retried until accepted, then the next one: in order
    assert [b["seq"] for b in bodies] == [1, 1, 1, 1, 2]
    assert len({bodies[i]["id"] for i in range(4)}) == 1
    # retries say so, with the original raised_at; the next alert's first attempt does not
    assert [b["replayed"] for b in bodies] == [False, True, True, True, False]
    assert len({bodies[i]["raised_at"] for i in range(4)}) == 1
    gaps = [reqs[i + 1]["t"] - reqs[i]["t"] for i in range(3)]
    assert gaps[0] >= 0.15 and gaps[2] > gaps[0]  # backoff grows (0.2, 0.4, 0.8 s +-20 %)
    for r in reqs:
        h = r["headers"]
        assert h["Content-Type"] == "application/json"
        assert h["X-Flamingo-Edge-Alert-Id"] == json.loads(r["body"])["id"]
        assert verify(SECRET, h[TIMESTAMP_HEADER], r["body"], h[SIGNATURE_HEADER])
        assert not verify("wrong", h[TIMESTAMP_HEADER], r["body"], h[SIGNATURE_HEADER])
        assert r["path"] == "/hook"
    assert m.registry.get_sample_value("fe_alerts_failed_total", {"sink": "webhook"}) == 3
    assert m.registry.get_sample_value("fe_alerts_sent_total", {"sink": "webhook"}) == 2
    warnings = [e for e in log_events(log_capture) if e["event"] == "webhook delivery failed; will retry"]
    assert [w["error"] for w in warnings] == ["HTTP 503", "HTTP 500", "HTTP 429"]
    assert SECRET not in log_capture.getvalue()


def test_signature_is_hmac_sha256_of_timestamp_and_body() -> None:
    import hashlib
    import hmac

    body = b'{"id":"x"}'
    want = "sha256=" + hmac.new(SECRET.encode(), b"1700000000." + body, hashlib.sha256).hexdigest()
    assert sign(SECRET, "1700000000", body) == want


def test_client_error_drops_the_alert_and_moves_on(receiver_factory, tmp_path: Path) -> None:
    rx = receiver_factory([400])
    m = Metrics()
    p = AlertPipeline(_cfg(rx.url), m, "b", tmp_path).start()
    try:
        for r in alternating(2):
            p.submit(r)
        assert wait_until(lambda: len(rx.requests) == 2, 10)
    finally:
        p.stop(2)
    assert [json.loads(r["body"])["seq"] for r in rx.requests] == [1, 2]
    assert m.registry.get_sample_value("fe_alerts_dropped_total", {"reason": "webhook_rejected"}) == 1


def test_unreachable_receiver_keeps_alerts_for_the_next_start(tmp_path: Path, receiver_factory) -> None:
    p = AlertPipeline(_cfg("http://127.0.0.1:9/hook"), Metrics(), "b1", tmp_path).start()  # port 9: discard
    try:
        for r in alternating(1):
            p.submit(r)
        assert wait_until(lambda: p.webhook is not None and p.webhook.attempts >= 2, 10)
        assert p.outbox.count("webhook") == 1  # type: ignore[union-attr]
    finally:
        p.stop(1)
    rx = receiver_factory([])
    p2 = AlertPipeline(_cfg(rx.url), Metrics(), "b2", tmp_path).start()
    try:
        assert wait_until(lambda: len(rx.requests) == 1, 10)
        assert json.loads(rx.requests[0]["body"])["boot_id"] == "b1"
        assert json.loads(rx.requests[0]["body"])["replayed"] is True  # raised by the previous run
    finally:
        p2.stop(2)


def test_redirect_is_not_taken_for_delivery(tmp_path: Path) -> None:
    """urllib follows a 301/302/303 answer to a POST with a body-less GET; a 200 to that GET
    must not count as delivered (the alert never reached anyone)."""
    posts: list[str] = []
    gets: list[str] = []
    redirect = {"on": True}

    class H(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            posts.append(self.path)
            self.send_response(301 if redirect["on"] else 200)
            if redirect["on"]:
                self.send_header("Location", "/moved")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self) -> None:
            gets.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *a: object) -> None:
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    m = Metrics()
    p = AlertPipeline(_cfg(f"http://127.0.0.1:{srv.server_address[1]}/hook"), m, "b", tmp_path).start()
    try:
        for r in alternating(1):
            p.submit(r)
        assert wait_until(lambda: len(posts) >= 2, 10)
        assert gets == []
        assert p.outbox.count("webhook") == 1  # type: ignore[union-attr]
        assert not m.registry.get_sample_value("fe_alerts_sent_total", {"sink": "webhook"})
        assert "301" in (p.webhook.last_error or "")  # type: ignore[union-attr]
        redirect["on"] = False  # the operator fixed the URL / the receiver
        assert wait_until(lambda: p.outbox.count("webhook") == 0, 10)  # type: ignore[union-attr]
    finally:
        p.stop(2)
        srv.shutdown()
        srv.server_close()
