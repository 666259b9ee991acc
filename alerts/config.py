"""Settings of the alert stage: rules, MQTT, Home Assistant, outbox, history, clips, webhook.

`AlertsConfig` is a plain pydantic `BaseModel` with defaults that work out of the box
(MQTT to ``localhost:1883``, Home Assistant discovery on, webhook off), so the daemon's
settings class can embed it as a field and an empty ``alerts:`` section is valid.

Secrets (`MqttConfig.password`, `MqttTlsConfig.key_password` in edge/mqtt_client.py, `WebhookConfig.secret`)
are `SecretStr`: their repr is ``'**********'`` and they are only unwrapped at the point
of use. Each secret can also be read from a file (``*_file``), which suits systemd
credentials and Docker secrets better than environment variables.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path

from pydantic import Field, SecretStr, field_validator, model_validator

from edge.config_base import StrictModel as _Base, read_secret_file
from edge.mqtt_client import MqttConfig  # the broker (`alerts.mqtt`), shared with the audio source


def default_node_id() -> str:
    """A stable id for this host, used in Home Assistant unique ids and the MQTT client id."""
    return re.sub(r"[^a-zA-Z0-9_-]", "_", socket.gethostname() or "flamingo-edge")


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
            self.secret = read_secret_file(self.secret_file)
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
