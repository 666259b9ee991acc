"""Why did a TLS connection to the broker end before CONNACK?

With TLS 1.3 a broker that requires a client certificate (mosquitto ``require_certificate
true``) finishes the handshake first and only then sends the alert ``certificate required``;
paho reports that as "The connection was lost", which names neither the cause nor the fix.
`diagnose_tls_close` repeats the handshake on a plain socket and reads the broker's answer,
so the caller can say what happened and which settings fix it. Used by the alert sink and
the MQTT audio source; costs one TLS handshake, only after a failed connection.
"""

from __future__ import annotations

import socket
import ssl

from .mqtt_client import MqttTlsConfig, tls_context

CLIENT_CERT_REQUIRED = "client_cert_required"


def client_cert_hint(settings: str) -> str:
    return (f"the broker closed the TLS session because it requires a client certificate (TLS "
            f"alert 'certificate required'); set {settings}.tls.cert_file and "
            f"{settings}.tls.key_file (and key_password if the key is encrypted)")


def is_client_cert_alert(text: str) -> bool:
    t = text.lower().replace("_", " ")
    return "certificate required" in t or "peer did not return a certificate" in t


def diagnose_tls_close(host: str, port: int, tls: MqttTlsConfig, timeout: float = 3.0) -> str | None:
    """`CLIENT_CERT_REQUIRED` when the broker ends the session for lack of a client
    certificate, else the TLS error (a failed verification of the broker's certificate, an
    alert the broker sent), or None when nothing TLS-specific shows."""
    try:
        ctx = tls_context(tls)
        with socket.create_connection((host, port), timeout=timeout) as raw:
            with ctx.wrap_socket(raw, server_hostname=host) as s:
                # TLS 1.3: the broker checks the client certificate after the handshake and
                # sends its alert at once; one that accepts waits for CONNECT (a timeout here)
                s.settimeout(min(timeout, 1.5))
                s.recv(4)
    except ssl.SSLCertVerificationError as e:
        return f"TLS certificate verification failed: {e.verify_message}"
    except ssl.SSLError as e:
        text = f"{e.reason or ''} {e}"
        return CLIENT_CERT_REQUIRED if is_client_cert_alert(text) else str(e.reason or e)
    except (OSError, ValueError):  # incl. the timeout of a broker that accepted
        return None
    return None
