"""The publisher over TLS with a client certificate, against the product-generated broker.

The broker is a real mosquitto running the configuration ``scanfleet fleet
broker-config`` generates (TLS, client certificates required, per-device ACLs), so
a PUBACK below 0x80 proves the certificate, the client id and the topics all fit.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from scanfleet.daemon.core.alarms import AlarmSet
from scanfleet.daemon.core.backoff import Backoff
from scanfleet.daemon.core.config import BrokerConfig
from scanfleet.daemon.core.identity import Identity
from scanfleet.daemon.journal.journal import Journal
from scanfleet.daemon.publish.publisher import Publisher
from support.pki import Fleet, FleetBroker, make_fleet
from support.scans import make_scan_body

pytestmark = pytest.mark.integration

SITE = "site-tls"
DEVICE = "sf-00000000a7e5"


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    with Journal.open(tmp_path / "state" / "journal.sqlite3", DEVICE) as j:
        rng = random.Random(3)
        for i in range(40):
            j.append(make_scan_body(i, rng))
        yield j


def test_scans_are_delivered_over_tls_with_the_device_certificate(
    fleet_broker: FleetBroker, fleet: Fleet, journal: Journal
) -> None:
    creds = fleet.device(SITE, DEVICE)
    config = BrokerConfig(
        url=f"mqtts://127.0.0.1:{fleet_broker.port}",
        ca_file=fleet.ca_file,
        cert_file=creds.cert,
        key_file=creds.key,
    )
    publisher = Publisher(
        journal,
        config,
        Identity(SITE, DEVICE),
        AlarmSet(),
        max_batch_scans=7,
        backoff=Backoff(0.1, 0.5),
    )
    publisher.start()
    try:
        assert publisher.wait_delivered(40, 30), fleet_broker.log()
        assert publisher.counters.batches_refused == 0
    finally:
        publisher.stop(5)


def test_a_broker_certificate_from_another_ca_is_never_trusted(
    fleet_broker: FleetBroker, fleet: Fleet, journal: Journal, tmp_path: Path
) -> None:
    creds = fleet.device(SITE, DEVICE)
    rogue = make_fleet(tmp_path / "rogue")
    config = BrokerConfig(
        url=f"mqtts://127.0.0.1:{fleet_broker.port}",
        ca_file=rogue.ca_file,
        cert_file=creds.cert,
        key_file=creds.key,
    )
    publisher = Publisher(
        journal, config, Identity(SITE, DEVICE), AlarmSet(), backoff=Backoff(0.05, 0.2)
    )
    publisher.start()
    try:
        deadline = time.monotonic() + 20
        while publisher.counters.connection_failures < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert publisher.counters.connection_failures >= 3, "retried with backoff"
        assert publisher.counters.connects == 0
        assert journal.delivered_seq == 0
    finally:
        publisher.stop(5)
