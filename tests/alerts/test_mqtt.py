"""The MQTT sink against a real mosquitto: topics, outages, auth, TLS, ACL."""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from alerts.pipeline import AlertPipeline
from edge.metrics import Metrics
from tests.alerts.helpers import (
    BROKER_PASSWORD, Recorder, alternating, fast_config, log_events, result, wait_until,
)
from tests.mqtt_broker import Mosquitto, Pki


def _sample(m: Metrics, name: str, **labels: str) -> float:
    return m.registry.get_sample_value(name, labels or None) or 0.0


def test_topics_payloads_and_clean_shutdown(
    broker: Mosquitto, recorder_factory: Callable[..., Recorder], tmp_path: Path, metrics: Metrics
) -> None:
    rec = recorder_factory(broker, ["fe-test/#"])
    p = AlertPipeline(fast_config(broker), metrics, "boot-A", tmp_path).start()
    try:
        audio = np.zeros(1600, np.float32)
        for r in alternating(2):
            assert p.submit(r, audio, 16000)
        p.publish_level("s1", -23.45)
        events = rec.wait_count("fe-test/events", 2)
        assert rec.wait_for(lambda: rec.payloads("fe-test/s1/level") == ["-23.4"] or
                            rec.payloads("fe-test/s1/level") == ["-23.5"])
        assert wait_until(lambda: len(rec.on("fe-test/s1/knock/state")) == 4)
    finally:
        assert p.stop(5) is True
    assert rec.wait_for(lambda: rec.payloads("fe-test/status")[-1:] == ["offline"])
    assert rec.payloads("fe-test/status") == ["online", "offline"]
    info = json.loads(rec.payloads("fe-test/info")[0])
    assert info["boot_id"] == "boot-A" and info["state"] == "online"
    assert rec.payloads("fe-test/s1/knock/state") == ["ON", "OFF", "ON", "OFF"]
    last_answer = json.loads(rec.payloads("fe-test/s1/knock/answer")[-1])
    assert last_answer["verdict"] == "negative" and last_answer["answer"] == "No."

    a = [json.loads(m.payload) for m in events]
    assert [x["seq"] for x in a] == [1, 2] and {x["boot_id"] for x in a} == {"boot-A"}
    assert len({x["id"] for x in a}) == 2
    first = a[0]
    assert set(first) == {
        "id", "schema_version", "boot_id", "seq", "stream", "monitor", "severity", "verdict", "answer",
        "question", "start", "end", "model_id", "latency_s", "raised_at", "choice", "level_dbfs",
        "score", "clip_flac", "clip_png", "extra", "event_type", "replayed",
    }
    assert first["replayed"] is False  # delivered at the first attempt
    assert first["schema_version"] == 1 and first["stream"] == "s1" and first["monitor"] == "knock"
    assert first["event_type"] == "knock" and first["severity"] == "warning" and first["verdict"] == "positive"
    assert first["answer"] == "yes #0" and first["model_id"] == "af2-3b@test" and first["latency_s"] == 0.5
    assert first["start"] == "2026-01-01T12:00:00Z" and first["end"] == "2026-01-01T12:00:10Z"
    assert (tmp_path / "clips" / first["clip_flac"]).exists() and (tmp_path / "clips" / first["clip_png"]).exists()
    # the per-stream copy for the Home Assistant event entity is byte-identical
    assert [m.payload for m in rec.on("fe-test/s1/event")] == [m.payload for m in events]
    assert all(m.qos == 1 for m in events)
    assert _sample(metrics, "fe_alerts_sent_total", sink="mqtt") == 2
    assert _sample(metrics, "fe_alerts_queued") == 0 and _sample(metrics, "fe_mqtt_connected") == 0
    # retained topics as a late subscriber sees them
    late = recorder_factory(broker, ["fe-test/status", "fe-test/s1/knock/state"], client_id="late")
    assert late.wait_for(lambda: len(late.messages) == 2, 5)
    assert all(m.retain for m in late.messages)
    assert sorted(m.payload for m in late.messages) == [b"OFF", b"offline"]


