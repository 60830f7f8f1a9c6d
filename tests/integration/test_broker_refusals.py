"""Errors that name the cause (issue 18): each refusal raises ``broker_refused`` at the
first attempt, with its own cause, against real brokers.

The backoff after the first failure is 30 s or more, so an alarm seen within a few
seconds can only come from the first attempt.
"""

from __future__ import annotations

import json
import logging
import random
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from scanfleet.daemon.core.alarms import AlarmSet
from scanfleet.daemon.core.backoff import Backoff
from scanfleet.daemon.core.config import BrokerConfig
from scanfleet.daemon.core.identity import Identity
from scanfleet.daemon.journal.journal import Journal
from scanfleet.daemon.publish.publisher import ALARM_BROKER_REFUSED, Publisher
from support.broker import Mosquitto, free_port
from support.pki import Fleet, FleetBroker, make_fleet
from support.prereq import require_executable
from support.scans import make_scan_body

pytestmark = pytest.mark.integration

SITE = "site-refusals"
DEVICE = "sf-0000000ref1"
WRONG = "wrong"  # a wrong password on purpose


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    with Journal.open(tmp_path / "state" / "journal.sqlite3", DEVICE) as j:
        rng = random.Random(18)
        for i in range(10):
            j.append(make_scan_body(i, rng))
        yield j


@pytest.fixture
def run_publisher(journal: Journal, tmp_path: Path) -> Iterator[Callable[..., Publisher]]:
    started: list[Publisher] = []

    def start(broker: BrokerConfig, **kwargs: Any) -> Publisher:
        kwargs.setdefault("backoff", Backoff(30.0, 60.0))
        publisher = Publisher(
            journal, broker, Identity(SITE, DEVICE), AlarmSet(), connect_timeout=5.0, **kwargs
        )
        started.append(publisher)
        publisher.start()
        return publisher

    yield start
    for publisher in started:
        publisher.stop(2)


