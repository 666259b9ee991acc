"""Fixtures shared by every test folder: the official af2-tiny fixture and the model on it."""

from __future__ import annotations

import io
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

# the web page is on by default (http.enabled): daemons started by tests bind a free port, never
# the default 9108 that another test run (or a real daemon) on this machine may hold
os.environ.setdefault("FLAMINGO_EDGE_HTTP__PORT", "0")
# the suite runs in pytest-xdist workers (pyproject addopts: one per core, at most 4): each worker
# keeps PyTorch (and the processes it starts) to one thread, so workers share the cores instead
# of fighting over them; set before any test module imports torch
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

FIXTURES = Path(__file__).resolve().parent / "fixtures"
FIXTURE = FIXTURES / "af2-tiny"


@pytest.fixture(scope="session")
def fixture_dir() -> Path:
    if not FIXTURE.is_dir():
        pytest.fail(f"AF2 fixture not found at {FIXTURE} (it is part of the checkout)")
    return FIXTURE


@pytest.fixture(scope="session")
def af2_layout() -> dict:
    """Every key and shape of the released 0.5B/1.5B/3B safe_ckpt (see docs/AF2_REFERENCE.md)."""
    return json.loads((FIXTURES / "af2_layout.json").read_text())


@pytest.fixture(scope="session")
def expected(fixture_dir):
    from safetensors.torch import load_file

    return load_file(str(fixture_dir / "expected.safetensors"))


@pytest.fixture(scope="session")
def fixture_info(fixture_dir) -> dict:
    return json.loads((fixture_dir / "fixture.json").read_text())


@pytest.fixture(scope="session")
def af2(fixture_dir):
    """The fixture checkpoint loaded in float32 on the CPU (shared: treat as read-only)."""
    import torch

    from edge.model import AF2

    return AF2.load(fixture_dir / "checkpoint", dtype=torch.float32, device="cpu")


@pytest.fixture(scope="session", autouse=True)
def _structlog_through_stdlib() -> None:
    """The daemon logs through structlog into the standard library, as in production, so
    pytest's ``caplog`` sees every line whatever ran before; a record's ``msg`` is then the
    event dict (`log_events`)."""
    from edge.log import configure_logging

    configure_logging("INFO", fmt="json")


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """``flamingo-edge ARGS`` in this process (click's runner), as a CompletedProcess: the
    same command code as ``python -m edge``, without a second interpreter importing torch
    (~3 s a call). An exception the command did not turn into a message lands in ``stderr``
    as the traceback a real process would print, so "no Traceback" checks keep their teeth."""
    import traceback

    from click.testing import CliRunner

    from edge.cli import cli

    res = CliRunner().invoke(cli, list(args))
    err = res.stderr
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        err += "".join(traceback.format_exception(res.exception))
    return subprocess.CompletedProcess(["flamingo-edge", *args], res.exit_code, res.stdout, err)


def log_events(records: list, event: str | None = None) -> list[dict]:
    """The structlog event dicts among ``caplog.records`` (with ``event``, if given)."""
    out = [r.msg for r in records if isinstance(r.msg, dict)]
    return [e for e in out if event is None or e.get("event") == event]


@pytest.fixture
def log_capture() -> Iterator[io.StringIO]:
    """Every log line (structlog and stdlib) rendered as JSON into a buffer."""
    from edge.log import clear_secrets, configure_logging

    buf = io.StringIO()
    configure_logging("DEBUG", fmt="json", stream=buf)
    yield buf
    clear_secrets()