def test_broker_outage_longer_than_keepalive_delivers_once_in_order(
    mosquitto: Callable[..., Mosquitto], recorder_factory: Callable[..., Recorder], tmp_path: Path,
    metrics: Metrics, log_capture: io.StringIO,
) -> None:
    broker = mosquitto()  # persistence on: the recorder's session and queue survive the restart
    rec = recorder_factory(broker, ["fe-test/events"], client_id="outage-rec", persistent=True)
    p = AlertPipeline(fast_config(broker), metrics, "boot-O", tmp_path).start()
    try:
        for r in alternating(1):
            p.submit(r)
        rec.wait_count("fe-test/events", 1)
        assert wait_until(lambda: p.outbox.count("mqtt") == 0, 5)  # type: ignore[union-attr]  # both PUBACKs in
        broker.stop()
        assert wait_until(lambda: not p.mqtt.connected, 5)  # type: ignore[union-attr]
        # raised while the broker is away; it stays away for longer than the 2 s keep-alive
        for r in alternating(4)[3:]:
            p.submit(r)
        time.sleep(3.0)
        assert wait_until(lambda: p.outbox.count("mqtt") == 3, 5)  # type: ignore[union-attr]
        assert _sample(metrics, "fe_alerts_queued") == 3
        broker.start()
        rec.wait_count("fe-test/events", 4, timeout=20)
        time.sleep(1.0)  # would-be duplicates have time to arrive
    finally:
        p.stop(5)
    # a DUP copy is the broker re-delivering to this persistent subscriber what it had not
    # seen acknowledged when it was stopped (broker -> subscriber QoS 1), not a daemon re-send
    fresh = [json.loads(m.payload) for m in rec.on("fe-test/events") if not m.dup]
    assert [e["seq"] for e in fresh] == [1, 2, 3, 4]
    assert len({e["id"] for e in fresh}) == 4
    assert p.mqtt.connects == 2  # type: ignore[union-attr]
    failures = [e for e in log_events(log_capture) if e["event"] == "mqtt connection failed"]
    assert failures and all(e["reason"] == "refused" for e in failures)
    assert any(e["event"] == "mqtt connection lost" for e in log_events(log_capture))


def _assert_backoff(log_capture: io.StringIO, reason: str, n: int = 3, timeout: float = 15) -> list[dict]:
    def failures() -> list[dict]:
        return [e for e in log_events(log_capture) if e["event"] == "mqtt connection failed"]

    assert wait_until(lambda: len(failures()) >= n, timeout), log_capture.getvalue()[-3000:]
    f = failures()
    assert all(e["reason"] == reason and e["level"] == "error" for e in f), f
    # exponential: the requested delays grow (jitter is +-20 %, the factor is 2)
    assert f[2]["retry_in_s"] > f[0]["retry_in_s"]
    return f


def test_password_auth_and_wrong_password(
    mosquitto: Callable[..., Mosquitto], recorder_factory: Callable[..., Recorder], tmp_path: Path,
    log_capture: io.StringIO,
) -> None:
    broker = mosquitto(users={"edge": BROKER_PASSWORD, "rec": "rec-pass-123"})
    rec = recorder_factory(broker, ["fe-test/events"], username="rec", password="rec-pass-123")
    wrong = "Wrong-Pass-987"
    bad = AlertPipeline(fast_config(broker, username="edge", password=wrong), Metrics(), "b1", tmp_path / "bad")
    bad.start()
    try:
        f = _assert_backoff(log_capture, "auth")
        assert "Bad user name or password" in f[0]["error"] or "Not authorized" in f[0]["error"]
        assert bad.health()["mqtt"]["connected"] is False and "refused" in bad.health()["mqtt"]["last_error"]
    finally:
        bad.stop(1)
    m = Metrics()
    good = AlertPipeline(fast_config(broker, username="edge", password=BROKER_PASSWORD), m, "b2", tmp_path / "ok")
    good.start()
    try:
        for r in alternating(1):
            good.submit(r)
        assert len(rec.wait_count("fe-test/events", 1)) == 1
    finally:
        good.stop(5)
    assert _sample(m, "fe_mqtt_connect_failures_total", reason="auth") == 0
    out = log_capture.getvalue()
    assert wrong not in out and BROKER_PASSWORD not in out


def test_tls_with_client_certificate(
    mosquitto: Callable[..., Mosquitto], recorder_factory: Callable[..., Recorder], tmp_path: Path, pki: Pki,
    log_capture: io.StringIO,
) -> None:
    broker = mosquitto(tls=pki, require_client_cert=True)
    rec = recorder_factory(broker, ["fe-test/events"], tls=pki)
    tls = {"enabled": True, "ca_file": str(pki.ca_cert), "cert_file": str(pki.client_cert),
           "key_file": str(pki.client_key)}
    cfg = fast_config(broker, tls=tls)
    cfg.mqtt.host = "localhost"  # the name in the server certificate
    p = AlertPipeline(cfg, Metrics(), "b-tls", tmp_path).start()
    try:
        for r in alternating(1):
            p.submit(r)
        assert len(rec.wait_count("fe-test/events", 1)) == 1
    finally:
        assert p.stop(5)
    assert not [e for e in log_events(log_capture) if e["event"] == "mqtt connection failed"]


