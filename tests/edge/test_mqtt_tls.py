"""edge/mqtt_tls.py: why a TLS session to the broker ended, asked of a real mosquitto TLS
listener started here (certificates from tests/mqtt_broker.make_pki)."""

from __future__ import annotations

import pytest

from edge.mqtt_client import MqttTlsConfig
from edge.mqtt_tls import CLIENT_CERT_REQUIRED, client_cert_hint, diagnose_tls_close, is_client_cert_alert
from tests.mqtt_broker import Mosquitto, free_port, make_pki


@pytest.fixture(scope="module")
def pkis(tmp_path_factory):
    root = tmp_path_factory.mktemp("pki")
    return make_pki(root / "ours"), make_pki(root / "other", ca_name="some other CA")


@pytest.fixture(scope="module")
def broker(tmp_path_factory, pkis):
    with Mosquitto(tmp_path_factory.mktemp("broker"), tls=pkis[0], require_client_cert=True) as b:
        yield b


def test_a_broker_that_requires_a_client_certificate_is_named_as_such(broker, pkis):
    tls = MqttTlsConfig(enabled=True, ca_file=pkis[0].ca_cert)
    assert diagnose_tls_close("localhost", broker.port, tls) == CLIENT_CERT_REQUIRED


def test_with_the_client_certificate_nothing_tls_specific_is_wrong(broker, pkis):
    ours = pkis[0]
    tls = MqttTlsConfig(enabled=True, ca_file=ours.ca_cert, cert_file=ours.client_cert, key_file=ours.client_key)
    assert diagnose_tls_close("localhost", broker.port, tls) is None


def test_a_broker_certificate_from_another_ca_is_a_verification_failure(broker, pkis):
    tls = MqttTlsConfig(enabled=True, ca_file=pkis[1].ca_cert)
    got = diagnose_tls_close("localhost", broker.port, tls)
    assert got is not None and got.startswith("TLS certificate verification failed: ")
    assert "self-signed certificate in certificate chain" in got or "unable to get local issuer" in got


def test_nobody_listening_is_not_a_tls_diagnosis(pkis):
    tls = MqttTlsConfig(enabled=True, ca_file=pkis[0].ca_cert)
    assert diagnose_tls_close("127.0.0.1", free_port(), tls, timeout=1.0) is None


def test_the_hint_names_the_settings_to_set_and_alerts_are_recognised():
    hint = client_cert_hint("alerts.mqtt")
    assert "alerts.mqtt.tls.cert_file" in hint and "alerts.mqtt.tls.key_file" in hint
    assert is_client_cert_alert("[SSL: TLSV13_ALERT_CERTIFICATE_REQUIRED] tlsv13 alert certificate required")
    assert is_client_cert_alert("peer did not return a certificate")
    assert not is_client_cert_alert("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")
