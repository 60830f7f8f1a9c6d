"""The journal on real SQLite files: seq, hash chain, verification, schema, quarantine."""

from __future__ import annotations

import hashlib
import json
import random
import sqlite3
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import rfc8785

from scanfleet.daemon.core.alarms import AlarmSet
from scanfleet.daemon.core.errors import JournalError, JournalSchemaError
from scanfleet.daemon.core.model import GENESIS_HASH, Scan
from scanfleet.daemon.journal.codec import Codec
from scanfleet.daemon.journal.journal import Journal, RecordError
from support.scans import EPOCH, make_scan_body

DEVICE = "sf-0a1b2c3d4e5f"


def fixed_clock() -> datetime:
    return EPOCH + timedelta(days=1)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "journal.sqlite3"


@pytest.fixture
def journal(path: Path) -> Iterator[Journal]:
    with Journal.open(path, DEVICE, clock=fixed_clock) as j:
        yield j


def bodies(n: int, seed: int = 7) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [make_scan_body(i, rng) for i in range(n)]


def sql(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


def test_records_get_gapless_seq_starting_at_one_and_the_idempotency_id(
    journal: Journal,
) -> None:
    records = [journal.append(b) for b in bodies(20)]
    assert [r["seq"] for r in records] == list(range(1, 21))
    assert all(r["id"] == f"{DEVICE}:{r['seq']}" and r["device"] == DEVICE for r in records)
    assert journal.last_seq == 20


def test_every_hash_covers_the_canonical_record_and_links_to_the_previous_one(
    journal: Journal,
) -> None:
    records = [journal.append(b) for b in bodies(10)]
    prev = GENESIS_HASH
    for record in records:
        without = {k: v for k, v in record.items() if k != "hash"}
        assert record["prev_hash"] == prev
        assert record["hash"] == hashlib.sha256(rfc8785.dumps(without)).hexdigest()
        prev = record["hash"]


def test_stored_payload_is_exactly_the_canonical_record_and_a_valid_scan(
    journal: Journal,
) -> None:
    appended = [journal.append(b) for b in bodies(300)]  # crosses dictionary training
    stored = journal.read_after(0, limit=1000, max_bytes=10 << 20)
    assert [r.seq for r in stored] == list(range(1, 301))
    for record, row in zip(appended, stored, strict=True):
        assert row.payload == rfc8785.dumps(record)
        assert row.time == datetime.fromisoformat(record["time"])
        Scan.model_validate_json(row.payload)


def test_datetime_time_is_stored_as_utc_iso_text(journal: Journal) -> None:
    body = bodies(1)[0]
    body["time"] = datetime(2026, 11, 2, 17, 0, 1, 5, tzinfo=UTC)
    record = journal.append(body)
    assert record["time"] == "2026-11-02T17:00:01.000005Z"


def test_a_body_carrying_journal_fields_is_rejected_without_using_a_seq(journal: Journal) -> None:
    body = bodies(1)[0]
    with pytest.raises(RecordError):
        journal.append({**body, "seq": 99})
    with pytest.raises(RecordError):
        journal.append({**body, "time": "2026-11-02T08:00:00"})  # no timezone
    assert journal.append(body)["seq"] == 1


def test_chain_continues_across_reopen(path: Path) -> None:
    with Journal.open(path, DEVICE, clock=fixed_clock) as j:
        last = [j.append(b) for b in bodies(5)][-1]
    with Journal.open(path, DEVICE, clock=fixed_clock) as j:
        assert j.last_seq == 5
        nxt = j.append(bodies(1, seed=3)[0])
        assert nxt["seq"] == 6
        assert nxt["prev_hash"] == last["hash"]
        assert j.verify(full=True).ok


def test_a_journal_belongs_to_one_device(path: Path) -> None:
    Journal.open(path, DEVICE).close()
    with pytest.raises(JournalError, match="journal of device"):
        Journal.open(path, "sf-ffffffffffff")


def test_a_second_writer_is_refused_while_the_first_holds_the_journal(
    journal: Journal, path: Path
) -> None:
    with pytest.raises(JournalError, match="in use"):
        Journal.open(path, DEVICE)
    journal.close()
    Journal.open(path, DEVICE).close()


def test_read_after_honours_limit_and_byte_bound_but_returns_at_least_one(
    journal: Journal,
) -> None:
    for b in bodies(30):
        journal.append(b)
    assert [r.seq for r in journal.read_after(10, limit=5, max_bytes=1 << 20)] == [
        11,
        12,
        13,
        14,
        15,
    ]
    one = journal.read_after(10, limit=5, max_bytes=1)
    assert [r.seq for r in one] == [11]
    some = journal.read_after(0, limit=100, max_bytes=3000)
    assert 1 <= len(some) < 30
    assert sum(len(r.payload) for r in some) <= 3000
    assert journal.read_after(30, limit=5, max_bytes=1 << 20) == []


def test_delivered_watermark_is_monotonic_and_persisted(path: Path) -> None:
    with Journal.open(path, DEVICE, clock=fixed_clock) as j:
        for b in bodies(10):
            j.append(b)
        j.mark_delivered(7)
        j.mark_delivered(3)  # a late acknowledgement never moves it back
        assert j.delivered_seq == 7
        with pytest.raises(ValueError):
            j.mark_delivered(11)
        stats = j.stats()
        assert (stats.last_seq, stats.delivered_seq, stats.depth) == (10, 7, 3)
        eighth = j.read_after(7, limit=1, max_bytes=1 << 20)[0]
        assert stats.oldest_undelivered_time == eighth.time
    with Journal.open(path, DEVICE, clock=fixed_clock) as j:
        assert j.delivered_seq == 7


def test_wait_for_records_is_woken_by_an_append(journal: Journal) -> None:
    assert journal.wait_for_records(0, timeout=0.05) is False
    timer = threading.Timer(0.1, lambda: journal.append(bodies(1)[0]))
    timer.start()
    assert journal.wait_for_records(0, timeout=30) is True
    timer.join()


def test_wake_waiters_ends_a_long_wait_for_records_at_once(journal: Journal) -> None:
    timer = threading.Timer(0.1, journal.wake_waiters)
    timer.start()
    started = time.monotonic()
    assert journal.wait_for_records(0, timeout=30) is False
    assert time.monotonic() - started < 5
    timer.join()


def test_appends_waiting_during_a_commit_share_the_next_transaction(journal: Journal) -> None:
    journal.append(bodies(1)[0])
    base = journal.commits
    results: list[dict[str, Any]] = []
    items = bodies(4, seed=11)
    # Hold the write side so the first appender (the leader) waits with its own record
    # while the other three queue behind it: they must go in ONE transaction after it.
    with journal._write_lock:
        threads = [
            threading.Thread(target=lambda b=b: results.append(journal.append(b))) for b in items
        ]
        threads[0].start()
        # The leader has taken its record out of the queue (its batch is closed).
        while not journal._leader or journal._queue:
            time.sleep(0.001)
        for t in threads[1:]:
            t.start()
        while len(journal._queue) < 3:
            time.sleep(0.001)
    for t in threads:
        t.join()
    assert journal.commits - base == 2
    assert sorted(r["seq"] for r in results) == [2, 3, 4, 5]
    assert journal.verify().ok


def test_group_commit_from_four_threads_keeps_seq_gapless_and_chain_valid(
    journal: Journal,
) -> None:
    got: list[list[int]] = [[] for _ in range(4)]

    def worker(n: int) -> None:
        for b in bodies(100, seed=n):
            got[n].append(journal.append(b)["seq"])

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(s for g in got for s in g) == list(range(1, 401))
    assert all(g == sorted(g) for g in got)  # each thread's records keep its order
    result = journal.verify(full=True)
    assert result.ok, str(result)
    assert result.checked == 400


def _tamper(path: Path, seq: int, change: dict[str, Any]) -> None:
    """Rewrite one record's payload in the file the way an attacker with sqlite3 could."""
    with sql(path) as conn:
        dict_id, blob = conn.execute(
            "SELECT dict, payload FROM records WHERE seq = ?", (seq,)
        ).fetchone()
        codec = Codec()
        for i, data in conn.execute("SELECT id, data FROM dictionaries"):
            codec.add(i, data)
        record = json.loads(codec.decompress(dict_id, blob))
        record.update(change)
        new = codec.compress(dict_id, rfc8785.dumps(record))
        conn.execute("DROP TRIGGER records_append_only")
        conn.execute("UPDATE records SET payload = ? WHERE seq = ?", (new, seq))


def test_records_cannot_be_rewritten_in_place(journal: Journal, path: Path) -> None:
    journal.append(bodies(1)[0])
    with sql(path) as conn, pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("UPDATE records SET time_us = 0 WHERE seq = 1")


def test_verify_names_a_tampered_record(path: Path) -> None:
    with Journal.open(path, DEVICE, clock=fixed_clock) as j:
        for b in bodies(12):
            j.append(b)
    _tamper(path, 7, {"value": "81234560000000000000"})
    with Journal.open_readonly(path) as reader:
        result = reader.verify()
    assert not result.ok
    assert result.first_bad_seq == 7
    assert "hash" in (result.problem or "")


def test_verify_names_a_tampered_record_whose_hash_was_recomputed(path: Path) -> None:
    with Journal.open(path, DEVICE, clock=fixed_clock) as j:
        for b in bodies(12):
            j.append(b)
        record = j.read_after(6, limit=1, max_bytes=1 << 20)[0].as_dict()
    record["value"] = "81234560000000000000"
    del record["hash"]
    forged = hashlib.sha256(rfc8785.dumps(record)).hexdigest()
    _tamper(path, 7, {"value": record["value"], "hash": forged})
    with Journal.open_readonly(path) as reader:
        result = reader.verify()
    # Record 7 is self-consistent now, so the break shows as record 8's dangling link.
    assert (result.ok, result.first_bad_seq) == (False, 8)


@pytest.mark.parametrize("victim", [5, 1, 12])
def test_verify_names_a_deleted_record(path: Path, victim: int) -> None:
    with Journal.open(path, DEVICE, clock=fixed_clock) as j:
        for b in bodies(12):
            j.append(b)
    with sql(path) as conn:
        conn.execute("DELETE FROM records WHERE seq = ?", (victim,))
    with Journal.open_readonly(path) as reader:
        result = reader.verify()
    assert (result.ok, result.first_bad_seq) == (False, victim)


def test_a_journal_from_a_newer_scanfleet_is_refused_untouched(path: Path) -> None:
    Journal.open(path, DEVICE).close()
    with sql(path) as conn:
        conn.execute("PRAGMA user_version = 2")
    before = path.read_bytes()
    with pytest.raises(JournalSchemaError, match="newer"):
        Journal.open(path, DEVICE)
    with pytest.raises(JournalSchemaError):
        Journal.open_readonly(path)
    assert path.read_bytes() == before
    assert not list(path.parent.glob("*.corrupt-*"))


def test_a_garbage_file_is_quarantined_and_a_new_journal_started(path: Path) -> None:
    with Journal.open(path, DEVICE, clock=fixed_clock) as j:
        for b in bodies(50):
            j.append(b)
    size = path.stat().st_size
    path.write_bytes(random.Random(1).randbytes(size))
    alarms = AlarmSet()
    with Journal.open(path, DEVICE, alarms=alarms, clock=fixed_clock) as j:
        assert "journal_quarantined" in alarms
        set_aside = list(path.parent.glob("journal.sqlite3.corrupt-*Z"))  # not -wal/-shm
        assert len(set_aside) == 1
        assert set_aside[0].stat().st_size == size  # kept, never deleted
        # Nothing was readable, but the head file says how far the seq went: the journal
        # continues after the reservation with a journal_loss record, never at seq 1.
        loss = j.read_after(0, limit=10, max_bytes=1 << 20)[-1].as_dict()
        assert loss["type"] == "journal_loss"
        assert loss["lost"] == [{"first_seq": 1, "last_seq": 50}]
        assert loss["reserved"] == {"first_seq": 51, "last_seq": loss["seq"] - 1}
        assert j.append(bodies(1)[0])["seq"] == loss["seq"] + 1
        assert j.verify(full=True).ok


def test_a_damaged_page_is_quarantined_and_the_new_journal_continues_the_seq(
    path: Path,
) -> None:
    with Journal.open(path, DEVICE, clock=fixed_clock) as j:
        for b in bodies(400):
            j.append(b)
        last = j.last_seq
        head_hash = j.read_after(last - 1, limit=1, max_bytes=1 << 20)[0].as_dict()["hash"]
    with path.open("r+b") as f:  # smash a records page in the middle of the file
        f.seek(path.stat().st_size // 2 // 4096 * 4096)
        f.write(b"\xa5" * 4096)
    alarms = AlarmSet()
    with Journal.open(path, DEVICE, alarms=alarms, clock=fixed_clock) as j:
        assert "journal_quarantined" in alarms
        records = j.read_after(0, limit=1000, max_bytes=1 << 30)
        loss = records[-1].as_dict()
        # Every record not on the smashed page was salvaged verbatim; the chain goes on
        # from the last surviving record.
        assert loss["type"] == "journal_loss"
        assert (loss["anchor_seq"], loss["prev_hash"]) == (last, head_hash)
        assert loss["seq"] > last
        assert 0 < loss["salvaged"] < 400
        spans = [*loss["lost"], *([loss["reserved"]] if loss["reserved"] else [])]
        lost = {s for r in spans for s in range(r["first_seq"], r["last_seq"] + 1)}
        assert {r.seq for r in records[:-1]} | lost == set(range(1, loss["seq"]))
        result = j.verify()
        assert result.ok, result


def test_readonly_reader_sees_the_daemons_records_without_the_writer_lock(
    journal: Journal, path: Path
) -> None:
    for b in bodies(5):
        journal.append(b)
    with Journal.open_readonly(path) as reader:
        assert [r.seq for r in reader.iter_records()] == [1, 2, 3, 4, 5]
        journal.append(bodies(1, seed=2)[0])
        assert reader.stats().last_seq == 6
        assert reader.verify().ok
        with pytest.raises(sqlite3.OperationalError):
            reader._conn.execute("DELETE FROM records")


def test_readonly_open_of_a_missing_journal_says_so(tmp_path: Path) -> None:
    with pytest.raises(JournalError, match="no journal"):
        Journal.open_readonly(tmp_path / "nothing.sqlite3")


def test_a_foreign_sqlite_database_is_refused_not_quarantined(path: Path) -> None:
    path.parent.mkdir(parents=True)
    with sql(path) as conn:
        conn.execute("CREATE TABLE inventory (sku TEXT)")
    with pytest.raises(JournalSchemaError, match="not a journal"):
        Journal.open(path, DEVICE)
    with sql(path) as conn:
        assert conn.execute("SELECT name FROM sqlite_master").fetchall() == [("inventory",)]
    assert not list(path.parent.glob("*.corrupt-*"))


def test_a_failed_open_releases_what_it_opened(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    head = path.with_name(path.name + ".head")
    head.mkdir()  # the seq reservation cannot be written: open fails after the SQLite open
    threads = {t.name for t in threading.enumerate()}
    with pytest.raises(JournalError):
        Journal.open(path, DEVICE)
    assert {t.name for t in threading.enumerate()} <= threads  # no checkpointer left behind
    head.rmdir()
    # The writer lock and the connections were released: the same process opens it again.
    with Journal.open(path, DEVICE, clock=fixed_clock) as j:
        assert j.last_seq == 0
