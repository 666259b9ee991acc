"""What every settings model shares (edge/config.py, alerts/config.py, edge/mqtt_client.py):
unknown keys are errors, and a secret can be read from a file."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, SecretStr


class StrictModel(BaseModel):
    """A settings section: a misspelt key is an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


def read_secret_file(path: Path | None) -> SecretStr | None:
    """The stripped text of a secret file (systemd credentials, Docker secrets); None for None."""
    if path is None:
        return None
    try:
        return SecretStr(Path(path).read_text(encoding="utf-8").strip())
    except OSError as e:  # a ValueError, so that it becomes a config error naming the key
        raise ValueError(f"cannot read secret file {path} ({e.strerror or type(e).__name__})") from None
