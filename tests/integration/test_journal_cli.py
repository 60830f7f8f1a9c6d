"""``scanfleet verify`` and ``scanfleet export`` as real processes on real journal files."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import pty
import random
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import rfc8785

from scanfleet.daemon.journal.journal import Journal
from support.scans import EPOCH, make_scan_body

pytestmark = pytest.mark.integration

DEVICE = "sf-0a1b2c3d4e5f"
N = 60


def scanfleet(*args: str, stderr: int = subprocess.PIPE) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "scanfleet.daemon", *args],
        stdout=subprocess.PIPE,
        stderr=stderr,
        timeout=120,
        check=False,
    )


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    rng = random.Random(4)
    with Journal.open(tmp_path / "journal.sqlite3", DEVICE) as journal:
        for i in range(N):
            journal.append(make_scan_body(i, rng))
    return tmp_path


@pytest.fixture
def stored(state_dir: Path) -> Iterator[list[bytes]]:
    with Journal.open_readonly(state_dir / "journal.sqlite3") as reader:
        yield [r.payload for r in reader.iter_records()]


def test_verify_exits_0_on_an_intact_journal(state_dir: Path) -> None:
    done = scanfleet("verify", "--state-dir", str(state_dir), "--full")
    assert done.returncode == 0, done.stderr
    assert b"OK" in done.stdout
    assert f"{N} records".encode() in done.stdout


def test_verify_exits_1_and_names_the_first_bad_seq(state_dir: Path) -> None:
    path = state_dir / "journal.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.execute("DELETE FROM records WHERE seq = 17")
    done = scanfleet("verify", "--journal", str(path))
    assert done.returncode == 1
    assert b"seq 17" in done.stdout


def test_verify_of_a_missing_journal_fails_with_a_message(tmp_path: Path) -> None:
    done = scanfleet("verify", "--state-dir", str(tmp_path))
    assert done.returncode == 1
    assert b"no journal" in done.stderr


def test_export_jsonl_is_the_canonical_records_one_per_line(
    state_dir: Path, stored: list[bytes]
) -> None:
    done = scanfleet("export", "--state-dir", str(state_dir))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines == stored
    prev = "0" * 64
    for line in lines:  # a backup verifies without scanfleet
        record = json.loads(line)
        assert rfc8785.dumps(record) == line
        digest = record.pop("hash")
        assert record["prev_hash"] == prev
        assert hashlib.sha256(rfc8785.dumps(record)).hexdigest() == digest
        prev = digest


def test_export_selects_a_seq_range_into_a_file(
    state_dir: Path, stored: list[bytes], tmp_path: Path
) -> None:
    out = tmp_path / "backup.jsonl"
    done = scanfleet(
        "export",
        "--state-dir",
        str(state_dir),
        "--from-seq",
        "10",
        "--to-seq",
        "19",
        "-o",
        str(out),
    )
    assert done.returncode == 0, done.stderr
    assert out.read_bytes().splitlines() == stored[9:19]
    assert not list(tmp_path.glob(".*.partial"))


def test_export_selects_a_time_range(state_dir: Path, stored: list[bytes]) -> None:
    # Body i is at EPOCH + 2.5 s * i (+ < 1 s): [EPOCH + 25 s, EPOCH + 50 s) is bodies 10..19.
    since = (EPOCH + timedelta(seconds=25)).isoformat()
    until = (EPOCH + timedelta(seconds=50)).replace(tzinfo=None).isoformat()  # naive = UTC
    done = scanfleet("export", "--state-dir", str(state_dir), "--since", since, "--until", until)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == stored[10:20]


def test_export_csv_flattens_the_main_columns(
    state_dir: Path, stored: list[bytes], tmp_path: Path
) -> None:
    out = tmp_path / "scans.csv"
    done = scanfleet("export", "--state-dir", str(state_dir), "--format", "csv", "-o", str(out))
    assert done.returncode == 0, done.stderr
    with out.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == N
    for row, payload in zip(rows, stored, strict=True):
        record = json.loads(payload)
        for column in ("id", "time", "kind", "value", "raw", "verdict", "operation", "hash"):
            assert row[column] == (record[column] or "")
        assert int(row["seq"]) == record["seq"]
        assert row["source_driver"] == record["source"]["driver"]
        assert json.loads(row["fields"]) == record["fields"]


def test_export_sqlite_writes_a_plain_table_for_inspection(
    state_dir: Path, stored: list[bytes], tmp_path: Path
) -> None:
    out = tmp_path / "inspect.db"
    done = scanfleet("export", "--state-dir", str(state_dir), "--format", "sqlite", "-o", str(out))
    assert done.returncode == 0, done.stderr
    with sqlite3.connect(out) as conn:
        rows = conn.execute("SELECT seq, kind, record FROM records ORDER BY seq").fetchall()
    assert [r[2].encode() for r in rows] == stored
    assert rows[0][1] == json.loads(stored[0])["kind"]


def test_export_reads_while_the_daemon_holds_the_journal(state_dir: Path) -> None:
    with Journal.open(state_dir / "journal.sqlite3", DEVICE) as journal:
        journal.append(make_scan_body(N, random.Random(1)))
        done = scanfleet("export", "--state-dir", str(state_dir))
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == N + 1


def test_export_draws_a_progress_bar_only_on_a_terminal(state_dir: Path, tmp_path: Path) -> None:
    # Never a system path: writing to /dev/null as root once replaced the device node.
    out = str(tmp_path / "out.jsonl")
    quiet = scanfleet("export", "--state-dir", str(state_dir), "-o", out)
    assert b"export [" not in quiet.stderr
    controller, terminal = pty.openpty()
    try:
        done = scanfleet("export", "--state-dir", str(state_dir), "-o", out, stderr=terminal)
        os.close(terminal)
        terminal = -1
        shown = b""
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # EIO: the terminal side is closed and drained
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(controller)
        if terminal >= 0:
            os.close(terminal)
    assert done.returncode == 0
    assert b"export [" in shown
    assert f"{N}/{N}".encode() in shown
