"""Receiving manifests: units and aggregate codes, expected / unexpected / already
scanned, and a summary that is matched only without differences."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scanfleet.daemon.core.errors import ConfigError
from scanfleet.daemon.core.records import CodeCount
from scanfleet.daemon.station.receiving import BillProgress, Manifest, load_manifest

PALLET, CASE = "83711700100000000001", "83711700100000000002"
UNITS = ["8371170020000000001" + str(i) for i in range(4)]


def _manifest() -> Manifest:
    return Manifest.model_validate(
        {
            "bill": "RK-1",
            "items": [
                {
                    "code": PALLET,
                    "pack_ratio": "1:2:2",
                    "children": [{"code": CASE, "children": UNITS[:2]}, UNITS[2]],
                },
                {"code": UNITS[3], "quantity": 10},
            ],
        }
    )


def test_an_aggregate_scan_receives_all_its_units_and_repeats_are_already_scanned() -> None:
    bill = BillProgress("RK-1", _manifest())
    assert bill.expected_units == 13
    check = bill.check(CASE)
    assert check is not None
    assert check.expected == "expected"
    bill.commit(CASE, check, seq=5, accepted=True)
    assert bill.received_units == 2
    for code in (CASE, UNITS[0], PALLET):
        again = bill.check(code)
        assert again is not None
        assert again.expected == "already_scanned"
        assert again.earlier_seq == 5


def test_the_summary_lists_missing_and_extra_and_is_not_matched_with_differences() -> None:
    bill = BillProgress("RK-1", _manifest())
    check = bill.check(PALLET)
    bill.commit(PALLET, check, seq=1, accepted=True)
    stray = bill.check("83711700999999999999")
    assert stray is not None
    assert stray.expected == "unexpected"
    bill.commit("83711700999999999999", stray, seq=2, accepted=False)
    summary = bill.tally()
    assert summary.status == "differences"
    assert summary.missing == [CodeCount(UNITS[3], 10)]
    assert summary.extra == [CodeCount("83711700999999999999", 1)]
    last = bill.check(UNITS[3])
    bill.commit(UNITS[3], last, seq=3, accepted=True)
    assert bill.tally().missing == []
    assert bill.tally().status == "differences"  # the stray code is still extra


def test_a_complete_bill_is_matched_and_a_bill_without_manifest_says_so() -> None:
    bill = BillProgress("RK-1", _manifest())
    for code in (PALLET, UNITS[3]):
        bill.commit(code, bill.check(code), seq=1, accepted=True)
    assert bill.tally().status == "matched"
    plain = BillProgress("X", None)
    assert plain.check(PALLET) is None
    assert plain.tally().status == "no_manifest"


def test_a_broken_manifest_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "RK-1.json"
    path.write_text(json.dumps({"bill": "RK-1", "items": [{"cod": "x"}]}), encoding="utf-8")
    with pytest.raises(ConfigError, match="not a usable manifest"):
        load_manifest(path)
