"""Once the broker is back, the publisher is connected within 5 s, whatever its backoff.

The issue's case is a 30 s outage, after which the backoff had grown to tens of
seconds and the daemon came back 25 s late. What matters is the backoff at the moment
the broker returns, so the test starts the publisher with the backoff a long outage
leaves behind (its ceiling, 60 s) instead of waiting 30 s for it to grow.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from scanfleet.daemon.core.alarms import AlarmSet
from scanfleet.daemon.core.backoff import Backoff
from scanfleet.daemon.core.config import BrokerConfig
from scanfleet.daemon.core.identity import Identity
from scanfleet.daemon.journal.journal import Journal
from scanfleet.daemon.publish.publisher import Publisher
from support.broker import Mosquitto

pytestmark = pytest.mark.integration


def until(predicate: Callable[[], bool], timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_publisher_reconnects_within_5_s_of_the_broker_listening_again(
    mosquitto_factory: Callable[..., Mosquitto], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="scanfleet.daemon.publish.publisher")
    broker = mosquitto_factory()
    backoff = Backoff()
    alarms = AlarmSet()
    with Journal.open(tmp_path / "journal.sqlite3", "sf-00000000beef") as journal:
        publisher = Publisher(
            journal,
            BrokerConfig(url=broker.url),
            Identity("s", "sf-00000000beef"),
            alarms,
            backoff=backoff,
        )
        publisher.start()
        try:
            assert until(lambda: publisher.connected)
            broker.stop()
            assert until(lambda: not publisher.connected)
            backoff.attempts = 20  # what a long outage leaves: every wait is 30..60 s
            failures = publisher.counters.connection_failures
            # The next attempt failed: the publisher now sits in a 30..60 s backoff.
            assert until(lambda: publisher.counters.connection_failures > failures)
            time.sleep(0.5)
            broker.start()
            back = time.monotonic()
            while not publisher.connected and time.monotonic() < back + 30:
                time.sleep(0.02)
            took = time.monotonic() - back
        finally:
            publisher.stop(10)
    assert publisher.counters.connects == 2
    assert "listens again: reconnecting now" in caplog.text
    assert took < 5.0, f"reconnected {took:.1f} s after the broker listened again"
