"""Session-scoped private brokers besides mosquitto: RabbitMQ, NATS, a NATS cluster.

RabbitMQ takes 10-20 s to boot, so each of these starts once per test session;
tests stay independent by using their own site, device and client ids. A test that
stops or kills a broker starts it again before it ends. Imported by
tests/conftest.py.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from support.nats import NATS_SERVER, NatsCluster, NatsServer
from support.prereq import missing, require_executable
from support.rabbitmq import RABBITMQ_SERVER, RabbitMQ


@pytest.fixture(scope="session")
def rabbitmq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitMQ]:
    """A private RabbitMQ 3.10 node with the MQTT plugin (MQTT 3.1.1 only)."""
    if not os.access(RABBITMQ_SERVER, os.X_OK):
        missing("rabbitmq-server is not installed (make setup installs it)")
    require_executable("epmd")
    broker = RabbitMQ(tmp_path_factory.mktemp("rabbitmq"))
    broker.start()
    yield broker
    broker.close()


@pytest.fixture(scope="session")
def nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """A private nats-server 2.9 with JetStream and its MQTT listener (3.1.1 only)."""
    require_executable(NATS_SERVER)
    server = NatsServer(tmp_path_factory.mktemp("nats"))
    server.start()
    yield server
    server.close()


@pytest.fixture(scope="session")
def nats_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    """Three clustered nats-servers on loopback, MQTT streams replicated R3."""
    require_executable(NATS_SERVER)
    cluster = NatsCluster(tmp_path_factory.mktemp("nats-cluster"))
    cluster.start()
    yield cluster
    cluster.close()
