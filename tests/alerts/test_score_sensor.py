"""A scored monitor's Home Assistant score sensor (docs/MQTT.md): announced next to its
binary_sensor, fed with every score in %, removed when the monitor stops being scored."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path

from alerts.entities import EntityIds, stream_entities
from alerts.pipeline import AlertPipeline
from edge import __version__
from edge.metrics import Metrics
from tests.alerts.helpers import Recorder, fast_config, result
from tests.mqtt_broker import Mosquitto

KNOCK_SCORE = "homeassistant/sensor/testnode/s1_knock_score/config"


def _latest(rec: Recorder) -> dict[str, dict]:
    out = {}
    for m in rec.on("homeassistant/+/+/+/config"):
        if m.payload:
            out[m.topic] = json.loads(m.payload)
        else:
            out.pop(m.topic, None)
    return out


def _scored(verdict: str, score: float, monitor: str = "knock", i: int = 0):  # type: ignore[no-untyped-def]
    return dataclasses.replace(result(verdict, stream="s1", monitor=monitor, i=i, answer="yes"),
                               score=score, threshold=0.7, hysteresis=0.1,
                               probs={"yes": score, "no": 1 - score}, coverage=0.9)


def test_scored_monitor_gets_a_percent_sensor_fed_with_every_score(
    broker: Mosquitto, recorder_factory: Callable[..., Recorder], tmp_path: Path
) -> None:
    rec = recorder_factory(broker, ["homeassistant/#", "fe-test/#"])
    p = AlertPipeline(fast_config(broker), Metrics(), "b1", tmp_path)
    p.start(configured={"s1": ["knock", "glass"]}, scored={"s1": ["knock"]})
    try:
        assert rec.wait_for(lambda: KNOCK_SCORE in _latest(rec), 10)
        got = _latest(rec)
        cfg = got[KNOCK_SCORE]
        binary = got["homeassistant/binary_sensor/testnode/s1_knock/config"]
        assert {k: cfg[k] for k in ("name", "unique_id", "state_topic", "unit_of_measurement",
                                    "state_class", "json_attributes_topic", "qos")} == {
            "name": "knock score", "unique_id": "testnode_s1_knock_score",
            "state_topic": "fe-test/s1/knock/score", "unit_of_measurement": "%",
            "state_class": "measurement", "json_attributes_topic": "fe-test/s1/knock/answer", "qos": 1}
        # the same device and availability as the binary_sensor next to it
        assert cfg["device"] == binary["device"] and cfg["availability"] == binary["availability"]
        assert cfg["device"]["sw_version"] == __version__
        # the text/unscored monitor has no score sensor
        assert not [t for t in got if "glass_score" in t]
        # every score is published, in percent, retained
        for i, (v, s) in enumerate([("positive", 0.875), ("negative", 0.3), ("negative", 0.0412)]):
            p.submit(_scored(v, s, i=i))
        assert rec.wait_for(lambda: len(rec.payloads("fe-test/s1/knock/score")) >= 3, 10)
        assert rec.payloads("fe-test/s1/knock/score") == ["87.50", "30.00", "4.12"]
        # an unscored result on another monitor publishes no score
        p.submit(result("positive", stream="s1", monitor="glass"))
        assert rec.wait_for(lambda: rec.payloads("fe-test/s1/glass/answer") != [], 10)
        assert rec.on("fe-test/s1/glass/score") == []
        late = recorder_factory(broker, ["fe-test/s1/knock/score"], client_id="late")
        assert late.wait_for(lambda: late.payloads("fe-test/s1/knock/score") == ["4.12"], 5)
        assert late.messages[0].retain
    finally:
        p.stop(5)


def test_a_score_from_an_undeclared_monitor_announces_its_sensor(
    broker: Mosquitto, recorder_factory: Callable[..., Recorder], tmp_path: Path
) -> None:
    rec = recorder_factory(broker, ["homeassistant/#", "fe-test/#"])
    p = AlertPipeline(fast_config(broker), Metrics(), "b1", tmp_path).start()
    try:
        p.submit(_scored("positive", 0.9, monitor="hum"))
        topic = "homeassistant/sensor/testnode/s1_hum_score/config"
        assert rec.wait_for(lambda: topic in _latest(rec), 10)
        assert _latest(rec)[topic]["state_topic"] == "fe-test/s1/hum/score"
        assert rec.wait_for(lambda: rec.payloads("fe-test/s1/hum/score") == ["90.00"], 5)
    finally:
        p.stop(5)


def test_score_sensor_removed_when_the_monitor_stops_being_scored_or_goes(
    broker: Mosquitto, recorder_factory: Callable[..., Recorder], tmp_path: Path
) -> None:
    rec = recorder_factory(broker, ["homeassistant/#", "fe-test/#"])
    p = AlertPipeline(fast_config(broker), Metrics(), "b1", tmp_path)
    p.start(configured={"s1": ["knock", "hum"]}, scored={"s1": ["knock", "hum"]})
    try:
        p.submit(_scored("negative", 0.2))
        assert rec.wait_for(lambda: rec.payloads("fe-test/s1/knock/score") == ["20.00"], 10)
    finally:
        p.stop(5)
    hum = "homeassistant/sensor/testnode/s1_hum_score/config"
    assert {KNOCK_SCORE, hum} <= set(_latest(rec))
    # knock becomes a text monitor (still configured, no longer scored); hum is gone
    p2 = AlertPipeline(fast_config(broker), Metrics(), "b2", tmp_path)
    p2.start(configured={"s1": ["knock"]}, scored={"s1": []})
    try:
        assert rec.wait_for(lambda: rec.payloads("fe-test/status").count("online") >= 2, 10)
        time.sleep(0.3)
    finally:
        p2.stop(5)
    latest = _latest(rec)
    assert KNOCK_SCORE not in latest and hum not in latest
    assert rec.payloads(KNOCK_SCORE)[-1] == "" and rec.payloads("fe-test/s1/knock/score")[-1] == ""
    assert "homeassistant/binary_sensor/testnode/s1_knock/config" in latest  # the monitor stays
    late = recorder_factory(broker, ["homeassistant/sensor/#", "fe-test/s1/knock/score"], client_id="late")
    assert late.wait_for(lambda: late.messages != [], 5)
    time.sleep(0.3)
    assert {m.topic for m in late.messages} == {"homeassistant/sensor/testnode/s1_level/config",
                                                "homeassistant/sensor/testnode/s1_input/config"}


def test_score_sensor_ids_do_not_collide_with_other_entities() -> None:
    """Stream 'x' monitor 'level' and stream 'x_level'... : every sensor gets its own id."""
    ids = EntityIds()
    ents = (stream_entities("x", ["level", "y"], ["level", "y"]) + stream_entities("x_y", ["z"], ["z"])
            + stream_entities("x_level", ["m"], []))
    ids.assign(ents)
    sensors = [e for e in ents if e.component == "sensor"]
    assert len({ids.object_id(e) for e in sensors}) == len(sensors)
    assert ids.object_id(stream_entities("x", ["y"], ["y"])[-1]) == "x_y_score"


def test_prune_removes_the_score_sensor_of_a_monitor_turned_into_text(
    broker: Mosquitto, recorder_factory: Callable[..., Recorder], tmp_path: Path
) -> None:
    from click.testing import CliRunner

    from edge.cli import cli

    rec = recorder_factory(broker, ["homeassistant/#", "fe-test/#"])
    p = AlertPipeline(fast_config(broker), Metrics(), "b1", tmp_path)
    p.start(configured={"s1": ["knock"]}, scored={"s1": ["knock"]})
    try:
        p.submit(_scored("negative", 0.25))
        assert rec.wait_for(lambda: rec.payloads("fe-test/s1/knock/score") == ["25.00"], 10)
    finally:
        p.stop(5)
    cfg = tmp_path / "daemon.yaml"
    cfg.write_text(
        f"data_dir: {tmp_path}\n"
        "streams: [{id: s1, source: mqtt}]\n"
        "monitors: [{name: knock, question: 'What do you hear?', answer: text, every: 60}]\n"
        f"alerts: {{node_id: testnode, mqtt: {{host: {broker.host}, port: {broker.port}, topic_prefix: fe-test}}}}\n"
    )
    r = CliRunner().invoke(cli, ["alerts", "prune", "--config", str(cfg)])
    assert r.exit_code == 0, r.output
    assert r.output.splitlines() == [f"removed sensor s1/knock  ({KNOCK_SCORE})"]
    assert rec.wait_for(lambda: rec.payloads(KNOCK_SCORE)[-1:] == [""], 5)
    assert rec.wait_for(lambda: rec.payloads("fe-test/s1/knock/score")[-1:] == [""], 5)
    assert "" not in rec.payloads("homeassistant/binary_sensor/testnode/s1_knock/config")