def test_tls_wrong_ca_is_a_clear_error_with_backoff(
    mosquitto: Callable[..., Mosquitto], tmp_path: Path, pki: Pki, other_pki: Pki, log_capture: io.StringIO,
) -> None:
    broker = mosquitto(tls=pki, users={"edge": BROKER_PASSWORD})
    cfg = fast_config(broker, tls={"enabled": True, "ca_file": str(other_pki.ca_cert)}, username="edge",
                      password=BROKER_PASSWORD)
    cfg.mqtt.host = "localhost"
    p = AlertPipeline(cfg, Metrics(), "b", tmp_path).start()
    try:
        f = _assert_backoff(log_capture, "tls_verify")
        assert "TLS certificate verification failed" in f[0]["error"]
        assert "certificate" in f[0]["error"].lower()
        for r in alternating(1):
            p.submit(r)
        assert wait_until(lambda: p.outbox.count("mqtt") == 1)  # type: ignore[union-attr]
    finally:
        p.stop(1)
    assert BROKER_PASSWORD not in log_capture.getvalue()


def test_acl_denial_is_detected_logged_and_retried(
    mosquitto: Callable[..., Mosquitto], recorder_factory: Callable[..., Recorder], tmp_path: Path,
    log_capture: io.StringIO,
) -> None:
    acl = "\n".join([
        "user edge",
        "topic readwrite fe-test/status", "topic readwrite fe-test/info",
        "topic readwrite fe-test/+/+/state", "topic readwrite fe-test/+/+/answer",
        "topic readwrite fe-test/+/level", "topic readwrite fe-test/+/event",
        "topic readwrite homeassistant/#",
        "user rec", "topic read #", "",
    ])  # note: fe-test/events is not granted to edge
    broker = mosquitto(users={"edge": BROKER_PASSWORD, "rec": "rec-pass-123"}, acl=acl)
    rec = recorder_factory(broker, ["fe-test/events", "fe-test/status"], username="rec", password="rec-pass-123")
    m = Metrics()
    p = AlertPipeline(fast_config(broker, username="edge", password=BROKER_PASSWORD), m, "b-acl", tmp_path).start()
    try:
        for r in alternating(1):
            p.submit(r)

        def refusals() -> list[dict]:
            return [e for e in log_events(log_capture) if e["event"] == "broker refused alert publish"]

        assert wait_until(lambda: len(refusals()) >= 2, 15), log_capture.getvalue()[-2000:]
        r0 = refusals()[0]
        assert r0["level"] == "error" and r0["reason"] == "Not authorized" and r0["topic"] == "fe-test/events"
        assert r0["retry_in_s"] > 0
        assert _sample(m, "fe_alerts_failed_total", sink="mqtt") >= 2
        assert p.outbox.count("mqtt") == 1  # type: ignore[union-attr]  # kept for when the ACL is fixed
        assert rec.on("fe-test/events") == []
        assert "online" in rec.payloads("fe-test/status")  # the rest of the session works
    finally:
        p.stop(1)
    assert BROKER_PASSWORD not in log_capture.getvalue()


def test_submit_never_blocks_and_counts_drops(tmp_path: Path) -> None:
    m = Metrics()
    cfg = fast_config(None)
    cfg.queue_size = 2
    p = AlertPipeline(cfg, m, "b", tmp_path).start()
    gate = threading.Event()
    orig = p._handle

    def slow(*a: object) -> None:  # hold the worker so the bounded queue fills up
        gate.wait(10)
        orig(*a)  # type: ignore[arg-type]

    p._handle = slow  # type: ignore[method-assign]
    try:
        t0 = time.monotonic()
        accepted = [p.submit(result("negative", i=i)) for i in range(10)]
        assert time.monotonic() - t0 < 1.0
        assert accepted.count(False) >= 7
        assert _sample(m, "fe_alert_results_dropped_total") == accepted.count(False)
    finally:
        gate.set()
        p.stop(2)
    assert p.submit(result()) is False  # after stop


