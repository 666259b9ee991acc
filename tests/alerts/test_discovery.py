"""Home Assistant discovery payloads, field by field, as documented in docs/MQTT.md."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from alerts.entities import EntityIds, stream_entities
from alerts.pipeline import AlertPipeline
from edge import __version__
from edge.metrics import Metrics
from tests.alerts.helpers import Recorder, fast_config, ha_birth, result, wait_until
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
    # the stream's entities are available while the daemon is online AND the stream is heard
    stream_availability = [*AVAILABILITY, {"topic": f"fe-test/{stream}/availability",
                                           "payload_available": "online",
                                           "payload_not_available": "offline"}]
    common = {"availability": stream_availability, "availability_mode": "all",
              "device": device(stream), "origin": ORIGIN}
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
    # the Input sensor says why (live / silent / reconnecting), available with the daemon
    out[f"homeassistant/sensor/testnode/{sid}_input/config"] = {
        "name": "Input",
        "unique_id": f"testnode_{sid}_input",
        "state_topic": f"fe-test/{stream}/health",
        "value_template": "{{ value_json.state }}",
        "json_attributes_topic": f"fe-test/{stream}/health",
        "icon": "mdi:microphone-message",
        "qos": 1,
        "availability": AVAILABILITY, "device": device(stream), "origin": ORIGIN,
    }
    return out


def _latest(rec: Recorder) -> dict[str, dict]:
    out = {}
    for m in rec.on("homeassistant/+/+/+/config"):
        if m.payload:
            out[m.topic] = json.loads(m.payload)
        else:  # an empty config removes the entity
            out.pop(m.topic, None)
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
        # monitors declared one by one may be announced in two rounds: wait for the last one
        assert rec.wait_for(lambda: all(_latest(rec).get(t) == v for t, v in want.items()), 10)
        got = _latest(rec)
        assert set(got) == set(want)
        for topic, payload in want.items():
            assert got[topic] == payload, topic
        # the binary sensor follows the state topic it was told about
        assert rec.wait_for(lambda: rec.payloads("fe-test/hall way/dog/state") == ["ON"], 5)
        # without a daemon reporting input state, a stream's entities are available
        # (published once, and again if an announcement's snapshot carried it: never "offline")
        for s in ("kitchen", "hall way"):
            assert rec.wait_for(lambda s=s: rec.payloads(f"fe-test/{s}/availability")[-1:] == ["online"], 5)
            assert set(rec.payloads(f"fe-test/{s}/availability")) == {"online"}
        # a retained copy exists for a Home Assistant that starts later
        late = recorder_factory(broker, ["homeassistant/#"], client_id="late-ha")
        assert late.wait_for(lambda: len(late.messages) >= len(want), 5)
        assert all(m.retain for m in late.messages)
        # Home Assistant announces itself: everything is published again
        n_before = len(rec.on("homeassistant/+/+/+/config"))
        ha_birth(broker)
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
        topic = "homeassistant/binary_sensor/testnode/yard_engine/config"
        assert rec.wait_for(lambda: any(not m.retain for m in rec.on(topic)), 10)
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


def _wait_online(rec: Recorder, n: int = 1) -> None:
    assert rec.wait_for(lambda: rec.payloads("fe-test/status").count("online") >= n, 10)


def _run_once(broker: Mosquitto, rec: Recorder, tmp_path: Path, boot: str,
              configured: dict[str, list[str]], online: int) -> None:
    """A daemon run on ``configured``: start, wait for its ``online`` (the ``online``-th the
    recorder sees), let the announcement's last messages arrive, stop."""
    p = AlertPipeline(fast_config(broker), Metrics(), boot, tmp_path)
    p.start(configured=configured)
    try:
        _wait_online(rec, online)
        time.sleep(0.3)
    finally:
        p.stop(5)


