"""Home Assistant discovery payloads, field by field, as documented in docs/MQTT.md."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from alerts.pipeline import AlertPipeline
from edge import __version__
from edge.metrics import Metrics
from tests.alerts.helpers import Recorder, fast_config, result, wait_until
from tests.mqtt_broker import Mosquitto

AVAILABILITY = [{"topic": "fe-test/status", "payload_available": "online", "payload_not_available": "offline"}]
ORIGIN = {"name": "flamingo-edge", "sw_version": __version__,
          "support_url": "https://github.com/flamingo-edge/flamingo-edge"}


def device(stream: str) -> dict:
    return {
        "identifiers": [f"flamingo_edge_testnode_{stream.replace(' ', '_')}"],
        "name": f"{stream} (testnode)",
        "manufacturer": "flamingo-edge",
        "model": "Audio Flamingo 2 listener",
        "sw_version": __version__,
    }


def expected(stream: str, sid: str, monitors: list[str]) -> dict[str, dict]:
    common = {"availability": AVAILABILITY, "device": device(stream), "origin": ORIGIN}
    out = {
        f"homeassistant/binary_sensor/testnode/{sid}_{m}/config": {
            "name": m,
            "unique_id": f"testnode_{sid}_{m}",
            "state_topic": f"fe-test/{stream}/{m}/state",
            "payload_on": "ON",
            "payload_off": "OFF",
            "device_class": "sound",
            "json_attributes_topic": f"fe-test/{stream}/{m}/answer",
            "qos": 1,
            **common,
        }
        for m in monitors
    }
    out[f"homeassistant/sensor/testnode/{sid}_level/config"] = {
        "name": "Level",
        "unique_id": f"testnode_{sid}_level",
        "state_topic": f"fe-test/{stream}/level",
        "unit_of_measurement": "dBFS",
        "state_class": "measurement",
        "suggested_display_precision": 1,
        "icon": "mdi:waveform",
        **common,
    }
    out[f"homeassistant/event/testnode/{sid}_alert/config"] = {
        "name": "Alert",
        "unique_id": f"testnode_{sid}_alert",
        "state_topic": f"fe-test/{stream}/event",
        "event_types": sorted(monitors),
        "icon": "mdi:bell-alert",
        "qos": 1,
        **common,
    }
    return out


def _latest(rec: Recorder) -> dict[str, dict]:
    out = {}
    for m in rec.on("homeassistant/+/+/+/config"):
        out[m.topic] = json.loads(m.payload)
    return out


def test_discovery_payloads_field_by_field_and_republish_on_ha_birth(
    broker: Mosquitto, recorder_factory: Callable[..., Recorder], tmp_path: Path
) -> None:
    rec = recorder_factory(broker, ["homeassistant/#", "fe-test/#"])
    p = AlertPipeline(fast_config(broker), Metrics(), "boot-D", tmp_path).start()
    try:
        p.declare("kitchen", ["knock", "glass"])
        p.submit(result("positive", stream="hall way", monitor="dog"))  # discovered from its first result
        want = {**expected("kitchen", "kitchen", ["glass", "knock"]), **expected("hall way", "hall_way", ["dog"])}
        assert rec.wait_for(lambda: set(want) <= set(_latest(rec)), 10)
        got = _latest(rec)
        assert set(got) == set(want)
        for topic, payload in want.items():
            assert got[topic] == payload, topic
        # the binary sensor follows the state topic it was told about
        assert rec.wait_for(lambda: rec.payloads("fe-test/hall way/dog/state") == ["ON"], 5)
        # a retained copy exists for a Home Assistant that starts later
        late = recorder_factory(broker, ["homeassistant/#"], client_id="late-ha")
        assert late.wait_for(lambda: len(late.messages) >= len(want), 5)
        assert all(m.retain for m in late.messages)
        # Home Assistant announces itself: everything is published again
        n_before = len(rec.on("homeassistant/+/+/+/config"))
        ha = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="ha")
        ha.connect(broker.host, broker.port)
        ha.loop_start()
        ha.publish("homeassistant/status", "online", qos=1).wait_for_publish(5)
        ha.loop_stop()
        ha.disconnect()
        assert rec.wait_for(lambda: len(rec.on("homeassistant/+/+/+/config")) >= n_before + len(want), 10)
        assert wait_until(lambda: rec.payloads("fe-test/hall way/dog/state").count("ON") >= 2, 5)
    finally:
        p.stop(5)


def test_discovery_remembered_across_restart(broker: Mosquitto, recorder_factory, tmp_path: Path) -> None:
    p = AlertPipeline(fast_config(broker), Metrics(), "b1", tmp_path).start()
    p.submit(result("negative", stream="yard", monitor="engine"))
    assert wait_until(lambda: p.history is not None and p.history.known_monitors() == [("yard", "engine")], 5)
    p.stop(5)
    rec = recorder_factory(broker, ["homeassistant/binary_sensor/#"], client_id="r2")
    rec.messages.clear()  # drop the retained copies: we want a fresh publication
    p2 = AlertPipeline(fast_config(broker, topic_prefix="fe-test"), Metrics(), "b2", tmp_path).start()
    try:
        assert rec.wait_for(lambda: any(not m.retain for m in rec.on("homeassistant/binary_sensor/testnode/yard_engine/config")), 10)
    finally:
        p2.stop(5)


def test_discovery_can_be_disabled(broker: Mosquitto, recorder_factory, tmp_path: Path) -> None:
    rec = recorder_factory(broker, ["homeassistant/#", "fe-test/status"])
    cfg = fast_config(broker)
    cfg.homeassistant.enabled = False
    p = AlertPipeline(cfg, Metrics(), "b", tmp_path).start()
    try:
        p.submit(result("positive"))
        assert rec.wait_for(lambda: rec.payloads("fe-test/status") == ["online"], 5)
    finally:
        p.stop(5)
    assert rec.on("homeassistant/#") == []
