"""The Station's plain methods (what remote commands and the local API call): each change
is journaled as a control record; manifests may be pushed; entries are never scans."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from scanfleet.daemon.core.alarms import AlarmSet
from scanfleet.daemon.core.config import Config
from scanfleet.daemon.core.model import ClockSync, Operation, Verdict
from scanfleet.daemon.core.records import ScanBody, Stamp, StationContext
from scanfleet.daemon.intake.classify import classify
from scanfleet.daemon.journal.journal import Journal
from scanfleet.daemon.station.duplicates import open_index
from scanfleet.daemon.station.manual import Category, EntryRequest, parse_entry
from scanfleet.daemon.station.receiving import Manifest
from scanfleet.daemon.station.station import ControlRecord, Station, StationError

CODE = "83711700200000000051"
OTHER = "83711700200000000052"


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    with Journal.open(tmp_path / "journal.sqlite3", "dev-1") as j:
        yield j


def _station(journal: Journal, alarms: AlarmSet | None = None, **station: Any) -> Station:
    config = Config.model_validate({"station": {"name": "s1", **station}})

    def now() -> Stamp:
        return Stamp(datetime.now(UTC).isoformat(), ClockSync.UNKNOWN, 1.0, None)

    return Station(config, journal.append, now, alarms=alarms)


def _scan_body(code: str) -> ScanBody:
    result = classify(code.encode())
    return ScanBody(
        stamp=Stamp(datetime.now(UTC).isoformat(), ClockSync.UNKNOWN, 1.0, None),
        context=StationContext(Operation.RETAIL_SALE),
        station="s1",
        raw=result.raw,
        aim=result.aim,
        kind=result.kind,
        value=result.value,
        fields=result.fields,
        problems=result.problems,
        verdict=Verdict.ACCEPTED,
    )


def test_every_change_is_a_journaled_control_record(journal: Journal) -> None:
    station = _station(journal)
    op = station.set_operation("receiving", origin="remote")
    (bill,) = station.set_bill("RK-9")
    operator = station.set_operator("li")
    for record in (op, bill, operator):
        ControlRecord.model_validate(record)
    assert (op["origin"], op["operation"], op["bill"]) == ("remote", "receiving", None)
    assert (bill["action"], bill["bill"]) == ("bill", "RK-9")
    assert station.snapshot() == {"operation": "receiving", "bill": "RK-9", "operator": "li"}
    assert journal.last_seq == 3


def test_bad_changes_are_refused_without_a_record(journal: Journal) -> None:
    station = _station(journal)
    with pytest.raises(StationError, match="unknown operation"):
        station.set_operation("teleport")
    with pytest.raises(StationError, match="bad bill number"):
        station.set_bill("a b")
    with pytest.raises(StationError, match="no bill is open"):
        station.end_bill()
    assert journal.last_seq == 0


def test_a_pushed_manifest_applies_to_its_bill_and_a_new_bill_ends_the_old(
    journal: Journal,
) -> None:
    alarms = AlarmSet()
    station = _station(journal, alarms, operation="receiving")
    station.load_manifest(Manifest(bill="RK-1", items=[{"code": CODE}]))  # type: ignore[list-item]
    station.set_bill("RK-1")
    refused = station.scan(_scan_body("83711700200000000099"), fixed_operation=False)
    assert (refused["verdict"], refused["expected"]) == ("refused", "unexpected")
    records = station.set_bill("RK-2")
    assert [r["type"] for r in records] == ["control", "bill_summary", "control"]
    summary = records[1]
    assert summary["status"] == "differences"
    assert summary["missing"] == [{"code": CODE, "quantity": 1}]
    assert "bill_differences" not in alarms  # the new bill cleared it
    accepted = station.scan(_scan_body(CODE), fixed_operation=False)
    assert (accepted["verdict"], accepted["bill"], accepted.get("expected")) == (
        "accepted",
        "RK-2",
        None,
    )


def test_a_manual_entry_is_exempt_or_manual_and_never_a_scan(journal: Journal) -> None:
    station = _station(journal)
    entry = station.manual_entry(EntryRequest(category=Category.HOSPITAL_PREP, quantity=4))
    assert (entry["type"], entry["kind"], entry["quantity"]) == ("manual_entry", "exempt", 4)
    uncoded = station.manual_entry(parse_entry("无码;qty=2;batch=X1"))
    assert (uncoded["kind"], uncoded["category"], uncoded["batch"]) == ("manual", "uncoded", "X1")
    with pytest.raises(ValueError, match="quantity"):
        parse_entry("herbal;qty=0")
    with pytest.raises(ValueError, match="herbs"):
        parse_entry("herbs;qty=1")


def test_a_reload_changes_the_operation_only_when_the_config_changed_it(journal: Journal) -> None:
    station = _station(journal)
    station.set_operation(Operation.DISPENSE)
    station.update_config(Config.model_validate({"station": {"name": "s1", "operator": "x"}}))
    assert station.operation is Operation.DISPENSE
    station.update_config(Config.model_validate({"station": {"operation": "stocktake"}}))
    assert station.operation is Operation.STOCKTAKE


def test_after_a_restart_the_open_bill_and_its_scans_come_back(
    tmp_path: Path, journal: Journal
) -> None:
    index = open_index(tmp_path, journal, window_days=30)
    station = _station(journal, operation="receiving")
    station.index = index
    station.set_operator("wang")
    station.load_manifest(Manifest(bill="RK-5", items=[{"code": CODE}, {"code": OTHER}]))  # type: ignore[list-item]
    station.set_bill("RK-5")
    station.scan(_scan_body(CODE), fixed_operation=False)
    index.close()

    reopened = open_index(tmp_path, journal, window_days=30)
    restarted = _station(journal)  # the config says retail_sale: the journaled state wins
    restarted.index = reopened
    restarted.restore(journal)
    assert restarted.snapshot() == {"operation": "receiving", "bill": "RK-5", "operator": "wang"}
    again = restarted.scan(_scan_body(CODE), fixed_operation=False)
    assert (again["verdict"], again["expected"]) == ("refused", "already_scanned")
    *_, summary = restarted.end_bill()
    assert summary["missing"] == [{"code": OTHER, "quantity": 1}]
    assert summary["received_units"] == 1


def test_without_saved_state_the_config_applies(tmp_path: Path, journal: Journal) -> None:
    station = _station(journal, operation="dispense")
    station.index = open_index(tmp_path, journal, window_days=30)
    station.restore(journal)
    assert station.snapshot() == {"operation": "dispense", "bill": None, "operator": None}


def test_a_backend_warning_is_shown_as_an_alarm(journal: Journal) -> None:
    alarms = AlarmSet()
    station = _station(journal, alarms)
    station.warn("duplicate_settlement", "the platform reports 8371… settled twice")
    assert "backend_warning:duplicate_settlement" in alarms
    assert journal.last_seq == 0  # a warning is shown, not journaled as a station change


def test_a_split_pack_scan_says_which_unit_of_how_many_it_is(
    tmp_path: Path, journal: Journal
) -> None:
    from scanfleet.daemon.core.model import Scan

    station = _station(journal, operation="dispense", split_packs={CODE[:7]: 3})
    station.index = open_index(tmp_path, journal, window_days=30, split_packs={CODE[:7]: 3})
    records = [station.scan(_scan_body(CODE), fixed_operation=False) for _ in range(4)]
    assert [(r["verdict"], r.get("split_unit"), r.get("split_units")) for r in records] == [
        ("accepted", 1, 3),
        ("accepted", 2, 3),
        ("accepted", 3, 3),
        ("refused", None, 3),
    ]
    assert records[3]["duplicate_of"] == records[2]["seq"]
    plain = station.scan(_scan_body("83799990000000000001"), fixed_operation=False)
    assert "split_unit" not in plain
    assert "split_units" not in plain
    for field in ("split_unit", "split_units"):
        assert field in Scan.model_fields
