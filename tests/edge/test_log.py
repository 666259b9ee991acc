"""structlog output formats and redaction of credentials, including config errors."""

from __future__ import annotations

import io
import json
import logging

import pytest
import structlog
from pydantic import ValidationError

from alerts.config import AlertsConfig
from edge.log import (
    MASK, clear_secrets, configure_logging, format_validation_error, redact_text, register_secret,
)
from tests.alerts.helpers import log_events

SECRET = "hunter2-Very-Secret"


@pytest.fixture(autouse=True)
def _clean() -> None:
    clear_secrets()
    yield
    clear_secrets()


def test_json_lines_with_level_time_and_logger(log_capture: io.StringIO) -> None:
    structlog.get_logger("alerts.test").info("hello", stream="s1", n=3)
    logging.getLogger("paho.fake").warning("from stdlib %s", "x")
    ev = log_events(log_capture)
    a = next(e for e in ev if e["event"] == "hello")
    assert a["level"] == "info" and a["stream"] == "s1" and a["n"] == 3 and a["logger"] == "alerts.test"
    assert a["timestamp"].endswith("Z")
    b = next(e for e in ev if e["event"] == "from stdlib x")
    assert b["level"] == "warning" and b["logger"] == "paho.fake"


def test_console_renderer_when_asked() -> None:
    buf = io.StringIO()
    configure_logging("INFO", fmt="console", stream=buf)
    structlog.get_logger("x").info("readable", k="v")
    line = buf.getvalue()
    assert "readable" in line and "k=v" in line
    with pytest.raises(json.JSONDecodeError):
        json.loads(line)


def test_auto_picks_json_for_non_tty() -> None:
    buf = io.StringIO()
    configure_logging("INFO", fmt="auto", stream=buf)
    structlog.get_logger("x").info("auto")
    assert json.loads(buf.getvalue())["event"] == "auto"


@pytest.mark.parametrize("text", [
    f"password={SECRET}",
    f"connecting with {{'username': 'u', 'password': '{SECRET}'}}",
    f'{{"api_key": "{SECRET}"}}',
    f"url mqtts://user:{SECRET}@broker:8883/x",
    f"Authorization: Bearer {SECRET}",
    f"token: {SECRET}",
    f"webhook secret='{SECRET}'",
])
def test_redact_text_patterns(text: str) -> None:
    out = redact_text(text)
    assert SECRET not in out and MASK in out


def test_sensitive_keys_and_registered_secrets_in_every_line(log_capture: io.StringIO) -> None:
    register_secret(SECRET)
    log = structlog.get_logger("t")
    log.info("cfg", password=SECRET, nested={"mqtt": {"token": "abc123xyz"}}, auth_header="Basic Zm9vOmJhcg==")
    log.info(f"free text mentions {SECRET} somewhere")
    logging.getLogger("lib").error("lib says %s", SECRET)
    try:
        raise RuntimeError(f"failed with {SECRET}")
    except RuntimeError:
        log.exception("boom")
    out = log_capture.getvalue()
    assert SECRET not in out and "abc123xyz" not in out and "Zm9vOmJhcg==" not in out
    ev = log_events(log_capture)
    assert ev[0]["password"] == MASK and ev[0]["nested"]["mqtt"]["token"] == MASK
    assert "RuntimeError" in ev[-1]["exception"]  # the traceback is kept, only masked


def test_pydantic_validation_errors_never_show_secrets(log_capture: io.StringIO) -> None:
    bad = {"mqtt": {"password": SECRET, "port": "not-a-port"}}  # password without username
    with pytest.raises(ValidationError) as ei:
        AlertsConfig.model_validate(bad)
    safe = format_validation_error(ei.value)
    assert SECRET not in safe and "mqtt.port" in safe
    # even logging the raw exception (str + traceback) is masked by the processor
    with pytest.raises(ValidationError) as ei2:
        AlertsConfig.model_validate({"mqtt": {"username": "u", "password": SECRET, "keepalive_s": -1}})
    structlog.get_logger("cfg").error("config invalid", error=ei2.value, text=str(ei2.value))
    try:
        AlertsConfig.model_validate({"webhook": {"enabled": True, "secret": SECRET}})
    except ValidationError:
        structlog.get_logger("cfg").exception("config invalid")
    assert SECRET not in log_capture.getvalue()
    assert "config invalid" in log_capture.getvalue()


def test_secret_str_in_config_repr() -> None:
    cfg = AlertsConfig.model_validate({"mqtt": {"username": "u", "password": SECRET},
                                       "webhook": {"secret": SECRET}})
    assert SECRET not in repr(cfg) and SECRET not in str(cfg.model_dump())
    assert cfg.secrets() == [SECRET, SECRET]


def test_secret_files(tmp_path) -> None:
    (tmp_path / "pw").write_text(SECRET + "\n")
    cfg = AlertsConfig.model_validate({"mqtt": {"username": "u", "password_file": str(tmp_path / "pw")}})
    assert cfg.mqtt.password.get_secret_value() == SECRET  # type: ignore[union-attr]


def test_numbers_and_token_ids_are_not_over_redacted(log_capture: io.StringIO) -> None:
    structlog.get_logger("q").info("query done", tokens_per_second=41.5, token_ids=[1, 2, 3], max_new_tokens=64,
                                   auth_token="tok-Secret-99", password=987654)
    structlog.get_logger("q").info("decode tokens_per_second=41.5 n_tokens: 12 api_token=tok-Secret-99")
    ev = log_events(log_capture)
    assert ev[0]["tokens_per_second"] == 41.5 and ev[0]["token_ids"] == [1, 2, 3] and ev[0]["max_new_tokens"] == 64
    assert ev[0]["auth_token"] == MASK and ev[0]["password"] == MASK
    assert "tokens_per_second=41.5" in ev[1]["event"] and "n_tokens: 12" in ev[1]["event"]
    assert "tok-Secret-99" not in log_capture.getvalue()


@pytest.mark.parametrize("text", [
    "password=98765432", "FLAMINGO_EDGE_ALERTS__MQTT__PASSWORD=20240101", "webhook secret: 424242",
    "key_passphrase=1234.5678",
])
def test_numeric_passwords_in_text_are_masked(text: str) -> None:
    """A PIN-like password is still a password: only token/auth-like keys keep numbers."""
    out = redact_text(text)
    assert not any(ch.isdigit() for ch in out.split("=")[-1].split(":")[-1]), out
    assert MASK in out


def test_unreadable_secret_file_is_a_config_error(tmp_path) -> None:
    with pytest.raises(ValidationError) as ei:
        AlertsConfig.model_validate({"mqtt": {"username": "u", "password_file": str(tmp_path / "missing")}})
    assert "mqtt" in format_validation_error(ei.value) and "cannot read" in format_validation_error(ei.value)
