"""The daemon in-process with virtual scanners and a real mosquitto: every read is
classified, journaled, acknowledged to the operator, and delivered in order."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from scanfleet.daemon.core.config import Config
from scanfleet.daemon.core.model import Scan
from scanfleet.daemon.journal.reader import open_readonly
from scanfleet.daemon.runner import Daemon, build_daemon, journal_path
from scanfleet.drivers import virtual
from scanfleet.drivers.base import DriverProblem, Signal
from scanfleet.drivers.sim.codes import generate_code
from support.broker import Mosquitto
from support.mqtt import Collector

pytestmark = pytest.mark.integration


def _config(tmp_path: Path, broker: Mosquitto, channel: str) -> Config:
    return Config.model_validate(
        {
            "identity": {"site": "site-a", "device": "dev-1"},
            "paths": {"state_dir": str(tmp_path / "state")},
            "broker": {"url": broker.url},
            "station": {"name": "counter-1", "operation": "retail_sale"},
            "devices": [{"name": "counter", "driver": "virtual", "channel": channel}],
        }
    )


@pytest.fixture
def daemon(tmp_path: Path, mosquitto: Mosquitto, channel: str) -> Iterator[Daemon]:
    d = build_daemon(_config(tmp_path, mosquitto, channel))
    d.start()
    assert d.ready.wait(15)
    yield d
    d.shutdown()


def test_every_read_is_journaled_signalled_and_delivered_in_order(
    daemon: Daemon, mosquitto: Mosquitto, channel: str
) -> None:
    collector = Collector(mosquitto.host, mosquitto.port, "scanfleet/v1/site-a/dev-1/#")
    rng = random.Random(7)
    codes = [generate_code(rng, aim=True) + b"\r" for _ in range(200)]
    try:
        for code in codes:
            virtual.inject(channel, code)
        assert collector.wait_for(lambda: len(collector.unique_ids()) >= len(codes), 60)
    finally:
        collector.close()
    scans = [Scan.model_validate(s) for s in collector.ordered()]
    assert [s.seq for s in scans] == list(range(1, len(codes) + 1))
    assert all(s.id == f"dev-1:{s.seq}" for s in scans)
    assert all(s.source.device == "counter" and s.station == "counter-1" for s in scans)
    refused = [s for s in scans if s.verdict == "refused"]
    accepted = [s for s in scans if s.verdict == "accepted"]
    assert all(s.kind in ("trace20", "gs1", "trace_other", "ma") for s in accepted)
    assert all(s.reason and "not a trace code" in s.reason for s in refused)
    signals = virtual.signals(channel)
    assert signals.count(Signal.GOOD_READ) == len(accepted)
    assert signals.count(Signal.BAD_READ) == len(refused)
    assert len(signals) == len(codes)


def test_an_ean13_product_barcode_is_refused_with_a_bad_read(daemon: Daemon, channel: str) -> None:
    virtual.inject(channel, b"6901234567892\r")
    virtual.inject(channel, b"83711700173703755001\r")
    stats_ok = _wait(lambda: daemon.journal.last_seq >= 2)
    assert stats_ok
    with open_readonly(journal_path(daemon.config)) as reader:
        first, second = (r.as_dict() for r in reader.read_after(0, limit=2, max_bytes=1 << 20))
    assert (first["kind"], first["verdict"]) == ("ean13", "refused")
    assert "scan the trace code" in first["reason"]
    assert (second["kind"], second["verdict"]) == ("trace20", "accepted")
    assert _wait(lambda: len(virtual.signals(channel)) == 2)
    assert virtual.signals(channel) == [Signal.BAD_READ, Signal.GOOD_READ]


def test_an_unplugged_scanner_is_an_alarm_and_comes_back(daemon: Daemon, channel: str) -> None:
    virtual.unplug(channel)
    assert _wait(lambda: "device_absent:counter" in daemon.alarms)
    virtual.plug(channel)
    assert _wait(lambda: "device_absent:counter" not in daemon.alarms, 20)
    virtual.inject(channel, b"83711700173703755001\r")
    assert _wait(lambda: daemon.journal.last_seq == 1)


def _wait(predicate: Callable[[], object], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_garbage_from_a_device_is_an_alarm_never_a_scan(daemon: Daemon, channel: str) -> None:
    virtual.inject_problem(
        channel, DriverProblem("noise", "12 bytes of line noise discarded", b"\x00\xff" * 6)
    )
    assert _wait(lambda: "device_problem:counter" in daemon.alarms)
    (alarm,) = [a for a in daemon.alarms.active() if a.code == "device_problem:counter"]
    assert alarm.details["problem"] == "noise"
    virtual.inject(channel, b"83711700173703755001\r")
    assert _wait(lambda: daemon.journal.last_seq == 1)
    assert daemon.journal.last_seq == 1
