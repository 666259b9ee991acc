"""What a subscriber (Home Assistant) is shown across crashes, outages and refusals, against a
real mosquitto: announcement order, no ON without a committed alert, one event per alert
after an outage + SIGKILL + replay, bounded retries under a partial ACL."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from alerts.pipeline import AlertPipeline
from edge.metrics import Metrics
from tests.alerts.helpers import (
    BROKER_PASSWORD,
    Recorder,
    alternating,
    fast_config,
    ha_birth,
    log_events,
    result,
    wait_until,
)
from tests.alerts.test_process import Child, _write_config
from tests.mqtt_broker import Mosquitto
from tests.mqtt_proxy import MqttProxy

STATE = "fe-test/s1/knock/state"
STATUS = "fe-test/status"


def shown(messages: list[mqtt.MQTTMessage], state_topic: str = STATE) -> list[str]:
    """What Home Assistant's binary sensor shows after each message: its availability
    follows ``<prefix>/status``, its value the last state received."""
    available, state, out = False, None, []
    for m in messages:
        if m.topic == STATUS:
            available = m.payload == b"online"
        elif m.topic == state_topic:
            state = m.payload.decode()
        else:
            continue
        out.append(state if available and state is not None else "unavailable")
    return out


def test_crash_while_on_restart_never_shows_on(
    broker: Mosquitto, recorder_factory: Callable[..., Recorder], tmp_path: Path, children: list[Child],
) -> None:
    cfg = _write_config(tmp_path / "cfg.json", broker)
    rec = recorder_factory(broker, [STATE, STATUS])
    c1 = Child(cfg, tmp_path / "data", "boot-1")
    children.append(c1)
    c1.send("wait_connected")
    c1.expect("connected")
    c1.send("positive s1 knock")
    assert rec.wait_for(lambda: rec.payloads(STATE)[-1:] == ["ON"], 10)
    c1.kill()  # crashed during the alarm: the broker keeps the retained ON and sends the Will
    assert rec.wait_for(lambda: rec.payloads(STATUS)[-1:] == ["offline"], 10)

    ha = recorder_factory(broker, [STATUS, STATE], client_id="ha")  # a Home Assistant running meanwhile
    c2 = Child(cfg, tmp_path / "data", "boot-2")
    children.append(c2)
    assert ha.wait_for(lambda: ha.payloads(STATUS)[-1:] == ["online"], 10)
    time.sleep(0.3)  # anything published right after `online` has arrived
    view = shown(ha.messages)
    assert "ON" not in view, view  # never unavailable -> on -> off
    assert view[-1] == "OFF"


@pytest.mark.parametrize("point", ["FE_KILL_BEFORE_COMMIT", "FE_KILL_AFTER_COMMIT"])
def test_sigkill_around_the_outbox_commit_never_leaves_on_without_its_alert(
    point: str, broker: Mosquitto, recorder_factory: Callable[..., Recorder], tmp_path: Path,
    children: list[Child],
) -> None:
    cfg = _write_config(tmp_path / "cfg.json", broker)
    rec = recorder_factory(broker, ["fe-test/#"])
    c1 = Child(cfg, tmp_path / "data", "boot-1", env={point: "0.5"})
    children.append(c1)
    c1.send("wait_connected")
    c1.expect("connected")
    c1.send("positive s1 knock")
    assert c1.proc.wait(10) == -9  # killed itself at the commit point
    time.sleep(0.3)
    assert "ON" not in rec.payloads(STATE), rec.payloads(STATE)

    c2 = Child(cfg, tmp_path / "data", "boot-2")
    children.append(c2)
    c2.send("wait_sent")
    c2.expect("sent")
    time.sleep(0.3)
    events = rec.events()
    if point == "FE_KILL_BEFORE_COMMIT":
        assert events == []  # never committed: no alert anywhere, and no ON either
    else:  # committed: the alert is delivered exactly once (by the first run or as a replay)
        assert len(events) == 1 and events[0]["boot_id"] == "boot-1"
        assert rec.events("fe-test/s1/event") == events or \
            [e["id"] for e in rec.events("fe-test/s1/event")] == [events[0]["id"]]
    assert rec.payloads(STATE)[-1:] == ["OFF"]


def test_outage_sigkill_replay_delivers_one_event_per_alert(
    broker: Mosquitto, recorder_factory: Callable[..., Recorder], tmp_path: Path, children: list[Child],
) -> None:
    """The uplink dies right after the broker acknowledged the first topic of the second
    alert (its other copy and the third alert never leave), then the daemon is killed.
    The next run must send each topic only what it has not acknowledged."""
    proxy = MqttProxy(broker.host, broker.port).start()
    try:
        rec = recorder_factory(broker, ["fe-test/events", "fe-test/s1/event"])
        d = fast_config(broker).model_dump(mode="json")
        d["mqtt"].update(host=proxy.host, port=proxy.port)
        cfg = tmp_path / "cfg.json"
        cfg.write_text(json.dumps(d))
        proxy.blackhole_after(3, lambda t: t in ("fe-test/events", "fe-test/s1/event"))
        c1 = Child(cfg, tmp_path / "data", "boot-1")
        children.append(c1)
        c1.send("alerts 3")
        assert proxy.acked.wait(15), proxy.published_topics
        time.sleep(0.5)  # the daemon records the PUBACKs it was given
        c1.kill()
        proxy.passthrough()
        c2 = Child(cfg, tmp_path / "data", "boot-2")
        children.append(c2)
        c2.send("wait_sent")
        c2.expect("sent", 20)
        time.sleep(0.5)  # would-be duplicates have time to arrive
    finally:
        proxy.stop()
    for topic in ("fe-test/s1/event", "fe-test/events"):
        ev = rec.events(topic)
        assert [(e["boot_id"], e["seq"]) for e in ev] == [("boot-1", 1), ("boot-1", 2), ("boot-1", 3)], topic
    first_try = rec.events("fe-test/s1/event")[:2] + rec.events("fe-test/events")[:1]
    assert all(e["replayed"] is False for e in first_try)
    replays = rec.events("fe-test/s1/event")[2:] + rec.events("fe-test/events")[1:]
    assert all(e["replayed"] is True for e in replays)
    # the original time travels with the replay
    by_id = {e["id"]: e["raised_at"] for e in rec.events("fe-test/s1/event")}
    assert all(by_id[e["id"]] == e["raised_at"] for e in rec.events("fe-test/events"))


def test_partial_acl_retries_only_the_refused_topic_and_gives_up(
    mosquitto: Callable[..., Mosquitto], recorder_factory: Callable[..., Recorder], tmp_path: Path,
    log_capture: io.StringIO,
) -> None:
    acl = "\n".join([
        "user edge",
        "topic readwrite fe-test/status", "topic readwrite fe-test/info", "topic readwrite fe-test/events",
        "topic readwrite fe-test/+/+/state", "topic readwrite fe-test/+/+/answer",
        "topic readwrite fe-test/+/level", "topic readwrite homeassistant/#",
        "user rec", "topic read #", "",
    ])  # fe-test/<stream>/event is not granted to edge
    broker = mosquitto(users={"edge": BROKER_PASSWORD, "rec": "rec-pass-123"}, acl=acl)
    rec = recorder_factory(broker, ["fe-test/events"], username="rec", password="rec-pass-123")
    m = Metrics()
    cfg = fast_config(broker, username="edge", password=BROKER_PASSWORD, max_refusals=3)
    p = AlertPipeline(cfg, m, "b-acl", tmp_path).start()
    try:
        for r in alternating(1):
            p.submit(r)
        assert wait_until(lambda: p.outbox.count("mqtt") == 0, 15)  # type: ignore[union-attr]
        time.sleep(0.5)
    finally:
        p.stop(2)
    logs = log_events(log_capture)
    refusals = [e for e in logs if e["event"].startswith("broker refused alert publish")]
    assert [e["topic"] for e in refusals] == ["fe-test/s1/event"] * 3
    assert refusals[-1]["event"] == "broker refused alert publish; giving up on this topic"
    # the allowed topic got the alert once, not once per retry
    assert len(rec.on("fe-test/events")) == 1
    assert m.registry.get_sample_value("fe_alerts_failed_total", {"sink": "mqtt"}) == 3
    assert m.registry.get_sample_value("fe_alerts_dropped_total", {"reason": "refused"}) == 1


def test_partial_acl_refusal_does_not_hold_back_other_streams_alerts(
    mosquitto: Callable[..., Mosquitto], recorder_factory: Callable[..., Recorder], tmp_path: Path,
    log_capture: io.StringIO,
) -> None:
    """A stream whose event topic the ACL denies keeps being retried with backoff; an
    alert of another stream raised meanwhile is delivered at once, not after that
    stream's backoff (which grows to backoff_max_s, a minute by default)."""
    acl = "\n".join([
        "user edge",
        "topic readwrite fe-test/status", "topic readwrite fe-test/info", "topic readwrite fe-test/events",
        "topic readwrite fe-test/s2/event",
        "topic readwrite fe-test/+/+/state", "topic readwrite fe-test/+/+/answer",
        "topic readwrite fe-test/+/level", "topic readwrite homeassistant/#",
        "user rec", "topic read #", "",
    ])  # fe-test/s1/event is not granted to edge
    broker = mosquitto(users={"edge": BROKER_PASSWORD, "rec": "rec-pass-123"}, acl=acl)
    rec = recorder_factory(broker, ["fe-test/events", "fe-test/s2/event"], username="rec", password="rec-pass-123")
    cfg = fast_config(broker, username="edge", password=BROKER_PASSWORD, max_refusals=3,
                      backoff_initial_s=20.0, backoff_max_s=20.0)
    p = AlertPipeline(cfg, Metrics(), "b-hol", tmp_path).start()
    try:
        p.submit(result("positive", stream="s1"))
        assert wait_until(lambda: any(e["event"].startswith("broker refused alert publish")
                                      for e in log_events(log_capture)), 15)
        p.submit(result("positive", stream="s2", i=1))
        # s1's retry waits >= 16 s; s2's alert must not wait with it
        assert rec.wait_for(lambda: len(rec.on("fe-test/s2/event")) == 1 and len(rec.on("fe-test/events")) == 2, 8), \
            rec.payloads("fe-test/events")
        assert [e["stream"] for e in rec.events()] == ["s1", "s2"]
    finally:
        p.stop(1)


