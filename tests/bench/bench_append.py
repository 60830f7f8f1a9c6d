"""Benchmark ``append``: durable appends per second against plain SQLite, and latency at 50/s.

Fields: ``scans_per_s`` (one appender, flat out), ``concurrent_scans_per_s`` (4
appender threads, group-committed), ``sqlite_baseline_rows_per_s`` (plain sqlite3 in
the same run: WAL, synchronous=FULL, one committed transaction per row of the same
size as a scan record), ``ratio`` = scans_per_s / baseline, ``concurrent_ratio`` =
concurrent_scans_per_s / baseline (with ``records_per_commit`` of those runs), and
``p50_ms``/``p99_ms`` of append at a steady 50 scans/s (plus ``sqlite_baseline_p99_ms``,
the plain-SQLite commit's p99 at the same rate, for the disk's own tail). The bodies
are typed :class:`ScanBody` records, as the pipeline hands them over.
Targets: ratio >= 0.7 and concurrent_ratio >= 2 (issue 16), p99 <= 5 ms (issue 3).
Rounds alternate baseline and journal; rates are medians over rounds and ``ratio`` is
the median of the per-round ratios, because the machine is shared and fsync times drift.
"""

from __future__ import annotations

import operator
import random
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import rfc8785

from scanfleet.daemon.core.records import ScanBody
from scanfleet.daemon.journal.journal import Journal
from support.scans import make_scan_record

DEVICE = "sf-0a1b2c3d4e5f"
ROUNDS = 7
PER_ROUND = 400
STEADY_RATE = 50.0
STEADY_SAMPLES = 1000


def _bodies(n: int, seed: int) -> list[ScanBody]:
    # Typed, as the pipeline hands them to the journal (to_body() is part of the cost).
    rng = random.Random(seed)
    return [make_scan_record(i, rng) for i in range(n)]


def _baseline(directory: Path, rows: list[bytes]) -> float:
    conn = sqlite3.connect(directory / "baseline.sqlite3", isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("CREATE TABLE IF NOT EXISTS t (seq INTEGER PRIMARY KEY, payload BLOB NOT NULL)")
    started = time.perf_counter()
    for row in rows:
        conn.execute("BEGIN")
        conn.execute("INSERT INTO t (payload) VALUES (?)", (row,))
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - started
    conn.close()
    return len(rows) / elapsed


def _flat_out(journal: Journal, bodies: list[ScanBody]) -> float:
    started = time.perf_counter()
    for body in bodies:
        journal.append(body)
    return len(bodies) / (time.perf_counter() - started)


def _concurrent(journal: Journal, bodies: list[ScanBody], threads: int = 4) -> float:
    parts = [bodies[n::threads] for n in range(threads)]

    def worker(part: list[ScanBody]) -> None:
        for body in part:
            journal.append(body)

    workers = [threading.Thread(target=worker, args=(p,)) for p in parts]
    started = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return len(bodies) / (time.perf_counter() - started)


def _steady(append: Callable[[int], object], samples: int) -> list[float]:
    latencies = []
    started = time.monotonic()
    for i in range(samples):
        due = started + i / STEADY_RATE
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        t0 = time.perf_counter()
        append(i)
        latencies.append((time.perf_counter() - t0) * 1000)
    return latencies


def _baseline_steady(directory: Path, row: bytes) -> list[float]:
    conn = sqlite3.connect(directory / "baseline-steady.sqlite3", isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("CREATE TABLE t (seq INTEGER PRIMARY KEY, payload BLOB NOT NULL)")

    def insert(_i: int) -> None:
        conn.execute("BEGIN")
        conn.execute("INSERT INTO t (payload) VALUES (?)", (row,))
        conn.execute("COMMIT")

    try:
        return _steady(insert, STEADY_SAMPLES // 2)
    finally:
        conn.close()


def run() -> Iterator[dict[str, Any]]:
    """One JSON line: the append figures."""
    bodies = _bodies(ROUNDS * PER_ROUND * 2 + STEADY_SAMPLES, seed=1)
    sizes = sorted(len(rfc8785.dumps(b.to_body())) + 200 for b in bodies[:500])  # + ids, hashes
    row = b"x" * sizes[len(sizes) // 2]
    base_rates, flat_rates, conc_rates = [], [], []
    conc_appends = conc_commits = 0
    with tempfile.TemporaryDirectory(prefix="bench-append-", dir="/var/tmp") as tmp:
        directory = Path(tmp)
        journal = Journal.open(directory / "journal.sqlite3", DEVICE)
        try:
            cursor = 0
            for n in range(ROUNDS):
                base_rates.append(_baseline(directory, [row] * PER_ROUND))
                flat_rates.append(_flat_out(journal, bodies[cursor : cursor + PER_ROUND]))
                cursor += PER_ROUND
                commits = journal.commits
                conc_rates.append(_concurrent(journal, bodies[cursor : cursor + PER_ROUND]))
                conc_commits += journal.commits - commits
                conc_appends += PER_ROUND
                cursor += PER_ROUND
                print(
                    f"bench append: round {n + 1}: baseline {base_rates[-1]:.0f}/s, "
                    f"journal {flat_rates[-1]:.0f}/s, 4 threads {conc_rates[-1]:.0f}/s",
                    file=sys.stderr,
                )
            commits_before = journal.commits
            steady = bodies[cursor : cursor + STEADY_SAMPLES]
            latencies = _steady(lambda i: journal.append(steady[i]), len(steady))
            steady_commits = journal.commits - commits_before
            # The disk's own fsync tail, same run: tells a slow journal from a noisy disk.
            base_latencies = _baseline_steady(directory, row)
        finally:
            journal.close()
    quantiles = statistics.quantiles(latencies, n=100)
    scans_per_s = statistics.median(flat_rates)
    baseline = statistics.median(base_rates)
    yield {
        "scans_per_s": round(scans_per_s, 1),
        "concurrent_scans_per_s": round(statistics.median(conc_rates), 1),
        "sqlite_baseline_rows_per_s": round(baseline, 1),
        # Each round pairs a baseline run with a journal run seconds apart; the median
        # of those paired ratios resists the machine's load drifting during the run.
        "ratio": round(statistics.median(map(operator.truediv, flat_rates, base_rates)), 3),
        "concurrent_ratio": round(
            statistics.median(map(operator.truediv, conc_rates, base_rates)), 3
        ),
        "records_per_commit": round(conc_appends / conc_commits, 2),
        "p50_ms": round(quantiles[49], 3),
        "p99_ms": round(quantiles[98], 3),
        "sqlite_baseline_p99_ms": round(statistics.quantiles(base_latencies, n=100)[98], 3),
        "steady_rate_per_s": STEADY_RATE,
        "steady_samples": len(latencies),
        "steady_commits": steady_commits,
        "baseline_row_bytes": len(row),
        "rounds": ROUNDS,
    }
