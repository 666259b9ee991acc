"""Home Assistant MQTT discovery payloads (schema documented in ``docs/MQTT.md``).

Per stream, one HA *device* with:

* one ``binary_sensor`` (``device_class: sound``) per monitor, ON/OFF from the retained
  state topic, the last answer as attributes;
* one ``sensor`` for the level in dBFS;
* one ``event`` entity whose event types are the stream's monitors, fed by
  ``<prefix>/<stream>/event`` (the same alert JSON as ``<prefix>/events``).

All entities share the availability topic ``<prefix>/status`` (``online``/``offline``),
so they all turn unavailable when the daemon's Last Will fires.
"""

from __future__ import annotations

from typing import Any

from alerts.topics import Topics, object_id

ORIGIN = {"name": "flamingo-edge", "support_url": "https://github.com/flamingo-edge/flamingo-edge"}


def device(node_id: str, stream: str, version: str) -> dict[str, Any]:
    return {
        "identifiers": [f"flamingo_edge_{node_id}_{object_id(stream)}"],
        "name": f"{stream} ({node_id})",
        "manufacturer": "flamingo-edge",
        "model": "Audio Flamingo 2 listener",
        "sw_version": version,
    }


def availability(topics: Topics) -> list[dict[str, str]]:
    return [{"topic": topics.status, "payload_available": "online", "payload_not_available": "offline"}]


def discovery_messages(
    *, discovery_prefix: str, node_id: str, topics: Topics, streams: dict[str, list[str]], version: str
) -> list[tuple[str, dict[str, Any]]]:
    """(config topic, payload) for every entity of every stream."""
    out: list[tuple[str, dict[str, Any]]] = []
    origin = dict(ORIGIN, sw_version=version)
    for stream in sorted(streams):
        sid = object_id(stream)
        dev = device(node_id, stream, version)
        common = {"availability": availability(topics), "device": dev, "origin": origin}
        monitors = sorted(set(streams[stream]))
        for monitor in monitors:
            mid = object_id(monitor)
            out.append((
                f"{discovery_prefix}/binary_sensor/{node_id}/{sid}_{mid}/config",
                {
                    "name": monitor,
                    "unique_id": f"{node_id}_{sid}_{mid}",
                    "state_topic": topics.state(stream, monitor),
                    "payload_on": "ON",
                    "payload_off": "OFF",
                    "device_class": "sound",
                    "json_attributes_topic": topics.answer(stream, monitor),
                    "qos": 1,
                    **common,
                },
            ))
        out.append((
            f"{discovery_prefix}/sensor/{node_id}/{sid}_level/config",
            {
                "name": "Level",
                "unique_id": f"{node_id}_{sid}_level",
                "state_topic": topics.level(stream),
                "unit_of_measurement": "dBFS",
                "state_class": "measurement",
                "suggested_display_precision": 1,
                "icon": "mdi:waveform",
                **common,
            },
        ))
        out.append((
            f"{discovery_prefix}/event/{node_id}/{sid}_alert/config",
            {
                "name": "Alert",
                "unique_id": f"{node_id}_{sid}_alert",
                "state_topic": topics.stream_event(stream),
                "event_types": monitors,
                "icon": "mdi:bell-alert",
                "qos": 1,
                **common,
            },
        ))
    return out
