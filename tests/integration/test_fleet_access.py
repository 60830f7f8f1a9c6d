"""Access control of the generated broker configuration, on a real mosquitto:
who may connect where, and who may publish or read which topics."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from scanfleet.provisioning.ca import Role
from support.broker import MOSQUITTO_DIRS
from support.pki import Credentials, Fleet, FleetBroker, TLSClient, make_fleet
from support.prereq import require_executable

pytestmark = pytest.mark.integration

NOT_AUTHORIZED = 0x87
A = "scanfleet/v1/site-1/dev-a"
B = "scanfleet/v1/site-1/dev-b"
QUIET = 1.0
"""Seconds to wait for a message that must not arrive (after a positive control did)."""


@pytest.fixture
def creds(fleet: Fleet) -> dict[str, Credentials]:
    return {
        "a": fleet.device("site-1", "dev-a"),
        "b": fleet.device("site-1", "dev-b"),
        "fleet": fleet.role(Role.FLEET, "ops"),
        "backend": fleet.role(Role.BACKEND, "trace"),
    }


@pytest.fixture
def broker(tmp_path: Path, fleet: Fleet, creds: dict[str, Credentials]) -> Iterator[FleetBroker]:
    executable = require_executable("mosquitto", *MOSQUITTO_DIRS)
    mosq = FleetBroker(executable, tmp_path / "broker", fleet)
    mosq.start()
    yield mosq
    mosq.close()


def connect(
    broker: FleetBroker,
    fleet: Fleet,
    clients: list[TLSClient],
    creds: Credentials | None,
    client_id: str,
    *,
    port: int | None = None,
    tls: bool = True,
) -> TLSClient:
    client = TLSClient(port or broker.port, fleet.ca_file, creds, client_id=client_id, tls=tls)
    clients.append(client)
    return client


def test_device_publishes_only_to_its_own_topics(
    broker: FleetBroker, fleet: Fleet, creds: dict[str, Credentials], clients: list[TLSClient]
) -> None:
    a = connect(broker, fleet, clients, creds["a"], "dev-a")
    assert a.connected(), a.error
    for suffix in ("scans", "state", "health", "config/reported", "cmd/status/response"):
        assert a.publish(f"{A}/{suffix}", b"{}") < 0x80, suffix
        assert a.publish(f"{B}/{suffix}", b"{}") == NOT_AUTHORIZED, suffix
    # Desired config and commands come from the fleet, never from a device, not even its own.
    for topic in (f"{A}/config", f"{A}/cmd/restart", f"{B}/config", f"{B}/cmd/restart"):
        assert a.publish(topic, b"{}") == NOT_AUTHORIZED, topic
    assert a.publish("scanfleet/v1/enroll/dev-a/response", b"{}") == NOT_AUTHORIZED


def test_device_cannot_read_another_devices_config_or_commands(
    broker: FleetBroker, fleet: Fleet, creds: dict[str, Credentials], clients: list[TLSClient]
) -> None:
    a = connect(broker, fleet, clients, creds["a"], "dev-a")
    b = connect(broker, fleet, clients, creds["b"], "dev-b")
    ops = connect(broker, fleet, clients, creds["fleet"], "ops")
    assert a.connected(), a.error
    assert b.connected(), b.error
    assert ops.connected(), ops.error
    # mosquitto 2.0 grants SUBACKs it then never delivers on: what counts is what arrives.
    for topic in (f"{B}/config", f"{B}/cmd/+", "scanfleet/v1/+/+/scans", "#"):
        a.subscribe(topic)
    a.subscribe(f"{A}/config")
    b.subscribe(f"{B}/config")
    b.subscribe(f"{B}/cmd/+")

    assert ops.publish(f"{B}/config", b"config-for-b") < 0x80
    assert ops.publish(f"{B}/cmd/restart", b"cmd-for-b") < 0x80
    assert b.publish(f"{B}/scans", b"scans-of-b") < 0x80
    assert ops.publish(f"{A}/config", b"config-for-a") < 0x80

    # Positive controls: b gets its own messages, a gets its own config.
    assert b.wait(lambda: len(b.messages) == 2)
    assert a.wait(lambda: (f"{A}/config", b"config-for-a") in a.messages)
    # Overlapping subscriptions may deliver a message twice; only its topic matters.
    assert not a.wait(lambda: {t for t, _ in a.messages} != {f"{A}/config"}, timeout=QUIET)
    assert {m for _, m in a.messages} == {b"config-for-a"}


def test_backend_reads_every_devices_scans_but_cannot_command_or_configure(
    broker: FleetBroker, fleet: Fleet, creds: dict[str, Credentials], clients: list[TLSClient]
) -> None:
    backend = connect(broker, fleet, clients, creds["backend"], "backend")
    a = connect(broker, fleet, clients, creds["a"], "dev-a")
    assert backend.connected(), backend.error
    assert a.connected(), a.error
    backend.subscribe("scanfleet/v1/+/+/scans")
    assert a.publish(f"{A}/scans", b"batch") < 0x80
    assert backend.wait(lambda: backend.messages == [(f"{A}/scans", b"batch")])
    assert backend.publish(f"{A}/config", b"{}") == NOT_AUTHORIZED
    assert backend.publish(f"{A}/cmd/restart", b"{}") == NOT_AUTHORIZED
    assert backend.publish(f"{A}/scans", b"forged") == NOT_AUTHORIZED
    assert backend.publish(f"{A}/cmd/resend", b"{}") < 0x80


def test_plain_tcp_and_certificateless_clients_are_refused_on_the_device_listener(
    broker: FleetBroker, fleet: Fleet, clients: list[TLSClient]
) -> None:
    plain = connect(broker, fleet, clients, None, "plain", tls=False)
    assert not plain.connected()
    no_cert = connect(broker, fleet, clients, None, "no-cert")
    assert not no_cert.connected()
    # Positive control: the same listener accepts a certified device.
    good = connect(broker, fleet, clients, fleet.device("site-1", "dev-c"), "dev-c")
    assert good.connected(), good.error


def test_certificate_from_another_ca_is_refused(
    tmp_path: Path, broker: FleetBroker, fleet: Fleet, clients: list[TLSClient]
) -> None:
    rogue = make_fleet(tmp_path / "rogue")
    impostor = connect(broker, fleet, clients, rogue.device("site-1", "dev-a"), "dev-a")
    assert not impostor.connected()


def test_revoked_certificate_cannot_connect(
    broker: FleetBroker, fleet: Fleet, creds: dict[str, Credentials], clients: list[TLSClient]
) -> None:
    before = connect(broker, fleet, clients, creds["b"], "dev-b")
    assert before.connected(), before.error
    before.close()
    fleet.ca.revoke(creds["b"].serial, "key_compromise")
    broker.reload()  # SIGHUP: mosquitto 2.0.11 reloads the crlfile
    after = connect(broker, fleet, clients, creds["b"], "dev-b-again")
    assert not after.connected()
    other = connect(broker, fleet, clients, creds["a"], "dev-a")
    assert other.connected(), other.error


def test_enrollment_listener_allows_nothing_but_own_enrollment_topics(
    broker: FleetBroker, fleet: Fleet, creds: dict[str, Credentials], clients: list[TLSClient]
) -> None:
    anon = connect(broker, fleet, clients, None, "enroll-x", port=broker.enroll_port)
    assert anon.connected(), anon.error
    assert anon.publish("scanfleet/v1/enroll/enroll-x/request", b"{}") < 0x80
    for topic in (
        "scanfleet/v1/enroll/enroll-y/request",
        "scanfleet/v1/enroll/enroll-x/response",
        "scanfleet/v1/enroll/enroll-y/response",
        f"{A}/scans",
        f"{A}/state",
        f"{A}/config",
    ):
        assert anon.publish(topic, b"{}") == NOT_AUTHORIZED, topic

    for topic in ("#", f"{A}/config", "scanfleet/v1/enroll/+/request"):
        anon.subscribe(topic)
    anon.subscribe("scanfleet/v1/enroll/enroll-x/response")
    ops = connect(broker, fleet, clients, creds["fleet"], "ops")
    assert ops.connected(), ops.error
    assert ops.publish(f"{A}/config", b"secret-config") < 0x80
    # The enrollment broker is another process: config on the device broker never
    # reaches it; the fleet service answers there on its own listener.
    ops = connect(broker, fleet, clients, creds["fleet"], "enroll-ops", port=broker.service_port)
    assert ops.connected(), ops.error
    assert ops.publish("scanfleet/v1/enroll/enroll-y/response", b"for-y") < 0x80
    assert ops.publish("scanfleet/v1/enroll/enroll-x/response", b"for-x") < 0x80
    assert anon.wait(lambda: ("scanfleet/v1/enroll/enroll-x/response", b"for-x") in anon.messages)
    own = {"scanfleet/v1/enroll/enroll-x/response"}
    assert not anon.wait(lambda: {t for t, _ in anon.messages} != own, timeout=QUIET)


def test_username_claimed_on_the_enrollment_listener_grants_nothing(
    broker: FleetBroker, fleet: Fleet, clients: list[TLSClient]
) -> None:
    # The enrollment ACL has no user blocks and no %u patterns: a device's name buys nothing.
    named = TLSClient(
        broker.enroll_port, fleet.ca_file, None, client_id="enroll-spoof2", username="site-1/dev-a"
    )
    clients.append(named)
    assert named.connected(), named.error
    assert named.publish(f"{A}/scans", b"forged") == NOT_AUTHORIZED


def test_expired_crl_locks_devices_out_until_it_is_renewed(
    broker: FleetBroker, fleet: Fleet, creds: dict[str, Credentials], clients: list[TLSClient]
) -> None:
    fleet.ca.write_crl(days=1, now=datetime.now(UTC) - timedelta(days=2))
    broker.reload()
    locked_out = connect(broker, fleet, clients, creds["a"], "dev-a")
    assert not locked_out.connected()

    assert fleet.ca.crl_due()
    assert fleet.ca.renew_crl_if_due()
    assert not fleet.ca.crl_due()
    broker.reload()
    back = connect(broker, fleet, clients, creds["a"], "dev-a-again")
    assert back.connected(), back.error