def refused(publisher: Publisher, timeout: float = 15.0) -> dict[str, Any]:
    """The ``broker_refused`` alarm once raised (fails the test if it never is)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for alarm in publisher.alarms.active():
            if alarm.code == ALARM_BROKER_REFUSED:
                assert publisher.counters.connection_failures == 1
                return alarm.as_json()
        time.sleep(0.02)
    raise AssertionError(f"no broker_refused alarm; alarms {publisher.alarms.active()}")


@pytest.fixture
def password_broker(mosquitto_factory: Callable[..., Mosquitto], tmp_path: Path) -> Mosquitto:
    """mosquitto that needs a user name and password (user ``till``, password ``s3cret``)."""
    passwd = require_executable("mosquitto_passwd", "/usr/bin")
    password_file = tmp_path / "mosquitto.passwd"
    subprocess.run([passwd, "-b", "-c", str(password_file), "till", "s3cret"], check=True)
    return mosquitto_factory(
        listener_config=f"allow_anonymous false\npassword_file {password_file}"
    )


def test_bad_credentials_are_named(
    rabbitmq: Any, run_publisher: Callable[..., Publisher], caplog: Any
) -> None:
    caplog.set_level(logging.ERROR)
    publisher = run_publisher(BrokerConfig(url=rabbitmq.url, username="guest", password=WRONG))
    alarm = refused(publisher)
    assert alarm["details"]["cause"] == "bad_credentials"
    assert alarm["details"]["reason_code"] == 0x86
    assert "Bad user name or password" in alarm["message"]
    assert "refused the connection (bad_credentials)" in caplog.text


def test_not_authorized_is_named_not_protocol_error(
    password_broker: Mosquitto, run_publisher: Callable[..., Publisher], caplog: Any
) -> None:
    caplog.set_level(logging.ERROR)
    # mosquitto 2.0 answers a wrong password and a missing one alike: 0x87.
    publisher = run_publisher(
        BrokerConfig(url=password_broker.url, username="till", password=WRONG)
    )
    alarm = refused(publisher)
    assert alarm["details"]["cause"] == "not_authorized"
    assert alarm["details"]["reason_code"] == 0x87
    assert "Not authorized (CONNACK 0x87)" in alarm["message"]
    assert "Protocol error" not in caplog.text
    assert "refused the connection (not_authorized)" in caplog.text


def test_password_from_a_file_or_the_environment_connects_and_clears_the_alarm(
    password_broker: Mosquitto,
    run_publisher: Callable[..., Publisher],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    secret = tmp_path / "broker-password"
    secret.write_text("s3cret\n", encoding="utf-8")
    publisher = run_publisher(
        BrokerConfig(url=password_broker.url, username="till", password_file=secret)
    )
    assert publisher.wait_delivered(10, 15)
    publisher.stop(2)
    monkeypatch.setenv("SCANFLEET_BROKER_USERNAME", "till")
    monkeypatch.setenv("SCANFLEET_BROKER_PASSWORD", "s3cret")
    publisher = run_publisher(BrokerConfig(url=password_broker.url))
    deadline = time.monotonic() + 15
    while not publisher.connected and time.monotonic() < deadline:
        time.sleep(0.02)
    assert publisher.connected
    assert ALARM_BROKER_REFUSED not in publisher.alarms


def test_dns_failure_is_named(run_publisher: Callable[..., Publisher]) -> None:
    alarm = refused(run_publisher(BrokerConfig(url="mqtt://no-such-broker.invalid:1883")))
    assert alarm["details"]["cause"] == "dns"
    assert "no-such-broker.invalid" in alarm["message"]


def test_tls_failure_is_named(
    fleet_broker: FleetBroker, fleet: Fleet, run_publisher: Callable[..., Publisher], tmp_path: Path
) -> None:
    creds = fleet.device(SITE, DEVICE)
    rogue = make_fleet(tmp_path / "rogue")
    publisher = run_publisher(
        BrokerConfig(
            url=f"mqtts://127.0.0.1:{fleet_broker.port}",
            ca_file=rogue.ca_file,
            cert_file=creds.cert,
            key_file=creds.key,
        )
    )
    alarm = refused(publisher)
    assert alarm["details"]["cause"] == "tls"
    assert "CERTIFICATE_VERIFY_FAILED" in alarm["message"]


@pytest.mark.parametrize("broker_name", ["rabbitmq", "nats"])
def test_mqtt5_only_against_a_3_1_1_broker_names_the_protocol(
    broker_name: str, request: pytest.FixtureRequest, run_publisher: Callable[..., Publisher]
) -> None:
    broker = request.getfixturevalue(broker_name)
    alarm = refused(run_publisher(BrokerConfig(url=broker.url, protocol="5")))
    assert alarm["details"]["cause"] == "protocol_version"
    assert '"auto" falls back' in alarm["message"]


def test_auto_falls_back_to_3_1_1_and_remembers_it_per_url(
    rabbitmq: Any, run_publisher: Callable[..., Publisher], tmp_path: Path, caplog: Any
) -> None:
    caplog.set_level(logging.INFO)
    memory = tmp_path / "state" / "broker-protocol.json"
    publisher = run_publisher(BrokerConfig(url=rabbitmq.url), protocol_memory=memory)
    assert publisher.wait_delivered(10, 30)
    assert publisher.protocol == "3.1.1"
    assert publisher.counters.connection_failures == 0, "the fallback is the same attempt"
    assert json.loads(memory.read_text())[rabbitmq.url]["protocol"] == "3.1.1"
    assert "refuses MQTT 5" in caplog.text
    publisher.stop(2)
    caplog.clear()
    publisher = run_publisher(BrokerConfig(url=rabbitmq.url), protocol_memory=memory)
    deadline = time.monotonic() + 15
    while not publisher.connected and time.monotonic() < deadline:
        time.sleep(0.02)
    assert publisher.connected
    assert publisher.protocol == "3.1.1"
    assert "refuses MQTT 5" not in caplog.text, "remembered: no second MQTT 5 attempt"


def test_a_dead_first_url_fails_over_to_the_next(
    mosquitto: Mosquitto, run_publisher: Callable[..., Publisher]
) -> None:
    dead = f"mqtt://127.0.0.1:{free_port()}"
    publisher = run_publisher(BrokerConfig(url=[dead, mosquitto.url]), backoff=Backoff(0.05, 0.1))
    assert publisher.wait_delivered(10, 15)
    assert publisher.url == mosquitto.url
    assert publisher.counters.connection_failures == 1


def test_a_connection_kept_on_3_1_1_is_reprobed_for_mqtt5_when_due(
    rabbitmq: Any, run_publisher: Callable[..., Publisher], caplog: Any
) -> None:
    caplog.set_level(logging.INFO)
    publisher = run_publisher(BrokerConfig(url=rabbitmq.url), backoff=Backoff(0.05, 0.1))
    assert publisher.wait_delivered(10, 30)
    assert publisher.counters.connects == 1
    # Two days later (the default re-probe interval is one day).
    publisher._dialer.memory._clock = lambda: time.time() + 2 * 86400
    deadline = time.monotonic() + 30
    while publisher.counters.connects < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "for MQTT 5 again" in caplog.text
    assert publisher.counters.connects == 2
    assert publisher.protocol == "3.1.1"
    assert caplog.text.count("refuses MQTT 5") == 2