def test_stop_during_the_announcement_leaves_offline_retained(
    broker: Mosquitto, recorder_factory: Callable[..., Recorder], tmp_path: Path,
) -> None:
    """SIGTERM while the announcement is still being acknowledged (right after a connect,
    or a Home Assistant birth): `online` must not follow `offline`, or Home Assistant
    shows a stopped daemon's entities as available, with their last states, for good."""
    monitors = [f"m{i}" for i in range(150)]  # a long announcement: the stop lands inside it
    p = AlertPipeline(fast_config(broker), Metrics(), "b-stop", tmp_path)
    p.start(configured={"s1": monitors})
    assert wait_until(lambda: p.mqtt is not None and p.mqtt.connected, 10, interval=0.001)
    p.mqtt.stop(5)  # type: ignore[union-attr]  # the sink's stop: what pipeline.stop ends with
    p.stop(1)
    late = recorder_factory(broker, [STATUS], client_id="late-ha")
    assert late.wait_for(lambda: len(late.messages) >= 1, 5)
    time.sleep(0.2)
    assert late.payloads(STATUS) == ["offline"]


def test_announce_order_configs_then_states_then_online(
    broker: Mosquitto, recorder_factory: Callable[..., Recorder], tmp_path: Path,
) -> None:
    rec = recorder_factory(broker, ["homeassistant/#", "fe-test/#"])
    p = AlertPipeline(fast_config(broker), Metrics(), "boot-A", tmp_path)
    p.start(configured={"s1": ["knock", "glass"]})

    def kinds(msgs: list[mqtt.MQTTMessage]) -> list[str]:
        out = []
        for msg in msgs:
            if msg.topic.startswith("homeassistant/") and msg.topic.endswith("/config"):
                out.append("config")
            elif msg.topic.endswith("/state") or msg.topic.endswith("/availability"):
                out.append("state")
            elif msg.topic == STATUS and msg.payload == b"online":
                out.append("online")
        return out

    try:
        assert rec.wait_for(lambda: "online" in kinds(rec.messages), 10)
        k = kinds(rec.messages)
        # 2 binary sensors, level, event, input; 2 states and the stream's availability
        assert k.count("config") == 5 and k.count("state") == 3
        assert k == sorted(k, key=["config", "state", "online"].index), k
        n = len(rec.messages)
        ha_birth(broker)
        assert rec.wait_for(lambda: "online" in kinds(rec.messages[n:]), 10)
        k = kinds(rec.messages[n:])
        assert k.count("config") == 5 and k.count("state") == 3
        assert k == sorted(k, key=["config", "state", "online"].index), k
    finally:
        p.stop(5)
