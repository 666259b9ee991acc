"""Home Assistant MQTT discovery payloads (schema documented in ``docs/MQTT.md``).

Per stream, one HA *device* with:

* one ``binary_sensor`` (``device_class: sound``) per monitor, ON/OFF from the retained
  state topic, the last answer as attributes;
* one ``sensor`` per *scored* monitor (``answer: yes_no`` / ``choice``, docs/MONITORS.md):
  the probability of its positive option(s) in %, ``state_class: measurement``, from the
  retained ``<prefix>/<stream>/<monitor>/score``, so it can be graphed and thresholded;
* one ``sensor`` for the level in dBFS;
* one ``event`` entity whose event types are the stream's monitors, fed by
  ``<prefix>/<stream>/event`` (the same alert JSON as ``<prefix>/events``);
* one ``sensor`` "Input" whose state is the stream's input state (``live``, ``silent``,
  ``reconnecting``, ... from ``<prefix>/<stream>/health``, edge/health.py) with the
  last-frame age and ``silent_after`` as attributes.

All entities follow the daemon's availability topic ``<prefix>/status`` (``online``/
``offline``), so they all turn unavailable when the daemon's Last Will fires. The monitor,
level and alert entities also follow ``<prefix>/<stream>/availability`` (both must be
``online``): they are unavailable while the stream is silent or reconnecting, and the Input
sensor, which stays available, says why.

Object ids, unique ids and device identifiers come from `alerts.entities.EntityIds`
(collision-free for any names, stable, legacy ids kept where they were unique).
"""

from __future__ import annotations

from typing import Any

from alerts.entities import Entity, EntityIds, config_topic, stream_entities
from alerts.topics import Topics

ORIGIN = {"name": "flamingo-edge", "support_url": "https://github.com/flamingo-edge/flamingo-edge"}


def device(node_id: str, stream: str, version: str, ids: EntityIds) -> dict[str, Any]:
    return {
        "identifiers": [f"flamingo_edge_{node_id}_{ids.object_id(Entity('device', 'device', stream))}"],
        "name": f"{stream} ({node_id})",
        "manufacturer": "flamingo-edge",
        "model": "Audio Flamingo 2 listener",
        "sw_version": version,
    }


def availability(topics: Topics, stream: str | None = None) -> list[dict[str, str]]:
    """The daemon's status topic, and with ``stream`` that stream's availability topic."""
    out = [{"topic": topics.status, "payload_available": "online", "payload_not_available": "offline"}]
    if stream is not None:
        out.append({"topic": topics.availability(stream), "payload_available": "online",
                    "payload_not_available": "offline"})
    return out


def discovery_messages(
    *, discovery_prefix: str, node_id: str, topics: Topics, streams: dict[str, list[str]], version: str,
    ids: EntityIds | None = None, scored: dict[str, list[str]] | None = None,
) -> list[tuple[str, dict[str, Any]]]:
    """(config topic, payload) for every entity of every stream."""
    return [(t, p) for _e, t, p in discovery_entities(
        discovery_prefix=discovery_prefix, node_id=node_id, topics=topics, streams=streams, version=version,
        ids=ids or EntityIds(), scored=scored,
    )]


def discovery_entities(
    *, discovery_prefix: str, node_id: str, topics: Topics, streams: dict[str, list[str]], version: str,
    ids: EntityIds, scored: dict[str, list[str]] | None = None,
) -> list[tuple[Entity, str, dict[str, Any]]]:
    """(entity, config topic, payload) for every entity of every stream, ids from ``ids``;
    ``scored``: stream -> the monitors that also get a score sensor."""
    out: list[tuple[Entity, str, dict[str, Any]]] = []
    origin = dict(ORIGIN, sw_version=version)
    sc = {s: sorted(set(ms) & set(streams.get(s, ()))) for s, ms in (scored or {}).items()}
    # all at once: order-free
    ids.assign(e for s in streams for e in stream_entities(s, streams[s], sc.get(s, ())))

    def add(e: Entity, payload: dict[str, Any]) -> None:
        oid = ids.object_id(e)
        out.append((e, config_topic(discovery_prefix, node_id, e.component, oid),
                    {**payload, "unique_id": f"{node_id}_{oid}"}))

    for stream in sorted(streams):
        dev = device(node_id, stream, version, ids)
        common = {"availability": availability(topics, stream), "availability_mode": "all",
                  "device": dev, "origin": origin}
        monitors = sorted(set(streams[stream]))
        for monitor in monitors:
            add(
                Entity("binary_sensor", "monitor", stream, monitor),
                {
                    "name": monitor,
                    "state_topic": topics.state(stream, monitor),
                    "payload_on": "ON",
                    "payload_off": "OFF",
                    "device_class": "sound",
                    "json_attributes_topic": topics.answer(stream, monitor),
                    "qos": 1,
                    **common,
                },
            )
        for monitor in sc.get(stream, ()):
            add(
                Entity("sensor", "score", stream, monitor),
                {
                    "name": f"{monitor} score",
                    "state_topic": topics.score(stream, monitor),
                    "unit_of_measurement": "%",
                    "state_class": "measurement",
                    "suggested_display_precision": 1,
                    "icon": "mdi:percent-circle",
                    "json_attributes_topic": topics.answer(stream, monitor),
                    "qos": 1,
                    **common,
                },
            )
        add(
            Entity("sensor", "level", stream),
            {
                "name": "Level",
                "state_topic": topics.level(stream),
                "unit_of_measurement": "dBFS",
                "state_class": "measurement",
                "suggested_display_precision": 1,
                "icon": "mdi:waveform",
                **common,
            },
        )
        add(
            Entity("event", "alert", stream),
            {
                "name": "Alert",
                "state_topic": topics.stream_event(stream),
                "event_types": monitors,
                "icon": "mdi:bell-alert",
                "qos": 1,
                **common,
            },
        )
        add(
            Entity("sensor", "input", stream),
            {
                "name": "Input",
                "state_topic": topics.health(stream),
                "value_template": "{{ value_json.state }}",
                "json_attributes_topic": topics.health(stream),
                "icon": "mdi:microphone-message",
                "qos": 1,
                "availability": availability(topics), "device": dev, "origin": origin,
            },
        )
    return out
