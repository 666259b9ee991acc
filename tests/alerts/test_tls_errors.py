"""TLS failures against a real mosquitto TLS listener, certificates made here with the
``openssl`` command line: each failure is one clear log line naming the cause and the
settings, with backoff (issue 12 item 6)."""

from __future__ import annotations

import io
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from alerts.config import MqttConfig
from alerts.pipeline import AlertPipeline
from edge.metrics import Metrics
from tests.alerts.helpers import fast_config, log_events, wait_until
from tests.mqtt_broker import Mosquitto, Pki


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _key_and_csr(d: Path, name: str, cn: str) -> None:
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}", cwd=d)


def _sign(d: Path, name: str, ext: str) -> None:
    (d / f"{name}.ext").write_text(ext)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext", cwd=d)


def openssl_pki(d: Path, server_names: str = "DNS:localhost,IP:127.0.0.1") -> Pki:
    """A CA, a server certificate for ``server_names`` and a client certificate."""
    d.mkdir(parents=True)
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=openssl test CA",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    _key_and_csr(d, "server", "broker")
    _sign(d, "server", f"subjectAltName={server_names}\nextendedKeyUsage=serverAuth\n")
    _key_and_csr(d, "client", "flamingo-edge-client")
    _sign(d, "client", "extendedKeyUsage=clientAuth\n")
    return Pki(ca_cert=d / "ca.crt", ca_key=d / "ca.key", server_cert=d / "server.crt",
               server_key=d / "server.key", client_cert=d / "client.crt", client_key=d / "client.key")


@pytest.fixture(scope="module")
def pkis(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Pki]:
    root = tmp_path_factory.mktemp("openssl-pki")
    return {"good": openssl_pki(root / "good"), "other": openssl_pki(root / "other"),
            "wrong-name": openssl_pki(root / "wrong-name", "DNS:broker.invalid")}


def _failures(buf: io.StringIO, event: str = "mqtt connection failed") -> list[dict]:
    return [e for e in log_events(buf) if e["event"] == event]


def _pipeline(broker: Mosquitto, tmp_path: Path, **tls: str) -> AlertPipeline:
    cfg = fast_config(broker, tls={"enabled": True, **tls})
    cfg.mqtt.host = "localhost"  # the name in the good server certificate
    return AlertPipeline(cfg, Metrics(), "b", tmp_path).start()


def test_a_broker_that_wants_a_client_certificate_says_so(
    mosquitto: Callable[..., Mosquitto], tmp_path: Path, pkis: dict[str, Pki], log_capture: io.StringIO,
) -> None:
    """It used to log only "connection closed before CONNACK: The connection was lost"."""
    good = pkis["good"]
    broker = mosquitto(tls=good, require_client_cert=True)
    p = _pipeline(broker, tmp_path / "a", ca_file=str(good.ca_cert))
    try:
        assert wait_until(lambda: len(_failures(log_capture)) >= 3, 20)
        f = _failures(log_capture)
        assert {e["reason"] for e in f} == {"tls_client_cert"}
        err = f[0]["error"]
        assert "requires a client certificate" in err and "certificate required" in err
        assert "alerts.mqtt.tls.cert_file" in err and "alerts.mqtt.tls.key_file" in err
        assert f[2]["retry_in_s"] > f[0]["retry_in_s"]  # backs off
        assert p.mqtt is not None and p.mqtt.health()["last_error"] == err
    finally:
        p.stop(1)
    # the audio source says the same, once, naming its own settings
    from streams.mqtt import MqttAudioSource

    cfg = MqttConfig(host="localhost", port=broker.port, topic_prefix="fe",
                     tls={"enabled": True, "ca_file": str(good.ca_cert)},
                     backoff_initial_s=0.2, backoff_max_s=0.5)
    src = MqttAudioSource(["press"], cfg)
    stop = threading.Event()
    t = threading.Thread(target=src.run, args=(lambda f: None, stop))
    t.start()
    try:
        assert wait_until(lambda: _failures(log_capture, "audio MQTT connection failed"), 15)
        time.sleep(1.5)  # more attempts: no more lines
    finally:
        stop.set()
        t.join(10)
    (a,) = _failures(log_capture, "audio MQTT connection failed")
    assert a["level"] == "error" and a["error"] == "client certificate required"
    assert "mqtt (or alerts.mqtt).tls.cert_file" in a["hint"]
    # with the client certificate it connects
    p = _pipeline(broker, tmp_path / "b", ca_file=str(good.ca_cert), cert_file=str(good.client_cert),
                  key_file=str(good.client_key))
    try:
        assert wait_until(lambda: p.mqtt is not None and p.mqtt.connected, 15)
    finally:
        p.stop(2)


@pytest.mark.parametrize("case,expect", [
    ("untrusted CA", "self-signed certificate in certificate chain"),
    ("wrong host name", "Hostname mismatch"),
])
def test_untrusted_ca_and_wrong_host_name_stay_clear(
    mosquitto: Callable[..., Mosquitto], tmp_path: Path, pkis: dict[str, Pki], log_capture: io.StringIO,
    case: str, expect: str,
) -> None:
    server = pkis["wrong-name"] if case == "wrong host name" else pkis["good"]
    trusted = pkis["other"] if case == "untrusted CA" else server
    broker = mosquitto(tls=server)
    p = _pipeline(broker, tmp_path, ca_file=str(trusted.ca_cert))
    try:
        assert wait_until(lambda: len(_failures(log_capture)) >= 2, 20)
    finally:
        p.stop(1)
    f = _failures(log_capture)
    assert {e["reason"] for e in f} == {"tls_verify"}
    assert "TLS certificate verification failed" in f[0]["error"] and expect in f[0]["error"]
