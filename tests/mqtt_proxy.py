"""A TCP proxy between an MQTT client and a real broker that can cut the network at an
exact MQTT packet, for outage tests that must not depend on timing.

It forwards bytes both ways and splits them into MQTT packets (fixed header + remaining
length), so it can count PUBLISHes and PUBACKs::

    proxy = MqttProxy(broker.host, broker.port).start()
    proxy.blackhole_after(3, topic_filter="fe-test/#/event")  # see below
    ...client connects to proxy.port...
    assert proxy.acked.wait(10)

`blackhole_after(n, match)`: forward client -> broker PUBLISH packets whose topic
``match``es until ``n`` have been forwarded, then silently drop everything the client
sends (the broker keeps the connection, as with a dead uplink), while broker -> client
traffic still flows; ``acked`` is set once the broker's PUBACKs for those ``n`` have
been forwarded to the client. `passthrough()` closes every proxied connection and
forwards new ones untouched.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable

from tests.mqtt_broker import free_port

PUBLISH, PUBACK = 3, 4


def _split(buf: bytearray) -> list[bytes]:
    """Complete MQTT packets at the head of ``buf`` (removed from it)."""
    out = []
    while len(buf) >= 2:
        length, mult, i = 0, 1, 1
        while True:
            if i >= len(buf):
                return out
            b = buf[i]
            length += (b & 0x7F) * mult
            mult *= 128
            i += 1
            if not b & 0x80:
                break
        if len(buf) < i + length:
            return out
        out.append(bytes(buf[: i + length]))
        del buf[: i + length]
    return out


def _body(pkt: bytes) -> bytes:
    i = 1
    while pkt[i] & 0x80:
        i += 1
    return pkt[i + 1:]


def publish_info(pkt: bytes) -> tuple[str, int | None]:
    """(topic, packet id or None for QoS 0) of a PUBLISH packet."""
    body = _body(pkt)
    n = int.from_bytes(body[:2], "big")
    topic = body[2:2 + n].decode()
    qos = (pkt[0] >> 1) & 3
    return topic, (int.from_bytes(body[2 + n:4 + n], "big") if qos else None)


class MqttProxy:
    def __init__(self, broker_host: str, broker_port: int) -> None:
        self.broker = (broker_host, broker_port)
        self.host = "127.0.0.1"
        self.port = free_port()
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._conns: list[tuple[socket.socket, socket.socket]] = []
        self._limit: int | None = None
        self._match: Callable[[str], bool] = lambda _t: True
        self._count = 0
        self._forwarded: set[int] = set()  # packet ids forwarded, PUBACK not yet passed back
        self._holes = False
        self.acked = threading.Event()
        self.published_topics: list[str] = []

    def start(self) -> MqttProxy:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((self.host, self.port))
        self._sock.listen(8)
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def blackhole_after(self, n: int, match: Callable[[str], bool]) -> None:
        with self._lock:
            self._limit, self._match = n, match
            self._forwarded, self._holes, self._count = set(), False, 0
            self.acked.clear()

    def passthrough(self) -> None:
        with self._lock:
            self._limit, self._holes = None, False
            conns, self._conns = self._conns, []
        for a, b in conns:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def stop(self) -> None:
        self.passthrough()
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    # ------------------------------------------------------------------ pumps
    def _accept(self) -> None:
        while self._sock is not None:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.broker, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns.append((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, from_client: bool) -> None:
        buf = bytearray()
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                buf += data
                for pkt in _split(buf):
                    if self._pass(pkt, from_client):
                        dst.sendall(pkt)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _pass(self, pkt: bytes, from_client: bool) -> bool:
        kind = pkt[0] >> 4
        with self._lock:
            if from_client:
                if self._holes:
                    return False
                if kind == PUBLISH:
                    topic, pid = publish_info(pkt)
                    self.published_topics.append(topic)
                    if self._limit is not None and self._match(topic):
                        self._forwarded.add(pid if pid is not None else -1)
                        self._count += 1
                        if self._count >= self._limit:
                            self._holes = True
                return True
            if kind == PUBACK and self._limit is not None:
                pid = int.from_bytes(_body(pkt)[:2], "big")
                if pid in self._forwarded:
                    self._forwarded.discard(pid)
                    if self._holes and not self._forwarded:
                        self.acked.set()
            return True