def test_colliding_names_get_distinct_topics_unique_ids_and_devices(
    broker: Mosquitto, recorder_factory: Callable[..., Recorder], tmp_path: Path
) -> None:
    """Valid names that the old escaping merged: 'a.b' / 'a_b' (one device), and stream
    'x' + monitor 'y_z' / stream 'x_y' + monitor 'z' (one discovery topic and unique_id)."""
    rec = recorder_factory(broker, ["homeassistant/#", "fe-test/status"])
    names = {"a.b": ["m"], "a_b": ["m"], "x": ["y_z"], "x_y": ["z"]}
    # the daemon announces every configured stream at start, as here; the order the
    # streams are listed in does not decide who keeps the legacy id
    p = AlertPipeline(fast_config(broker), Metrics(), "b", tmp_path)
    p.start(configured={s: names[s] for s in ("x_y", "a.b", "x", "a_b")})
    try:
        assert rec.wait_for(lambda: len(_latest(rec)) >= 16, 10), sorted(_latest(rec))
        time.sleep(0.3)
        got = _latest(rec)
    finally:
        p.stop(5)
    assert len(got) == 16  # 4 binary sensors, 4 level sensors, 4 event entities, 4 input sensors
    assert len({c["unique_id"] for c in got.values()}) == 16
    assert len({c["device"]["identifiers"][0] for c in got.values()}) == 4
    states = {c["state_topic"] for c in got.values() if "payload_on" in c}
    assert states == {"fe-test/a.b/m/state", "fe-test/a_b/m/state", "fe-test/x/y_z/state", "fe-test/x_y/z/state"}
    by_state = {c["state_topic"]: (t, c) for t, c in got.items() if "payload_on" in c}
    # names that need no escaping keep the legacy ids; the others get a short hash
    assert by_state["fe-test/a_b/m/state"][0] == "homeassistant/binary_sensor/testnode/a_b_m/config"
    assert by_state["fe-test/x/y_z/state"][0] == "homeassistant/binary_sensor/testnode/x_y_z/config"
    t, c = by_state["fe-test/a.b/m/state"]
    assert re.fullmatch(r"homeassistant/binary_sensor/testnode/a_b_m_[0-9a-f]{8}/config", t)
    assert c["unique_id"] == "testnode_" + t.split("/")[3]
    # the same ids after a restart (stored in the history database), whatever the order
    rec.messages.clear()
    p2 = AlertPipeline(fast_config(broker), Metrics(), "b2", tmp_path)
    p2.start(configured={s: names[s] for s in ("a_b", "x", "a.b", "x_y")})
    try:
        assert rec.wait_for(lambda: len(_latest(rec)) >= 16, 10)
        time.sleep(0.3)
        assert _latest(rec) == got
    finally:
        p2.stop(5)


def test_removed_monitor_and_stream_get_an_empty_retained_config(
    broker: Mosquitto, recorder_factory: Callable[..., Recorder], tmp_path: Path
) -> None:
    rec = recorder_factory(broker, ["homeassistant/#", "fe-test/#"])
    p = AlertPipeline(fast_config(broker), Metrics(), "b1", tmp_path)
    p.start(configured={"s1": ["knock", "glass"], "s2": ["dog"]})
    try:
        _wait_online(rec)
        p.submit(result("positive", stream="s1", monitor="glass"))
        assert rec.wait_for(lambda: rec.payloads("fe-test/s1/glass/state")[-1:] == ["ON"], 5)
    finally:
        p.stop(5)
    announced = set(_latest(rec))
    assert len(announced) == 9  # 3 binary sensors; per stream a level, input and event entity
    glass = "homeassistant/binary_sensor/testnode/s1_glass/config"
    gone = {glass} | {t for t in announced if "/s2_" in t}
    # the config changes: glass and the whole s2 stream are no longer configured
    _run_once(broker, rec, tmp_path, "b2", {"s1": ["knock"]}, online=2)
    for t in gone:
        assert rec.payloads(t)[-1] == "", t
    assert rec.payloads("fe-test/s1/glass/state")[-1] == "" and rec.payloads("fe-test/s1/glass/answer")[-1] == ""
    # the removed stream's retained input topics are cleared too
    assert rec.payloads("fe-test/s2/availability")[-1] == ""
    # a Home Assistant starting now finds only what is configured
    late = recorder_factory(broker, ["homeassistant/#"], client_id="late-ha")
    assert late.wait_for(lambda: len(late.messages) >= 3, 5)
    time.sleep(0.3)
    assert {m.topic for m in late.messages} == announced - gone
    event = json.loads(next(m.payload for m in late.messages if "/event/" in m.topic))
    assert event["event_types"] == ["knock"]
    # removed once: the next start has nothing left to remove
    n = len(rec.messages)
    _run_once(broker, rec, tmp_path, "b3", {"s1": ["knock"]}, online=3)
    assert not [m for m in rec.messages[n:] if m.topic in gone]


