"""The shipped unit file: systemd accepts it, and it keeps the properties the daemon relies on."""

from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "flamingo-edge.service"
ENV = UNIT.with_name("flamingo-edge.env.example")


def _directives() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "[")) and "=" in line:
            k, v = line.split("=", 1)
            out.setdefault(k, []).append(v)
    return out


def test_unit_properties() -> None:
    d = _directives()
    assert d["Type"] == ["notify"] and d["NotifyAccess"] == ["main"]
    assert int(d["WatchdogSec"][0]) > 0
    assert d["EnvironmentFile"] == ["-/etc/flamingo-edge/flamingo-edge.env"]
    assert d["KillSignal"] == ["SIGTERM"] and int(d["TimeoutStopSec"][0]) >= 10
    # hardening that would break the GPU or audio must stay off
    assert "PrivateDevices" not in d and "MemoryDenyWriteExecute" not in d
    allowed = " ".join(d["DeviceAllow"])
    for dev in ("char-nvidia-frontend", "/dev/nvidiactl", "/dev/nvidia-uvm", "char-alsa"):
        assert dev in allowed
    assert d["DevicePolicy"] == ["closed"] and d["NoNewPrivileges"] == ["yes"]
    assert d["ProtectSystem"] == ["strict"] and d["StateDirectory"] == ["flamingo-edge"]


def test_unit_starts_after_time_sync() -> None:
    """Alert times come from the system clock: an RTC-less board must not start in 1970."""
    d = _directives()
    assert "time-sync.target" in " ".join(d["After"]).split()
    assert "time-sync.target" in " ".join(d["Wants"]).split()


def test_env_example_is_a_valid_environment_file() -> None:
    for line in ENV.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            k, _, _ = line.partition("=")
            assert k.startswith("FLAMINGO_EDGE_") and k.isupper()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    # verify needs an existing executable; everything else is checked as shipped
    unit = tmp_path / "flamingo-edge.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/flamingo-edge", "/bin/true"))
    out = subprocess.run(["systemd-analyze", "verify", str(unit)], check=False, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "Unknown" not in out.stderr, out.stderr
    configparser.ConfigParser(strict=False, interpolation=None).read_string(UNIT.read_text())
