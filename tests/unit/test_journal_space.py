"""The journal's space policy on real files: budget, retention, pruning, refusal."""

from __future__ import annotations

import random
import sqlite3
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from scanfleet.daemon.core.alarms import AlarmSet
from scanfleet.daemon.core.errors import JournalFullError
from scanfleet.daemon.journal.journal import Journal
from support.scans import EPOCH, make_scan_body

DEVICE = "sf-0a1b2c3d4e5f"
BUDGET = 96 << 10


class Clock:
    """A wall clock the test moves by hand."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def fill_until_full(journal: Journal, rng: random.Random, limit: int = 20_000) -> JournalFullError:
    for i in range(limit):
        try:
            journal.append(make_scan_body(journal.last_seq + i, rng))
        except JournalFullError as err:
            return err
    raise AssertionError(f"a {BUDGET}-byte journal took {limit} records without filling")


def undelivered_seqs(journal: Journal) -> list[int]:
    records = journal.read_after(journal.delivered_seq, limit=10**6, max_bytes=1 << 40)
    return [r.seq for r in records]


def used_bytes(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        size = conn.execute("PRAGMA page_size").fetchone()[0]
    return int((pages - free) * size)


def test_small_budget_keeps_undelivered_prunes_delivered_and_refuses_only_when_full(
    tmp_path: Path,
) -> None:
    path = tmp_path / "journal.sqlite3"
    alarms = AlarmSet()
    rng = random.Random(5)
    journal = Journal.open(
        path, DEVICE, max_bytes=BUDGET, alarms=alarms, clock=Clock(EPOCH + timedelta(days=1))
    )
    with journal:
        # Nothing delivered: the budget fills with undelivered records, then appends are refused.
        err = fill_until_full(journal, rng)
        first_full = journal.last_seq
        assert first_full > 100
        assert err.budget_bytes == BUDGET
        assert "journal_full" in alarms
        assert undelivered_seqs(journal) == list(range(1, first_full + 1))
        with pytest.raises(JournalFullError):  # still full: refused again, nothing lost
            journal.append(make_scan_body(0, rng))
        assert journal.last_seq == first_full

        # Half delivered: appends work again by pruning the OLDEST delivered records.
        journal.mark_delivered(first_full // 2)
        record = journal.append(make_scan_body(first_full, rng))
        assert record["seq"] == first_full + 1
        assert "journal_full" not in alarms
        assert "journal_pruned_under_pressure" in alarms  # all of it was inside retention
        pruned = journal.stats().pruned_through_seq
        assert 0 < pruned <= first_full // 2
        assert journal.read_after(0, limit=1, max_bytes=1 << 20)[0].seq == pruned + 1
        assert undelivered_seqs(journal) == list(range(first_full // 2 + 1, first_full + 2))

        # Fill again: every delivered record goes, no undelivered one does.
        fill_until_full(journal, rng)
        stats = journal.stats()
        assert stats.pruned_through_seq == stats.delivered_seq == first_full // 2
        assert undelivered_seqs(journal) == list(range(first_full // 2 + 1, stats.last_seq + 1))
        result = journal.verify(full=True)
        assert result.ok, str(result)
        assert result.anchor_seq == first_full // 2

        # Everything delivered: appends continue, the chain still verifies from its anchor.
        journal.mark_delivered(journal.last_seq)
        for i in range(50):
            journal.append(make_scan_body(i, rng))
        assert journal.verify().ok
    assert used_bytes(path) <= BUDGET + 2 * 4096


def test_retention_prunes_old_delivered_records_and_gives_space_back(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    rng = random.Random(9)
    with Journal.open(path, DEVICE, clock=Clock(EPOCH + timedelta(days=1))) as journal:
        for i in range(2000):  # 2.5 s apart: EPOCH .. EPOCH + 83 min
            journal.append(make_scan_body(i, rng))
        journal.mark_delivered(1500)
    size_before = path.stat().st_size

    alarms = AlarmSet()
    later = Clock(EPOCH + timedelta(days=100, minutes=30))
    with Journal.open(path, DEVICE, alarms=alarms, clock=later) as journal:
        stats = journal.stats()
        # Records older than EPOCH + 30 min (body 720 on) are past retention.
        assert stats.pruned_through_seq == 720
        assert journal.read_after(0, limit=1, max_bytes=1 << 20)[0].seq == 721
        assert "journal_pruned_under_pressure" not in alarms
        assert journal.verify(full=True).ok

        later.now = EPOCH + timedelta(days=200)  # everything old now, only delivered may go
        assert journal.prune() == 1500 - 720
        assert undelivered_seqs(journal) == list(range(1501, 2001))
        assert journal.verify().ok
    assert path.stat().st_size < size_before * 0.5


def test_retention_never_drops_undelivered_records(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    rng = random.Random(3)
    clock = Clock(EPOCH)
    with Journal.open(path, DEVICE, retention_days=1, clock=clock) as journal:
        for i in range(100):
            journal.append(make_scan_body(i, rng))
        clock.now = EPOCH + timedelta(days=365)
        assert journal.prune() == 0
        assert undelivered_seqs(journal) == list(range(1, 101))