def test_tls_missing_client_certificate_is_a_clear_error(
    mosquitto: Callable[..., Mosquitto], tmp_path: Path, pki: Pki, log_capture: io.StringIO,
) -> None:
    broker = mosquitto(tls=pki, require_client_cert=True)
    cfg = fast_config(broker, tls={"enabled": True, "ca_file": str(pki.ca_cert)})
    cfg.mqtt.host = "localhost"
    p = AlertPipeline(cfg, Metrics(), "b", tmp_path).start()
    try:
        def failures() -> list[dict]:
            return [e for e in log_events(log_capture) if e["event"] == "mqtt connection failed"]

        assert wait_until(lambda: len(failures()) >= 2, 15)
        assert {e["reason"] for e in failures()} == {"tls_client_cert"}
        assert p.mqtt is not None and not p.mqtt.connected
    finally:
        p.stop(1)


def test_online_carries_boot_id_as_mqtt5_user_property(broker: Mosquitto, tmp_path: Path) -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    got: list[mqtt.MQTTMessage] = []
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="v5-sub", protocol=mqtt.MQTTv5)
    subscribed = threading.Event()
    sub.on_message = lambda _c, _u, m: got.append(m)
    sub.on_subscribe = lambda *_a: subscribed.set()
    sub.connect(broker.host, broker.port)
    sub.loop_start()
    sub.subscribe("fe-test/status", qos=1)
    assert subscribed.wait(5)
    p = AlertPipeline(fast_config(broker), Metrics(), "boot-V5", tmp_path).start()
    try:
        assert wait_until(lambda: any(m.payload == b"online" for m in got), 10)
    finally:
        p.stop(5)
        sub.loop_stop()
        sub.disconnect()
    online = next(m for m in got if m.payload == b"online")
    assert ("boot_id", "boot-V5") in online.properties.UserProperty


def test_restart_clears_a_stale_retained_on_state(
    broker: Mosquitto, recorder_factory: Callable[..., Recorder], tmp_path: Path,
) -> None:
    """A state left ON by the previous run (crash, or stop while ON) must not stay ON in
    Home Assistant: the new run's rule engine starts OFF, so it says so on connect."""
    p = AlertPipeline(fast_config(broker), Metrics(), "boot-1", tmp_path).start()
    try:
        p.submit(result("positive"))
        rec = recorder_factory(broker, ["fe-test/s1/knock/state"])
        assert rec.wait_for(lambda: rec.payloads("fe-test/s1/knock/state")[-1:] == ["ON"], 10)
    finally:
        p.stop(5)
    p2 = AlertPipeline(fast_config(broker), Metrics(), "boot-2", tmp_path).start()
    try:
        p2.declare("s2", ["glass"])  # configured but never seen: announced OFF as well
        assert wait_until(lambda: p2.mqtt is not None and p2.mqtt.connected, 10)
        late = recorder_factory(broker, ["fe-test/s1/knock/state", "fe-test/s2/glass/state"], client_id="late")
        assert late.wait_for(lambda: late.payloads("fe-test/s1/knock/state")[-1:] == ["OFF"]
                             and late.payloads("fe-test/s2/glass/state")[-1:] == ["OFF"], 5), late.messages
        # a positive after the restart still turns it ON, and ON is the last word
        p2.submit(result("positive"))
        assert late.wait_for(lambda: late.payloads("fe-test/s1/knock/state")[-1:] == ["ON"], 5)
    finally:
        p2.stop(5)


def test_a_failing_history_does_not_lose_alerts(
    broker: Mosquitto, recorder_factory: Callable[..., Recorder], tmp_path: Path, log_capture: io.StringIO,
) -> None:
    """The history is a local convenience; a write error there (disk, corruption, a lock)
    must not keep an alert from the outbox and the sinks."""
    import sqlite3

    rec = recorder_factory(broker, ["fe-test/events"])
    p = AlertPipeline(fast_config(broker), Metrics(), "boot-H", tmp_path).start()

    def broken(*_a: object, **_k: object) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    assert p.history is not None
    p.history.record_result = broken  # type: ignore[method-assign]
    p.history.record_alert = broken  # type: ignore[method-assign]
    try:
        for r in alternating(2):
            p.submit(r)
        assert len(rec.wait_count("fe-test/events", 2, timeout=10)) == 2
    finally:
        p.stop(5)
    assert [e["seq"] for e in rec.events()] == [1, 2]
    assert any(e["event"] == "history write failed" for e in log_events(log_capture))
