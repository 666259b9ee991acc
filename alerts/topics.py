"""MQTT topic names (documented in ``docs/MQTT.md``).

Stream and monitor names are used verbatim as topic levels, except that ``/``, ``+``,
``#`` and NUL are replaced by ``_`` so one name is always exactly one topic level.
"""

from __future__ import annotations

import re

_LEVEL_BAD = re.compile(r"[/+#\x00]")


def topic_level(name: str) -> str:
    return _LEVEL_BAD.sub("_", name) or "_"


class Topics:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix.strip("/")
        self.status = f"{self.prefix}/status"  # retained "online" / "offline" (Last Will)
        self.info = f"{self.prefix}/info"  # retained JSON: boot_id, version, started_at
        self.events = f"{self.prefix}/events"  # alert JSON, QoS 1, not retained

    def state(self, stream: str, monitor: str) -> str:
        return f"{self.prefix}/{topic_level(stream)}/{topic_level(monitor)}/state"

    def answer(self, stream: str, monitor: str) -> str:
        return f"{self.prefix}/{topic_level(stream)}/{topic_level(monitor)}/answer"

    def score(self, stream: str, monitor: str) -> str:
        """A scored monitor's latest score in percent (retained; the HA score sensor)."""
        return f"{self.prefix}/{topic_level(stream)}/{topic_level(monitor)}/score"

    def level(self, stream: str) -> str:
        return f"{self.prefix}/{topic_level(stream)}/level"

    def stream_event(self, stream: str) -> str:
        return f"{self.prefix}/{topic_level(stream)}/event"

    def availability(self, stream: str) -> str:
        """Retained ``online`` / ``offline``: whether the stream's input is heard (edge/health.py)."""
        return f"{self.prefix}/{topic_level(stream)}/availability"

    def health(self, stream: str) -> str:
        """Retained JSON: the stream's input state, last-frame age, silent_after."""
        return f"{self.prefix}/{topic_level(stream)}/health"
