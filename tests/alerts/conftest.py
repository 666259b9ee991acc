"""Fixtures for the alert tests: real mosquitto brokers, a recording subscriber, results."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from edge.metrics import Metrics
from tests.alerts.helpers import Recorder
from tests.mqtt_broker import Mosquitto, Pki, make_pki

if TYPE_CHECKING:
    from tests.alerts.test_process import Child


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Callable[..., Mosquitto]]:
    """Factory: ``mosquitto(users=..., acl=..., tls=..., require_client_cert=...)`` -> running broker.

    Every broker started through the factory is stopped at teardown."""
    started: list[Mosquitto] = []

    def make(**kw: Any) -> Mosquitto:
        b = Mosquitto(tmp_path, **kw).start()
        started.append(b)
        return b

    yield make
    for b in started:
        b.stop()


@pytest.fixture
def broker(mosquitto: Callable[..., Mosquitto]) -> Mosquitto:
    """An anonymous broker."""
    return mosquitto()


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def other_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A second, unrelated CA: the 'wrong CA' for verification failures."""
    return make_pki(tmp_path_factory.mktemp("pki2"), ca_name="some other CA")


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def recorder_factory() -> Iterator[Callable[..., Recorder]]:
    made: list[Recorder] = []

    def make(broker: Mosquitto, topics: list[str] | None = None, **kw: Any) -> Recorder:
        r = Recorder(broker, topics or ["#"], **kw)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


@pytest.fixture
def children() -> Iterator[list[Child]]:
    """Child daemons (tests.alerts.test_process.Child) a test starts; killed if still running."""
    made: list[Child] = []
    yield made
    for c in made:
        if c.proc.poll() is None:
            c.proc.kill()
            c.proc.wait(10)
