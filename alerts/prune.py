"""``flamingo-edge alerts prune``: remove from Home Assistant the entities this node
announced that are no longer configured (or all of them, ``--all``), without the daemon.

The daemon does the same at every start (`AlertPipeline.start(configured=...)`); this
command is for doing it now, or for an uninstall (``--all``). It reads the entity
registry in ``<data_dir>/history.sqlite3`` (`alerts.entities`), publishes an empty
retained config to each stale entity's discovery topic (and empty retained state and
answer for a monitor, score for a score sensor), QoS 1, over its own short MQTT
connection (client id ``<client_id>-prune``, no Last Will: the daemon's availability is
untouched), and marks
each entity removed once the broker acknowledged it.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt

from alerts.config import AlertsConfig
from alerts.entities import Entity, reconcile
from alerts.history import History
from alerts.mqtt_sink import new_alert_client, removal_topics
from alerts.topics import Topics


class PruneError(Exception):
    """The broker could not be reached or refused a removal (message says which)."""


def stale_entities(config: AlertsConfig, data_dir: Path, configured: dict[str, list[str]],
                   scored: dict[str, list[str]] | None = None) -> tuple[History, list[tuple[Entity, str]]]:
    history = History(Path(data_dir) / "history.sqlite3")
    ids = history.entity_ids()
    stale = reconcile(ids, history.known_monitors(), configured,
                      discovery_prefix=config.homeassistant.discovery_prefix, node_id=config.node_id,
                      scored=scored)
    return history, stale


def prune(config: AlertsConfig, data_dir: Path, configured: dict[str, list[str]], *, dry_run: bool = False,
          timeout: float = 10.0, scored: dict[str, list[str]] | None = None) -> list[tuple[Entity, str]]:
    """Remove the stale entities; returns them (those that would be removed, with ``dry_run``).
    ``scored``: stream -> scored monitors (their score sensors stay; others' are stale)."""
    history, stale = stale_entities(config, data_dir, configured, scored)
    try:
        if dry_run or not stale:
            return stale
        _publish_removals(config, history, stale, timeout)
        return stale
    finally:
        history.close()


def _publish_removals(config: AlertsConfig, history: History, stale: list[tuple[Entity, str]],
                      timeout: float) -> None:
    cfg = config.mqtt
    topics = Topics(cfg.topic_prefix)
    client = new_alert_client(cfg, f"{cfg.client_id or 'flamingo-edge-' + config.node_id}-prune")
    connected = threading.Event()
    refused: list[str] = []
    acks: dict[int, str] = {}
    done = threading.Event()
    pending: dict[int, tuple[Entity, str] | None] = {}
    lock = threading.Lock()

    def on_connect(_c: mqtt.Client, _u: object, _f: object, rc: object, _p: object) -> None:
        if getattr(rc, "is_failure", False):
            refused.append(str(rc))
        connected.set()

    def on_publish(_c: mqtt.Client, _u: object, mid: int, rc: object, _p: object) -> None:
        with lock:
            acks[mid] = str(rc) if getattr(rc, "is_failure", False) else ""
            if pending and set(pending) <= set(acks):
                done.set()

    client.on_connect, client.on_publish = on_connect, on_publish
    try:
        client.connect(cfg.host, cfg.port, cfg.keepalive_s)
    except OSError as e:
        raise PruneError(f"cannot reach the MQTT broker at {cfg.host}:{cfg.port}: {e}") from None
    client.loop_start()
    try:
        if not connected.wait(timeout) or refused:
            raise PruneError(f"MQTT broker {cfg.host}:{cfg.port} refused the connection: "
                             f"{refused[0] if refused else 'no CONNACK'}")
        sent: dict[int, tuple[Entity, str] | None] = {}
        for ent, topic in stale:  # not under `lock`: paho may be inside on_publish, waiting for it
            sent[client.publish(topic, "", qos=1, retain=True).mid] = (ent, topic)
            for t in removal_topics(topics, ent):
                sent[client.publish(t, "", qos=1, retain=True).mid] = None
        with lock:
            pending.update(sent)
            if set(pending) <= set(acks):
                done.set()
        end = time.monotonic() + timeout
        done.wait(max(0.0, end - time.monotonic()))
        ids = history.entity_ids()
        failed = []
        with lock:
            results = dict(acks)
        for mid, item in pending.items():
            if item is None:
                continue
            if results.get(mid) == "":
                ids.removed(item[0])
            else:
                failed.append(f"{item[1]} ({results.get(mid) or 'no PUBACK'})")
        if failed:
            raise PruneError("the broker did not accept the removal of: " + ", ".join(failed))
    finally:
        client.disconnect()
        client.loop_stop()
