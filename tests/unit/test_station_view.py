"""The station view says in words what each record means and how far the bill is."""

from __future__ import annotations

import re

from scanfleet.daemon.ui.stationview import record_line, station_lines

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _plain(text: str) -> str:
    return _ANSI.sub("", text)


def test_the_station_block_shows_operation_bill_progress_and_a_failed_bill() -> None:
    status = {
        "operation": "receiving",
        "bill": "RK-1",
        "operator": "wang",
        "progress": {
            "manifest": True,
            "expected_units": 10,
            "received_units": 4,
            "scans": 2,
            "refused": 1,
        },
        "last_summary": {"bill": "RK-0", "status": "differences", "missing": [{}], "extra": []},
    }
    lines = [_plain(x) for x in station_lines(status)]
    assert "RECEIVING 入库验收" in lines[0]
    assert "bill RK-1" in lines[0]
    assert "operator wang" in lines[0]
    assert "[############..................] 4/10 units" in lines[1]
    assert "last bill RK-0: DIFFERENCES — 1 missing, 0 extra: do not receive" in lines[2]


def test_record_lines_name_duplicates_strays_entries_and_controls() -> None:
    dup = {
        "seq": 9,
        "type": "scan",
        "kind": "trace20",
        "value": "8371",
        "verdict": "refused",
        "duplicate_of": 3,
        "reason": "duplicate scan: already scanned as seq 3",
    }
    stray = {
        "seq": 10,
        "type": "scan",
        "kind": "trace20",
        "value": "8372",
        "verdict": "refused",
        "expected": "unexpected",
    }
    entry = {
        "seq": 11,
        "type": "manual_entry",
        "kind": "exempt",
        "category": "herbal",
        "quantity": 3,
        "verdict": None,
    }
    control = {
        "seq": 12,
        "type": "control",
        "action": "bill",
        "argument": "RK-2",
        "verdict": "accepted",
    }
    assert "8371  DUPLICATE of #3  (duplicate scan" in _plain(record_line(dup))
    assert "8372  NOT ON BILL" in _plain(record_line(stray))
    assert "exempt 中药饮片 x3" in _plain(record_line(entry))
    assert "set bill RK-2" in _plain(record_line(control))
