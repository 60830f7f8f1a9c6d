"""The hub on the product-generated TLS broker: each worker its own backend identity."""

from __future__ import annotations

from pathlib import Path

import pytest

from scanfleet.hub.db import connect, upgrade
from scanfleet.provisioning.ca import Role
from support.broker import MOSQUITTO_DIRS
from support.hub import Chain, query, start_ingest, stop, wait_for
from support.pki import Fleet, FleetBroker, TLSClient
from support.prereq import require_executable

pytestmark = pytest.mark.integration

SITE, DEVICE = "site-t", "dev-t"


def test_workers_ingest_over_mtls_each_with_its_own_backend_identity(
    tmp_path: Path, fleet: Fleet, hub_database: str
) -> None:
    with connect(hub_database) as conn:
        upgrade(conn)
    device = fleet.device(SITE, DEVICE)
    fleet.role(Role.BACKEND, "hub1")
    fleet.role(Role.BACKEND, "hub2")
    broker = FleetBroker(
        require_executable("mosquitto", *MOSQUITTO_DIRS), tmp_path / "broker", fleet
    )
    broker.start()
    terminal = None
    ingest = start_ingest(
        hub_database,
        f"mqtts://127.0.0.1:{broker.port}",
        tmp_path,
        *("--workers", "2", "--identity", "hub1,hub2", "--client-id", "@identity"),
        *("--fleet-dir", str(fleet.root), "--no-repair"),
    )
    log = tmp_path / "ingest.log"
    try:
        wait_for(lambda: log.read_text().count("subscribed") >= 2, 30, "two TLS workers")
        assert "ingest backend.hub1 connected" in log.read_text()
        assert "ingest backend.hub2 connected" in log.read_text()
        terminal = TLSClient(broker.port, fleet.ca_file, device, client_id=DEVICE)
        assert terminal.connected(), terminal.error
        chain = Chain(SITE, DEVICE)
        for _ in range(30):
            chain.add()
        for first in range(1, 31, 10):
            assert terminal.publish(chain.topic, chain.batch(first, first + 9)) < 0x80
        wait_for(
            lambda: query(hub_database, "SELECT count(*) FROM records") == [(30,)], 30, "records"
        )
    finally:
        if terminal is not None:
            terminal.close()
        assert stop(ingest) == 0, log.read_text()
        broker.stop()
