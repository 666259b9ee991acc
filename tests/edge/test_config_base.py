"""edge/config_base.py: what every settings model shares: a misspelt key is an error, and a
secret can come from a file (systemd credentials, Docker secrets)."""

from __future__ import annotations

import pytest
from pydantic import SecretStr, ValidationError

from edge.config import ConfigError, load_settings
from edge.config_base import StrictModel, read_secret_file
from edge.mqtt_client import MqttConfig


class Inner(StrictModel):
    port: int = 1883


class Outer(StrictModel):
    name: str = "x"
    inner: Inner = Inner()


def test_an_unknown_key_is_an_error_at_any_depth_naming_where_it_is():
    with pytest.raises(ValidationError) as e:
        Outer(nmae="y")
    assert e.value.errors()[0]["type"] == "extra_forbidden" and e.value.errors()[0]["loc"] == ("nmae",)
    with pytest.raises(ValidationError) as e:
        Outer(inner={"prot": 1})
    assert e.value.errors()[0]["loc"] == ("inner", "prot")
    assert Outer(inner={"port": 8883}).inner.port == 8883


def test_a_misspelt_key_in_the_settings_gets_a_suggestion():
    with pytest.raises(ConfigError, match=r"did you mean `host`\?"):
        load_settings(data={"alerts": {"mqtt": {"hots": "broker.lan"}}})


def test_a_secret_file_is_read_stripped_and_stays_secret(tmp_path):
    f = tmp_path / "pw"
    f.write_text("s3cret-value\n")
    got = read_secret_file(f)
    assert isinstance(got, SecretStr) and got.get_secret_value() == "s3cret-value"
    assert "s3cret" not in repr(got) and read_secret_file(None) is None
    cfg = MqttConfig(username="alice", password_file=f)  # how the settings use it
    assert cfg.password is not None and cfg.password.get_secret_value() == "s3cret-value"


def test_an_unreadable_secret_file_is_a_value_error_naming_the_file(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(ValueError) as e:
        read_secret_file(missing)
    assert str(e.value) == f"cannot read secret file {missing} (No such file or directory)"
    with pytest.raises(ConfigError, match="cannot read secret file"):  # a config error, not a crash
        load_settings(data={"alerts": {"mqtt": {"username": "a", "password_file": str(missing)}}})
