"""The MQTT broker connection, shared by the alert sink (alerts/mqtt_sink.py, alerts/prune.py)
and the MQTT audio source (streams/mqtt.py): its settings (the ``alerts.mqtt`` section, also
used for audio) and the one paho client factory, with credentials and verified TLS.

paho is imported only when a client is made.
"""

from __future__ import annotations

import re
import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from .config_base import StrictModel as _Base, read_secret_file

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt

_TOPIC_BAD = re.compile(r"[+#\x00]")


class MqttTlsConfig(_Base):
    """TLS to the broker. The server certificate is always verified against `ca_file`
    (or the system store when `ca_file` is unset); there is deliberately no switch to
    turn verification off."""

    enabled: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None  # client certificate (mutual TLS)
    key_file: Path | None = None
    key_password: SecretStr | None = None
    key_password_file: Path | None = None

    @model_validator(mode="after")
    def _check(self) -> MqttTlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("tls.cert_file and tls.key_file must be given together")
        if self.key_password is None and self.key_password_file is not None:
            self.key_password = read_secret_file(self.key_password_file)
        return self


class MqttConfig(_Base):
    enabled: bool = True
    host: str = "localhost"
    port: int = Field(1883, ge=1, le=65535)
    client_id: str | None = None  # default: "flamingo-edge-<node_id>"
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    tls: MqttTlsConfig = Field(default_factory=MqttTlsConfig)
    # MQTT 5 is the default because only MQTT 5 PUBACK/SUBACK reason codes let the
    # daemon see that the broker's ACL refused a publish or subscription.
    protocol: Literal["5", "3.1.1"] = "5"
    keepalive_s: int = Field(30, ge=1, le=65535)
    connect_timeout_s: float = Field(5.0, gt=0)
    topic_prefix: str = "flamingo-edge"
    max_inflight: int = Field(20, ge=1, le=1000)
    backoff_initial_s: float = Field(1.0, gt=0)
    backoff_max_s: float = Field(60.0, gt=0)
    # a topic the broker refuses (MQTT 5 reason code >= 0x80, e.g. an ACL denial) is
    # retried with backoff at most this many times per alert, then given up (logged,
    # counted in fe_alerts_dropped{reason="refused"}); topics that acknowledged are never re-sent
    max_refusals: int = Field(10, ge=1, le=1000)
    live_queue_size: int = Field(1000, ge=10)
    level_min_interval_s: float = Field(1.0, ge=0)

    @field_validator("topic_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        v = v.strip("/")
        if not v or _TOPIC_BAD.search(v):
            raise ValueError("topic_prefix must be non-empty and must not contain + # or NUL")
        return v

    @model_validator(mode="after")
    def _check(self) -> MqttConfig:
        if self.password is None and self.password_file is not None:
            self.password = read_secret_file(self.password_file)
        if self.password is not None and not self.username:
            raise ValueError("mqtt.password needs mqtt.username")
        return self


def new_client(cfg: MqttConfig, client_id: str) -> mqtt.Client:
    """A paho client for `cfg`'s broker: protocol, credentials, verified TLS, connect timeout;
    not connected. Callers add their own limits and callbacks. Unreadable TLS files raise
    OSError / ssl.SSLError here."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    v5 = cfg.protocol == "5"
    c = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
        clean_session=None if v5 else True,
    )
    c.connect_timeout = cfg.connect_timeout_s
    if cfg.username:
        pw = cfg.password.get_secret_value() if cfg.password else None
        c.username_pw_set(cfg.username, pw)
    if cfg.tls.enabled:
        c.tls_set_context(tls_context(cfg.tls))
    return c


def tls_context(tls: MqttTlsConfig) -> ssl.SSLContext:
    """The broker is always verified (against `ca_file`, else the system store); a client
    certificate when configured. Unreadable files raise OSError / ssl.SSLError."""
    ctx = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
    if tls.cert_file:
        ctx.load_cert_chain(
            str(tls.cert_file), str(tls.key_file) if tls.key_file else None,
            password=tls.key_password.get_secret_value() if tls.key_password else None,
        )
    return ctx
