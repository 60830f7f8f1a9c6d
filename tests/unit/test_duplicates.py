"""Duplicate-scan index: same code + same operation is a duplicate; returns reset it;
split packs may repeat up to their unit count; the index rebuilds from the journal."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scanfleet.daemon.core.model import Operation
from scanfleet.daemon.journal.journal import Journal
from scanfleet.daemon.station.duplicates import INDEX_FILE, DuplicateIndex, open_index

CODE = "83711700200000000041"
OTHER = "83711700200000000042"


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    with Journal.open(tmp_path / "journal.sqlite3", "dev-1") as j:
        yield j


def _scan(journal: Journal, index: DuplicateIndex | None, code: str, op: str) -> dict[str, Any]:
    body = {
        "schema": "scanfleet.scan/1",
        "type": "scan",
        "value": code,
        "operation": op,
        "verdict": "accepted",
    }
    record = journal.append(body)
    if index is not None:
        index.add_record(record)
    return record


def test_the_same_code_for_the_same_operation_is_a_duplicate_of_the_first(
    tmp_path: Path, journal: Journal
) -> None:
    index = open_index(tmp_path, journal, window_days=30)
    first = _scan(journal, index, CODE, "retail_sale")
    check = index.check(CODE, Operation.RETAIL_SALE)
    assert check.duplicate_of == first["seq"]
    assert check.reason == f"duplicate scan: already scanned as seq {first['seq']}"
    assert index.check(OTHER, Operation.RETAIL_SALE).duplicate_of is None
    assert index.check(CODE, Operation.RECEIVING).duplicate_of is None


def test_a_customer_return_makes_a_sold_code_saleable_again(
    tmp_path: Path, journal: Journal
) -> None:
    index = open_index(tmp_path, journal, window_days=30)
    _scan(journal, index, CODE, "retail_sale")
    assert index.check(CODE, Operation.SALE_RETURN_IN).duplicate_of is None
    _scan(journal, index, CODE, "sale_return_in")
    assert index.check(CODE, Operation.RETAIL_SALE).duplicate_of is None
    again = _scan(journal, index, CODE, "retail_sale")
    assert index.check(CODE, Operation.RETAIL_SALE).duplicate_of == again["seq"]


def test_a_split_pack_may_be_scanned_up_to_its_unit_count(tmp_path: Path, journal: Journal) -> None:
    index = open_index(tmp_path, journal, window_days=30, split_packs={CODE[:7]: 3})
    seqs = []
    for _ in range(3):
        assert index.check(CODE, Operation.DISPENSE).duplicate_of is None
        seqs.append(_scan(journal, index, CODE, "dispense")["seq"])
    check = index.check(CODE, Operation.DISPENSE)
    assert check.duplicate_of == seqs[-1]
    assert check.reason == "split pack used up: 3 of 3 units already scanned"


def test_refused_scans_never_count(tmp_path: Path, journal: Journal) -> None:
    index = open_index(tmp_path, journal, window_days=30)
    record = journal.append(
        {"type": "scan", "value": CODE, "operation": "retail_sale", "verdict": "refused"}
    )
    index.add_record(record)
    assert index.check(CODE, Operation.RETAIL_SALE).duplicate_of is None


def test_a_lost_index_is_rebuilt_from_the_journal(tmp_path: Path, journal: Journal) -> None:
    first = _scan(journal, None, CODE, "retail_sale")  # journaled, index never told
    index = open_index(tmp_path, journal, window_days=30)
    assert index.check(CODE, Operation.RETAIL_SALE).duplicate_of == first["seq"]
    index.close()
    (tmp_path / INDEX_FILE).unlink()
    rebuilt = open_index(tmp_path, journal, window_days=30)
    assert rebuilt.check(CODE, Operation.RETAIL_SALE).duplicate_of == first["seq"]
    assert rebuilt.built_through == journal.last_seq


def test_the_check_can_be_switched_off(tmp_path: Path, journal: Journal) -> None:
    index = open_index(tmp_path, journal, window_days=30, enabled=False)
    _scan(journal, index, CODE, "retail_sale")
    assert index.check(CODE, Operation.RETAIL_SALE).duplicate_of is None
