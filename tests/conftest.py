"""Fixtures shared by every test: real brokers, real files, no mocks."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from scanfleet.drivers import registry, virtual
from support.broker import MOSQUITTO_DIRS, Mosquitto
from support.pki import Fleet, FleetBroker, TLSClient, make_fleet
from support.prereq import require_executable

# What the CLI does at start: [[devices]] entries validate against the drivers' models.
registry.complete_config()


@pytest.fixture(autouse=True)
def _root_logging_restored() -> Iterator[None]:
    """Undo what an in-process ``scanfleet`` command did to the root logger.

    ``setup_logging`` points the root logger at the sys.stderr of that moment (pytest's
    capture of one test); threads of later tests would log into the closed capture.
    """
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def mosquitto_factory(tmp_path: Path) -> Iterator[Callable[..., Mosquitto]]:
    """Make and start real mosquitto brokers; every one is stopped after the test."""
    executable = require_executable("mosquitto", *MOSQUITTO_DIRS)
    started: list[Mosquitto] = []

    def make(**kwargs: object) -> Mosquitto:
        broker = Mosquitto(executable, tmp_path / f"broker{len(started)}", **kwargs)  # type: ignore[arg-type]
        started.append(broker)
        broker.start()
        return broker

    yield make
    for broker in started:
        broker.stop()


@pytest.fixture
def mosquitto(mosquitto_factory: Callable[..., Mosquitto]) -> Mosquitto:
    """A started mosquitto with persistence on, anonymous access, on a free loopback port."""
    return mosquitto_factory()


@pytest.fixture
def fleet(tmp_path: Path) -> Fleet:
    """A fleet CA with its broker certificate, in the test's directory."""
    return make_fleet(tmp_path)


@pytest.fixture
def fleet_broker(tmp_path: Path, fleet: Fleet) -> Iterator[FleetBroker]:
    """mosquitto running the product-generated TLS + ACL configuration for *fleet*."""
    executable = require_executable("mosquitto", *MOSQUITTO_DIRS)
    broker = FleetBroker(executable, tmp_path / "broker", fleet)
    broker.start()
    yield broker
    broker.close()


@pytest.fixture
def channel(request: pytest.FixtureRequest) -> Iterator[str]:
    """A virtual-scanner channel of this test alone, empty before and after it."""
    name = f"{request.node.module.__name__}-{request.node.name}"
    virtual.reset(name)
    yield name
    virtual.reset(name)


@pytest.fixture
def clients() -> Iterator[list[TLSClient]]:
    """The TLS test clients a test makes (append them), closed after it."""
    made: list[TLSClient] = []
    yield made
    for client in made:
        client.close()


# Session-scoped RabbitMQ, NATS and NATS-cluster fixtures (the broker matrix, issue 18), and
# the private PostgreSQL cluster (session) with a fresh database per test, for the hub.
from support.broker_fixtures import nats, nats_cluster, rabbitmq  # noqa: E402, F401
from support.postgres import hub_database, postgres_cluster  # noqa: E402, F401
