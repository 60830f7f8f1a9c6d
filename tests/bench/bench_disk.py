"""Benchmark ``disk``: bytes on disk per scan after 100 000 scans and a WAL truncate.

Scans go through the normal append path (four appender threads, so group commit makes
the build quick); the size is the database file plus its WAL after
``PRAGMA wal_checkpoint(TRUNCATE)``. Target (issue 3): bytes_per_scan <= 600.
"""

from __future__ import annotations

import random
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import rfc8785

from scanfleet.daemon.journal.journal import Journal
from support.scans import make_scan_body

DEVICE = "sf-0a1b2c3d4e5f"
SCANS = 100_000
THREADS = 4


def run() -> Iterator[dict[str, Any]]:
    """One JSON line: the disk figures."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-disk-", dir="/var/tmp") as tmp:
        path = Path(tmp) / "journal.sqlite3"
        journal = Journal.open(path, DEVICE)
        payload_bytes = [0] * THREADS

        def worker(n: int) -> None:
            rng = random.Random(n)
            for i in range(n, SCANS, THREADS):
                record = journal.append(make_scan_body(i, rng))
                payload_bytes[n] += len(rfc8785.dumps(record))

        workers = [threading.Thread(target=worker, args=(n,)) for n in range(THREADS)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        last_seq = journal.last_seq
        commits = journal.commits
        journal.close()
        with sqlite3.connect(path) as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            pages = conn.execute("PRAGMA page_count").fetchone()[0]
            free = conn.execute("PRAGMA freelist_count").fetchone()[0]
            payload_stored = conn.execute("SELECT sum(length(payload)) FROM records").fetchone()[0]
        conn.close()
        wal = Path(str(path) + "-wal")
        size = path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)
    print(
        f"bench disk: {last_seq} scans in {commits} commits, {time.monotonic() - started:.0f} s",
        file=sys.stderr,
    )
    yield {
        "scans": last_seq,
        "bytes_per_scan": round(size / last_seq, 1),
        "file_bytes": size,
        "json_bytes_per_scan": round(sum(payload_bytes) / last_seq, 1),
        "stored_payload_bytes_per_scan": round(payload_stored / last_seq, 1),
        "free_pages": free,
        "pages": pages,
    }
