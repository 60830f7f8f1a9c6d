"""Station workflows end to end: the daemon in-process with a virtual scanner and a real
mosquitto. Control barcodes set operation and bill; a receiving bill is checked against its
manifest (with an aggregate case code); duplicates are refused; returns are not."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from scanfleet.daemon.core.config import Config
from scanfleet.daemon.core.model import Scan
from scanfleet.daemon.runner import Daemon, build_daemon
from scanfleet.daemon.station.manual import ManualEntry
from scanfleet.daemon.station.receiving import BillSummary
from scanfleet.daemon.station.station import ControlRecord
from scanfleet.drivers import virtual
from scanfleet.drivers.base import Signal
from support.broker import Mosquitto
from support.mqtt import Collector

pytestmark = pytest.mark.integration

CASE = "83711700100000000001"
CASE_UNITS = ["83711700200000000011", "83711700200000000012", "83711700200000000013"]
UNIT_A = "83711700200000000021"
UNIT_B = "83711700200000000022"  # on the manifest, never scanned: missing
STRAY = "83711700200000000099"  # not on the manifest: unexpected


@pytest.fixture
def daemon(tmp_path: Path, mosquitto: Mosquitto, channel: str) -> Iterator[Daemon]:
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    manifest = {
        "bill": "RK-2026-001",
        "supplier": "upstream",
        "items": [
            {"code": CASE, "pack_ratio": "1:3", "children": CASE_UNITS},
            UNIT_A,
            UNIT_B,
        ],
    }
    (manifests / "RK-2026-001.json").write_text(json.dumps(manifest), encoding="utf-8")
    config = Config.model_validate(
        {
            "identity": {"site": "site-a", "device": "dev-1"},
            "paths": {"state_dir": str(tmp_path / "state")},
            "broker": {"url": mosquitto.url},
            "station": {
                "name": "store-1",
                "operation": "retail_sale",
                "manifest_dir": str(manifests),
            },
            "devices": [{"name": "dock", "driver": "virtual", "channel": channel}],
        }
    )
    d = build_daemon(config)
    d.start()
    assert d.ready.wait(15)
    yield d
    d.shutdown()


def _scan(channel: str, *codes: str) -> None:
    for code in codes:
        virtual.inject(channel, code.encode() + b"\r")


def _wait(predicate: Callable[[], object], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def _records(collector: Collector, count: int) -> list[dict[str, Any]]:
    assert collector.wait_for(lambda: len(collector.scans()) >= count, 30)
    return collector.scans()


def test_receiving_bill_checks_manifest_duplicates_and_summarises_at_the_broker(
    daemon: Daemon, mosquitto: Mosquitto, channel: str
) -> None:
    collector = Collector(mosquitto.host, mosquitto.port, "scanfleet/v1/site-a/dev-1/#")
    try:
        _scan(channel, "#SF:OP=receiving", "#SF:BILL=RK-2026-001", "#SF:OPERATOR=wang")
        _scan(channel, CASE, UNIT_A, STRAY, UNIT_A, CASE_UNITS[1])
        _scan(channel, "#SF:END")
        # control(3) + scans(5) + end control + bill_summary
        records = _records(collector, 10)
    finally:
        collector.close()
    controls = [ControlRecord.model_validate(r) for r in records if r["type"] == "control"]
    scans = [Scan.model_validate(r) for r in records if r["type"] == "scan"]
    (summary,) = [BillSummary.model_validate(r) for r in records if r["type"] == "bill_summary"]

    assert [(c.action, c.argument, c.verdict) for c in controls] == [
        ("operation", "receiving", "accepted"),
        ("bill", "RK-2026-001", "accepted"),
        ("operator", "wang", "accepted"),
        ("end_bill", "RK-2026-001", "accepted"),
    ]
    assert all(c.origin == "barcode" and c.raw and c.raw.startswith("#SF:") for c in controls)
    assert all(not s.value.startswith("#SF:") for s in scans)
    assert all(
        (s.operation, s.bill, s.operator) == ("receiving", "RK-2026-001", "wang") for s in scans
    )
    by_value = [(s.value, s.verdict, s.expected, s.duplicate_of) for s in scans]
    case_scan, unit_a = scans[0], scans[1]
    assert by_value == [
        (CASE, "accepted", "expected", None),
        (UNIT_A, "accepted", "expected", None),
        (STRAY, "refused", "unexpected", None),
        (UNIT_A, "refused", "already_scanned", unit_a.seq),
        (CASE_UNITS[1], "refused", "already_scanned", None),
    ]
    assert scans[2].reason
    assert "not on the bill's manifest" in scans[2].reason
    assert scans[3].reason
    assert "duplicate scan" in scans[3].reason
    assert scans[4].reason
    assert f"seq {case_scan.seq}" in scans[4].reason

    assert summary.status == "differences"
    assert summary.bill == "RK-2026-001"
    assert (summary.expected_units, summary.received_units) == (5, 4)
    assert [(m.code, m.quantity) for m in summary.missing] == [(UNIT_B, 1)]
    assert [(e.code, e.quantity) for e in summary.extra] == [(STRAY, 1)]
    assert "bill_differences" in daemon.alarms

    assert _wait(lambda: len(virtual.signals(channel)) == 9)
    good, bad = Signal.GOOD_READ, Signal.BAD_READ
    assert virtual.signals(channel) == [good, good, good, good, good, bad, bad, bad, bad]


def test_a_bill_matching_its_manifest_closes_as_matched(daemon: Daemon, channel: str) -> None:
    _scan(channel, "#SF:OP=receiving", "#SF:BILL=RK-2026-001", CASE, UNIT_A, UNIT_B, "#SF:END")
    assert _wait(lambda: daemon.station.last_summary is not None)
    summary = daemon.station.last_summary
    assert summary is not None
    assert (summary["status"], summary["missing"], summary["extra"]) == ("matched", [], [])
    assert _wait(lambda: len(virtual.signals(channel)) == 6)
    assert virtual.signals(channel) == [Signal.GOOD_READ] * 6


def test_a_sale_return_of_a_sold_code_is_accepted_and_the_code_may_be_sold_again(
    daemon: Daemon, mosquitto: Mosquitto, channel: str
) -> None:
    collector = Collector(mosquitto.host, mosquitto.port, "scanfleet/v1/site-a/dev-1/#")
    try:
        _scan(channel, UNIT_A, UNIT_A)  # sold, then the same box sold again: duplicate
        _scan(channel, "#SF:OP=sale_return_in", UNIT_A)  # the customer brings it back
        _scan(channel, "#SF:OP=retail_sale", UNIT_A)  # and it is sold again
        records = _records(collector, 6)
    finally:
        collector.close()
    scans = [Scan.model_validate(r) for r in records if r["type"] == "scan"]
    assert [(s.operation, s.verdict) for s in scans] == [
        ("retail_sale", "accepted"),
        ("retail_sale", "refused"),
        ("sale_return_in", "accepted"),
        ("retail_sale", "accepted"),
    ]
    assert scans[1].duplicate_of == scans[0].seq
    assert [r["type"] for r in records] == ["scan", "scan", "control", "scan", "control", "scan"]


def test_exempt_entries_by_control_barcode_are_journaled_never_as_scans(
    daemon: Daemon, mosquitto: Mosquitto, channel: str
) -> None:
    collector = Collector(mosquitto.host, mosquitto.port, "scanfleet/v1/site-a/dev-1/#")
    try:
        _scan(channel, "#SF:EXEMPT=herbal;batch=B7;exp=2027-01-31;qty=3;name=dangshen")
        _scan(channel, "#SF:MANUAL=uncoded;qty=0", "#SF:FROB=1")
        records = _records(collector, 3)
    finally:
        collector.close()
    entry = ManualEntry.model_validate(records[0])
    assert (entry.kind, entry.category, entry.batch, entry.quantity) == (
        "exempt",
        "herbal",
        "B7",
        3,
    )
    assert str(entry.expiry) == "2027-01-31"
    assert entry.product == "dangshen"
    assert entry.origin == "barcode"
    refused = [ControlRecord.model_validate(r) for r in records[1:]]
    assert [(c.action, c.verdict) for c in refused] == [
        ("manual", "refused"),
        ("unknown", "refused"),
    ]
    assert all(r["type"] != "scan" for r in records)
    assert _wait(lambda: len(virtual.signals(channel)) == 3)
    assert virtual.signals(channel) == [Signal.GOOD_READ, Signal.BAD_READ, Signal.BAD_READ]


def test_a_restarted_daemon_continues_the_open_bill(daemon: Daemon, channel: str) -> None:
    _scan(channel, "#SF:OP=receiving", "#SF:BILL=RK-2026-001", CASE)
    assert _wait(lambda: daemon.journal.last_seq == 3)
    daemon.shutdown()
    restarted = build_daemon(daemon.config)
    restarted.start()
    try:
        assert restarted.ready.wait(15)
        assert restarted.station.snapshot()["bill"] == "RK-2026-001"
        # The case was received before the restart: its unit is already received.
        _scan(channel, CASE_UNITS[0], UNIT_A, UNIT_B, "#SF:END")
        assert _wait(lambda: restarted.station.last_summary is not None)
        summary = restarted.station.last_summary
        assert summary is not None
        assert (summary["status"], summary["received_units"]) == ("matched", 5)
        assert (summary["scans"], summary["refused"]) == (3, 1)
    finally:
        restarted.shutdown()