def test_entity_pruned_while_the_daemon_still_announces_it_is_removed_at_the_next_start(
    broker: Mosquitto, recorder_factory: Callable[..., Recorder], tmp_path: Path
) -> None:
    """`alerts prune` (documented as safe while the daemon runs) removes a monitor the
    running daemon, still on its old config, announces again on Home Assistant's next
    birth message; the daemon restarted on the new config must still remove it."""
    from alerts.prune import prune

    rec = recorder_factory(broker, ["homeassistant/#", "fe-test/status"])
    glass = "homeassistant/binary_sensor/testnode/s1_glass/config"
    p = AlertPipeline(fast_config(broker), Metrics(), "b1", tmp_path)
    p.start(configured={"s1": ["knock", "glass"]})
    try:
        _wait_online(rec)
        assert prune(fast_config(broker), tmp_path, {"s1": ["knock"]}) != []
        assert rec.wait_for(lambda: rec.payloads(glass)[-1:] == [""], 5)
        ha_birth(broker)
        _wait_online(rec, 2)
        assert rec.payloads(glass)[-1] != ""  # the old config's daemon announced it again
    finally:
        p.stop(5)
    _run_once(broker, rec, tmp_path, "b2", {"s1": ["knock"]}, online=3)
    assert rec.payloads(glass)[-1] == ""


def test_existing_install_keeps_its_legacy_ids(broker: Mosquitto, recorder_factory, tmp_path: Path) -> None:
    """A history written before the id registry (monitors table only): unique names keep
    the ids earlier releases announced, and a no-longer-configured pair is removed."""
    import sqlite3

    db = sqlite3.connect(tmp_path / "history.sqlite3")
    db.executescript("CREATE TABLE monitors (stream TEXT NOT NULL, monitor TEXT NOT NULL, last_seen REAL NOT NULL,"
                     " PRIMARY KEY (stream, monitor));"
                     "INSERT INTO monitors VALUES ('pump.1', 'cavitation', 1), ('pump.1', 'old', 1);")
    db.commit()
    db.close()
    rec = recorder_factory(broker, ["homeassistant/#", "fe-test/status"])
    p = AlertPipeline(fast_config(broker), Metrics(), "b", tmp_path)
    p.start(configured={"pump.1": ["cavitation"]})
    try:
        _wait_online(rec)
        time.sleep(0.3)
    finally:
        p.stop(5)
    got = _latest(rec)
    keep = "homeassistant/binary_sensor/testnode/pump_1_cavitation/config"
    assert got[keep]["unique_id"] == "testnode_pump_1_cavitation"
    assert got[keep]["device"]["identifiers"] == ["flamingo_edge_testnode_pump_1"]
    assert rec.payloads("homeassistant/binary_sensor/testnode/pump_1_old/config") == [""]


NAME = st.from_regex(r"[A-Za-z0-9_.-]{1,10}", fullmatch=True)


@given(st.dictionaries(NAME, st.lists(NAME, min_size=1, max_size=3, unique=True), min_size=1, max_size=5),
       st.randoms(use_true_random=False))
@settings(max_examples=60, deadline=None)
def test_entity_ids_unique_for_any_valid_names(streams: dict[str, list[str]], rnd) -> None:  # type: ignore[no-untyped-def]
    ents = [e for s, ms in streams.items() for e in stream_entities(s, ms)]
    together = EntityIds()
    together.assign(ents)
    ids = {e: together.object_id(e) for e in ents}
    one_by_one = EntityIds()  # names arriving one at a time, in any order
    for e in rnd.sample(ents, len(ents)):
        one_by_one.object_id(e)
    for reg in (together, one_by_one):
        got = [(e.component, reg.object_id(e)) for e in ents]
        assert len(set(got)) == len(got)  # one id per entity within each component
        assert all(re.fullmatch(r"[a-zA-Z0-9_-]+", oid) for _c, oid in got)
    # a fresh registry given the same names together gives the same ids (no history database)
    again = EntityIds()
    again.assign(list(reversed(ents)))
    assert {e: again.object_id(e) for e in ents} == ids
    # names that collide with nothing keep the legacy id
    for e in ents:
        if sum(x.component == e.component and x.legacy_id() == e.legacy_id() for x in ents) == 1:
            assert ids[e] == e.legacy_id()
