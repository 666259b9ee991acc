"""A silent stream is an availability state in Home Assistant (issue 9) and in /healthz
(issue 12 item 3): end to end through a real mosquitto, the MQTT audio source and the
alert pipeline's MQTT sink."""

from __future__ import annotations

import io
import json
import time

import numpy as np

from edge.config import load_settings
from edge.daemon import Daemon
from edge.log import clear_secrets, configure_logging
from streams.publisher import publish
from tests.alerts.helpers import Recorder, log_events
from tests.mqtt_broker import Mosquitto


def _blocks(seconds: float, rate: int = 16000, frame_s: float = 0.1):
    for _ in range(int(seconds / frame_s)):
        yield np.full((int(rate * frame_s), 1), 0.05, np.float32), rate


def _daemon(tmp_path, broker, silent_after: str, backoff_max_s: float) -> Daemon:
    """One MQTT audio stream `press` with a gate monitor, alerts on the same broker."""
    mqtt = {"host": broker.host, "port": broker.port, "topic_prefix": "fe-test",
            "keepalive_s": 2, "backoff_initial_s": 0.2, "backoff_max_s": backoff_max_s}
    s = load_settings(data={
        "data_dir": str(tmp_path / "data"),
        "streams": [{"id": "press", "source": "mqtt", "silent_after": silent_after}],
        "monitors": [{"name": "loud", "kind": "gate", "triggers": ["level_dbfs > -3"]}],
        "alerts": {"node_id": "n1", "mqtt": mqtt}})
    return Daemon(s, http=False, log_results=False)


def test_silent_stream_goes_unavailable_in_home_assistant_and_comes_back(tmp_path):
    buf = io.StringIO()
    configure_logging("INFO", fmt="json", stream=buf)
    broker = Mosquitto(tmp_path).start()
    rec = Recorder(broker, ["fe-test/#", "homeassistant/#"])
    d = _daemon(tmp_path, broker, "1.5s", backoff_max_s=1.0)
    d.start()
    try:
        src = d.sources[0]
        assert src.subscribed.wait(10)
        # discovery: the stream's entities follow its availability topic too
        level_cfg = "homeassistant/sensor/n1/press_level/config"
        assert rec.wait_for(lambda: rec.payloads(level_cfg), 10)
        cfg = json.loads(rec.payloads(level_cfg)[-1])
        assert {"topic": "fe-test/press/availability", "payload_available": "online",
                "payload_not_available": "offline"} in cfg["availability"]
        assert cfg["availability_mode"] == "all"
        publish(_blocks(1.0), "press", broker.host, broker.port, "fe-test", speed=0, qos=1)
        assert rec.wait_for(lambda: rec.payloads("fe-test/press/availability")[-1:] == ["online"], 10)
        # the publisher stops: silent after 1.5 s -> offline, and the Input sensor says why
        assert rec.wait_for(lambda: rec.payloads("fe-test/press/availability")[-1:] == ["offline"], 10)
        health = json.loads(rec.payloads("fe-test/press/health")[-1])
        assert health["state"] == "silent" and health["silent_after_s"] == 1.5
        assert health["last_frame_age_s"] >= 1.5
        h = d.health()
        assert h["status"] == "degraded" and h["streams"]["press"]["state"] == "silent"
        assert h["streams"]["press"]["source"]["state"] == "connected"
        # audio again: online, live
        publish(_blocks(0.3), "press", broker.host, broker.port, "fe-test", speed=0, qos=1,
                seq_start=10)
        assert rec.wait_for(lambda: rec.payloads("fe-test/press/availability")[-1:] == ["online"], 10)
        assert json.loads(rec.payloads("fe-test/press/health")[-1])["state"] == "live"
        # a Home Assistant that starts now finds the retained state
        late = Recorder(broker, ["fe-test/press/availability"], client_id="late")
        assert late.wait_for(lambda: late.payloads("fe-test/press/availability") == ["online"], 5)
        late.close()
    finally:
        d.stop(timeout=5)
        rec.close()
        broker.stop()
        clear_secrets()
    events = log_events(buf)
    lost = [e for e in events if e.get("event") == "stream input lost"]
    assert len(lost) == 1 and lost[0]["stream"] == "press" and lost[0]["state"] == "silent"
    assert lost[0]["level"] == "warning"
    back = [e for e in events if e.get("event") == "stream state" and e.get("state") == "live"]
    assert back and back[-1]["was"] == "silent"


def test_lost_brokers_show_at_once_in_healthz_and_clear_when_back(tmp_path, monkeypatch):
    """The broker goes away: the MQTT audio stream is `reconnecting` at once (its source knows,
    so waiting for its long `silent_after` would hide it), and /healthz is degraded naming the
    unreachable alert broker after the grace; when the broker is back, both clear."""
    import edge.health

    monkeypatch.setattr(edge.health, "ALERT_BROKER_GRACE_S", 1.0)
    broker = Mosquitto(tmp_path).start()
    d = _daemon(tmp_path, broker, "600s", backoff_max_s=0.5)
    d.start()

    def wait(cond, timeout=15.0):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            h = d.health()
            if cond(h):
                return h
            time.sleep(0.1)
        raise AssertionError(f"condition not met; last health: {h}")

    try:
        assert d.sources[0].subscribed.wait(10)
        publish(_blocks(0.5), "press", broker.host, broker.port, "fe-test", speed=0, qos=1)
        wait(lambda h: h["streams"]["press"]["state"] == "live" and h["status"] == "ok")
        broker.stop()
        h = wait(lambda h: h["streams"]["press"]["state"] == "reconnecting")
        assert h["streams"]["press"]["last_frame_age_s"] < 60  # long before silent_after (600 s)
        assert h["status"] == "degraded" and h["http_status"] == 200
        assert any(r.startswith("stream press is reconnecting") for r in h["reasons"])
        h = wait(lambda h: any("alert broker" in r for r in h["reasons"]))
        (r,) = [r for r in h["reasons"] if "alert broker" in r]
        assert f"{broker.host}:{broker.port} unreachable" in r
        broker.start()
        publish(_blocks(0.5), "press", broker.host, broker.port, "fe-test", speed=0, qos=1, seq_start=100)
        h = wait(lambda h: h["status"] == "ok", timeout=20)
        assert h["streams"]["press"]["state"] == "live" and not h["reasons"]
    finally:
        d.stop(timeout=5)
        broker.stop()
        clear_secrets()
