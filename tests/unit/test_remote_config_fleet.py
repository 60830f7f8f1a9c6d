"""The fleet side of remote management: local validation, diffs, gap arithmetic."""

from __future__ import annotations

from typing import Any

import pytest

from scanfleet.daemon.core.desired_config import Rejected
from scanfleet.provisioning.remote import (
    build_document,
    diff,
    missing_ranges,
    prefix,
    problems,
    reported_last_seq,
)


def test_missing_ranges_are_the_holes_up_to_the_reported_seq() -> None:
    assert missing_ranges([(1, 3), (6, 8)], 10) == [(4, 5), (9, 10)]
    assert missing_ranges([], 3) == [(1, 3)]
    assert missing_ranges([(1, 10)], 10) == []
    assert missing_ranges([(5, 12), (1, 2)], 10, since=2) == [(3, 4)]
    assert missing_ranges([(1, 4), (3, 6)], 6) == [], "overlapping spans"
    assert missing_ranges([(1, 2)], 0) == []


def test_reported_seq_takes_the_newest_of_health_and_state() -> None:
    entries: dict[str, dict[str, Any]] = {
        "s/a": {"state": {"journal": {"last_seq": 4}}, "health": {"journal": {"last_seq": 9}}},
        "s/b": {"state": {"online": False, "journal": None}},
    }
    assert reported_last_seq(entries) == {"s/a": 9}


def test_push_is_validated_locally_with_the_device_model() -> None:
    with pytest.raises(Rejected) as caught:
        build_document({"station": {"operation": "nope"}}, 1)
    assert caught.value.errors[0].key == "config.station.operation"
    doc = build_document({"station": {"operation": "receiving"}}, 2)
    assert '+    "operation": "receiving"' in diff(None, doc)


def test_targets_must_be_one_site_and_device() -> None:
    assert prefix("s1/d1") == "scanfleet/v1/s1/d1"
    for bad in ["s1", "s1/d1/x", "+/d1", "s1/#", "/d1"]:
        with pytest.raises(ValueError, match="SITE/DEVICE"):
            prefix(bad)


def test_health_problems_name_what_is_wrong() -> None:
    health = {
        "devices": {"scanner": "absent", "wedge": "bound"},
        "alarms": [{"code": "journal_full"}],
        "clock": "unsynced",
        "journal": {"oldest_undelivered_age_s": 900.0},
    }
    assert problems({"state": {"online": True}, "health": health}) == [
        "device scanner absent",
        "journal_full",
        "clock unsynced",
        "undelivered 900s",
    ]
    assert problems({"state": {"online": False}}) == ["offline", "no health"]
