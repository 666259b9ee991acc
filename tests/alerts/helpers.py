"""Helpers shared by the alert tests (a recording MQTT subscriber, results, configs)."""


from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from alerts.config import AlertsConfig
from edge.results import MonitorResult
from tests.mqtt_broker import Mosquitto, Pki

BROKER_PASSWORD = "s3cr3t-Broker-PW"


def log_events(buf: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buf.getvalue().splitlines() if line.strip()]


def fast_config(broker: Mosquitto | None = None, **mqtt_kw: Any) -> AlertsConfig:
    """An AlertsConfig with test-friendly timings (short keep-alive and backoff)."""
    mqtt_cfg: dict[str, Any] = {
        "keepalive_s": 2, "backoff_initial_s": 0.2, "backoff_max_s": 1.0, "connect_timeout_s": 2.0,
        "level_min_interval_s": 0.0, "topic_prefix": "fe-test",
    }
    if broker is not None:
        mqtt_cfg.update(host=broker.host, port=broker.port)
    else:
        mqtt_cfg["enabled"] = False
    mqtt_cfg.update(mqtt_kw)
    return AlertsConfig.model_validate({
        "node_id": "testnode",
        "mqtt": mqtt_cfg,
        "rules": {"off_after_negatives": 2, "max_not_heard_s": 60, "cooldown_s": 0, "dedupe_window_s": 0},
    })


T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=timezone.utc)


def result(
    verdict: str = "positive", *, stream: str = "s1", monitor: str = "knock", answer: str | None = None,
    i: int = 0, severity: str = "warning",
) -> MonitorResult:
    start = T0 + timedelta(seconds=10 * i)
    return MonitorResult(
        stream=stream, monitor=monitor, question="Is there knocking?",
        answer=answer if answer is not None else ("Yes, knocking." if verdict == "positive" else "No."),
        token_ids=(1, 2, 3), verdict=verdict,  # type: ignore[arg-type]
        start=start, end=start + timedelta(seconds=10), latency_s=0.5, model_id="af2-3b@test",
        severity=severity, level_dbfs=-20.0,
    )


def alternating(n: int, **kw: Any) -> list[MonitorResult]:
    """Results that raise ``n`` alerts: (positive, negative, negative) x n with off_after_negatives=2."""
    out = []
    for k in range(n):
        out += [result("positive", i=3 * k, answer=f"yes #{k}", **kw),
                result("negative", i=3 * k + 1, **kw), result("negative", i=3 * k + 2, **kw)]
    return out


class Recorder:
    """A real MQTT subscriber that records every message it receives.

    ``persistent=True`` uses a fixed client id and a non-clean session (QoS 1), so with
    a persistence-enabled broker it also receives what was published while it or the
    broker was away."""

    def __init__(self, broker: Mosquitto, topics: list[str], *, client_id: str = "recorder",
                 persistent: bool = False, username: str | None = None, password: str | None = None,
                 tls: Pki | None = None) -> None:
        self.broker = broker
        self.messages: list[mqtt.MQTTMessage] = []
        self._cv = threading.Condition()
        self.connected = threading.Event()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311,
                             clean_session=not persistent)
        if username:
            self.c.username_pw_set(username, password)
        if tls is not None:
            self.c.tls_set(ca_certs=str(tls.ca_cert), certfile=str(tls.client_cert), keyfile=str(tls.client_key))
        self._topics = topics

        def on_connect(c: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
            if not rc.is_failure:
                c.subscribe([(t, 1) for t in topics])

        def on_subscribe(*_a: Any) -> None:
            self.connected.set()

        def on_disconnect(*_a: Any) -> None:
            self.connected.clear()

        def on_message(_c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
            with self._cv:
                self.messages.append(msg)
                self._cv.notify_all()

        self.c.on_connect, self.c.on_subscribe = on_connect, on_subscribe
        self.c.on_message, self.c.on_disconnect = on_message, on_disconnect
        self.c.reconnect_delay_set(0.1, 0.5)
        self.c.connect(broker.host, broker.port, 5)
        self.c.loop_start()
        assert self.connected.wait(10), "recorder could not subscribe"

    def on(self, topic: str) -> list[mqtt.MQTTMessage]:
        with self._cv:
            return [m for m in self.messages if mqtt.topic_matches_sub(topic, m.topic)]

    def payloads(self, topic: str) -> list[str]:
        return [m.payload.decode() for m in self.on(topic)]

    def events(self, topic: str = "fe-test/events") -> list[dict[str, Any]]:
        return [json.loads(p) for p in self.payloads(topic)]

    def wait_for(self, pred: Callable[[], bool], timeout: float = 15.0) -> bool:
        end = time.monotonic() + timeout
        with self._cv:
            while not pred():
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._cv.wait(min(left, 0.2))
        return True

    def wait_count(self, topic: str, n: int, timeout: float = 15.0) -> list[mqtt.MQTTMessage]:
        self.wait_for(lambda: len(self.on(topic)) >= n, timeout)
        return self.on(topic)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def ha_birth(broker: Mosquitto) -> None:
    """Home Assistant announces itself: ``homeassistant/status`` = ``online`` (QoS 1, acknowledged)
    from a client of its own, as Home Assistant does when it starts."""
    ha = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="ha")
    ha.connect(broker.host, broker.port)
    ha.loop_start()
    try:
        ha.publish("homeassistant/status", "online", qos=1).wait_for_publish(5)
    finally:
        ha.loop_stop()
        ha.disconnect()


def wait_until(pred: Callable[[], bool], timeout: float = 15.0, interval: float = 0.05) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(interval)
    return bool(pred())

