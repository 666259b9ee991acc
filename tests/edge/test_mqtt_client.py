"""edge/mqtt_client.py: the broker settings and the one paho client factory, against a real
mosquitto started here on its own port (password and TLS listeners)."""

from __future__ import annotations

import threading

import paho.mqtt.client as mqtt
import pytest
from pydantic import ValidationError

from edge.mqtt_client import MqttConfig, new_client
from tests.mqtt_broker import Mosquitto, make_pki


def connect(c: mqtt.Client, host: str, port: int, timeout: float = 10.0) -> str:
    """Connect, wait for CONNACK (or the connection's end) -> the reason code's name."""
    got: list[str] = []
    done = threading.Event()

    def on_connect(_c, _u, _f, rc, _p):
        got.append(str(rc))
        done.set()

    def on_disconnect(_c, _u, _f, rc, _p):
        got.append(f"disconnected: {rc}")
        done.set()

    c.on_connect, c.on_disconnect = on_connect, on_disconnect
    c.connect(host, port)
    c.loop_start()
    try:
        assert done.wait(timeout), "no CONNACK"
        return got[0]
    finally:
        c.disconnect()
        c.loop_stop()


def roundtrip(c: mqtt.Client, host: str, port: int) -> bytes:
    """Subscribe and publish on one topic through the broker -> the payload that came back."""
    got: list[bytes] = []
    came = threading.Event()
    subscribed = threading.Event()
    c.on_subscribe = lambda *_a: subscribed.set()
    c.on_message = lambda _c, _u, m: (got.append(m.payload), came.set())
    c.on_connect = lambda cl, *_a: cl.subscribe("t/x", qos=1)
    c.connect(host, port)
    c.loop_start()
    try:
        assert subscribed.wait(10), "no SUBACK"
        c.publish("t/x", b"hello", qos=1)
        assert came.wait(10), "the message did not come back"
        return got[0]
    finally:
        c.disconnect()
        c.loop_stop()


def test_settings_refuse_what_no_broker_accepts():
    with pytest.raises(ValidationError, match="mqtt.password needs mqtt.username"):
        MqttConfig(password="x")
    with pytest.raises(ValidationError, match="must not contain"):
        MqttConfig(topic_prefix="home/#")
    assert MqttConfig(topic_prefix="/home/edge/").topic_prefix == "home/edge"
    with pytest.raises(ValidationError, match="cert_file and tls.key_file must be given together"):
        MqttConfig(tls={"enabled": True, "cert_file": "c.crt"})


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_the_client_logs_in_with_the_configured_credentials_and_protocol(tmp_path, protocol):
    with Mosquitto(tmp_path, users={"alice": "pw-1"}) as b:
        cfg = MqttConfig(host=b.host, port=b.port, username="alice", password="pw-1", protocol=protocol)
        c = new_client(cfg, "test-login")
        assert c.protocol == (mqtt.MQTTv5 if protocol == "5" else mqtt.MQTTv311)
        assert roundtrip(c, b.host, b.port) == b"hello"
        assert "test-login" in b.log()  # the client id the caller chose
        wrong = MqttConfig(host=b.host, port=b.port, username="alice", password="nope", protocol=protocol)
        assert connect(new_client(wrong, "test-wrong"), b.host, b.port) in (
            "Bad user name or password", "Not authorized")


def test_tls_verifies_the_broker_against_ca_file_and_sends_the_client_certificate(tmp_path):
    pki = make_pki(tmp_path / "pki")
    with Mosquitto(tmp_path, tls=pki, require_client_cert=True) as b:
        tls = {"enabled": True, "ca_file": str(pki.ca_cert), "cert_file": str(pki.client_cert),
               "key_file": str(pki.client_key)}
        c = new_client(MqttConfig(host="localhost", port=b.port, tls=tls), "test-tls")
        assert roundtrip(c, "localhost", b.port) == b"hello"
        # verification cannot be switched off: the system store does not know the test CA
        plain = new_client(MqttConfig(host="localhost", port=b.port, tls={"enabled": True}), "test-untrusted")
        with pytest.raises(OSError, match="CERTIFICATE_VERIFY_FAILED"):
            plain.connect("localhost", b.port)


def test_unreadable_tls_files_fail_when_the_client_is_made(tmp_path):
    cfg = MqttConfig(tls={"enabled": True, "ca_file": str(tmp_path / "missing-ca.crt")})
    with pytest.raises(OSError):
        new_client(cfg, "test-missing")
