"""Settings of the alert stage: rules, MQTT, Home Assistant, outbox, history, clips, webhook.

`AlertsConfig` is a plain pydantic `BaseModel` with defaults that work out of the box
(MQTT to ``localhost:1883``, Home Assistant discovery on, webhook off), so the daemon's
settings class can embed it as a field and an empty ``alerts:`` section is valid.

Secrets (`MqttConfig.password`, `MqttTlsConfig.key_password`, `WebhookConfig.secret`)
are `SecretStr`: their repr is ``'**********'`` and they are only unwrapped at the point
of use. Each secret can also be read from a file (``*_file``), which suits systemd
credentials and Docker secrets better than environment variables.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

_TOPIC_BAD = re.compile(r"[+#\x00]")


def default_node_id() -> str:
    """A stable id for this host, used in Home Assistant unique ids and the MQTT client id."""
    return re.sub(r"[^a-zA-Z0-9_-]", "_", socket.gethostname() or "flamingo-edge")


def _read_secret_file(path: Path | None) -> SecretStr | None:
    if path is None:
        return None
    try:
        return SecretStr(Path(path).read_text(encoding="utf-8").strip())
    except OSError as e:  # a ValueError, so that it becomes a config error naming the key
        raise ValueError(f"cannot read secret file {path} ({e.strerror or type(e).__name__})") from None


class _Base(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RuleConfig(_Base):
    """Hysteresis of one (stream, monitor) pair.

    The state goes ON at the first positive result. It goes OFF after
    `off_after_negatives` consecutive negative results, or when no positive result
    has been seen for `max_not_heard_s` seconds. An alert event is raised on each
    OFF->ON transition unless the previous alert of the same pair was raised less than
    `cooldown_s` ago, or carried the same (normalised) answer less than
    `dedupe_window_s` ago.
    """

    off_after_negatives: int = Field(3, ge=1)
    max_not_heard_s: float = Field(300.0, gt=0)
    cooldown_s: float = Field(60.0, ge=0)
    dedupe_window_s: float = Field(600.0, ge=0)


class RuleOverride(_Base):
    """Per-monitor override of `RuleConfig`; unset fields inherit the defaults."""

    off_after_negatives: int | None = Field(None, ge=1)
    max_not_heard_s: float | None = Field(None, gt=0)
    cooldown_s: float | None = Field(None, ge=0)
    dedupe_window_s: float | None = Field(None, ge=0)


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
            self.key_password = _read_secret_file(self.key_password_file)
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
            self.password = _read_secret_file(self.password_file)
        if self.password is not None and not self.username:
            raise ValueError("mqtt.password needs mqtt.username")
        return self


class HomeAssistantConfig(_Base):
    enabled: bool = True
    discovery_prefix: str = "homeassistant"
    retain: bool = True  # retained discovery survives a Home Assistant restart on its own


class OutboxConfig(_Base):
    """Store-and-forward bounds. Undelivered alerts older than `max_age_s`, or beyond the
    newest `max_rows` of one sink (each sink keeps its own backlog of up to `max_rows`),
    are dropped (counted in ``fe_alerts_dropped`` and logged)."""

    max_age_s: float = Field(7 * 24 * 3600.0, gt=0)
    max_rows: int = Field(10_000, ge=1)


class HistoryConfig(_Base):
    enabled: bool = True
    retention_s: float = Field(30 * 24 * 3600.0, gt=0)
    record_results: bool = True  # every monitor result, not only alerts


class ClipsConfig(_Base):
    enabled: bool = True
    max_bytes: int = Field(1 << 30, ge=1)  # FLAC + PNG files together
    spectrogram: bool = True
    n_fft: int = Field(512, ge=64, le=8192)
    max_width: int = Field(1200, ge=16)  # spectrogram PNG width cap in pixels


class WebhookConfig(_Base):
    enabled: bool = False
    url: str | None = None
    secret: SecretStr | None = None  # HMAC-SHA256 key; unsigned requests if unset
    secret_file: Path | None = None
    timeout_s: float = Field(10.0, gt=0)
    backoff_initial_s: float = Field(1.0, gt=0)
    backoff_max_s: float = Field(300.0, gt=0)

    @model_validator(mode="after")
    def _check(self) -> WebhookConfig:
        if self.secret is None and self.secret_file is not None:
            self.secret = _read_secret_file(self.secret_file)
        if self.enabled and not self.url:
            raise ValueError("webhook.url is required when the webhook is enabled")
        if self.url and not re.match(r"^https?://", self.url):
            raise ValueError("webhook.url must be http:// or https://")
        return self


class AlertsConfig(_Base):
    """Everything the alert stage needs. Embed as ``alerts: AlertsConfig`` in the daemon config."""

    enabled: bool = True
    node_id: str = Field(default_factory=default_node_id)
    queue_size: int = Field(64, ge=1)  # results waiting for the alert worker
    rules: RuleConfig = Field(default_factory=RuleConfig)
    monitor_rules: dict[str, RuleOverride] = Field(default_factory=dict)  # key: monitor name
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    homeassistant: HomeAssistantConfig = Field(default_factory=HomeAssistantConfig)
    outbox: OutboxConfig = Field(default_factory=OutboxConfig)
    history: HistoryConfig = Field(default_factory=HistoryConfig)
    clips: ClipsConfig = Field(default_factory=ClipsConfig)
    webhook: WebhookConfig = Field(default_factory=WebhookConfig)

    @field_validator("node_id")
    @classmethod
    def _node(cls, v: str) -> str:
        if not re.fullmatch(r"[a-zA-Z0-9_-]+", v):
            raise ValueError("node_id may only contain letters, digits, '_' and '-'")
        return v

    def rule_for(self, monitor: str) -> RuleConfig:
        o = self.monitor_rules.get(monitor)
        if o is None:
            return self.rules
        return self.rules.model_copy(update=o.model_dump(exclude_none=True))

    def secrets(self) -> list[str]:
        """The secret values in this config, for the log redactor (see `edge.log`)."""
        out = []
        for s in (self.mqtt.password, self.mqtt.tls.key_password, self.webhook.secret):
            if s is not None and s.get_secret_value():
                out.append(s.get_secret_value())
        return out
