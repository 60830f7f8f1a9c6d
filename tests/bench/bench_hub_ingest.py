"""Benchmark ``hub_ingest``: broker queue → PostgreSQL with ack-after-commit, against COPY.

Throughput: N records of 200 devices (20 records per envelope, as a terminal's backlog
drain sends them) are queued in a private mosquitto for the hub's persistent session
while no worker runs; ``scanfleet hub ingest --workers 2`` then drains the queue into a
private PostgreSQL. Time = first row's transaction start to the moment the last row is
visible. Baseline, same run, same cluster: one raw ``COPY`` of the same rows (the same
columns, bytes included) into an unindexed table. ``ratio`` = ingest / COPY; target
>= 0.3. The same COPY in binary format (what the ingest itself uses) is reported beside
it as ``ratio_to_binary_copy``. The drain's end is seen by polling the per-device counts
the ingest commits with its rows (every 10 ms), then checked against ``count(*)``.

Latency: one terminal publishes one record per message at 500 records/s for
``LAT_SECONDS``; a poller watches the highest committed seq (1 ms interval). The
latency of seq s is the first time seq >= s is visible minus its publish time;
``p99_ms`` target <= 50. SCANFLEET_BENCH_HUB_N overrides N.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg

from scanfleet.hub.db import connect, upgrade
from scanfleet.hub.records import COPY_COLUMNS, COPY_TYPES, parse_scans, parse_topic
from support.broker import MOSQUITTO_DIRS, Mosquitto
from support.hub import Chain, Publisher, query, start_ingest, stop, wait_for
from support.postgres import PostgresCluster, find_pg_bin

N = int(os.environ.get("SCANFLEET_BENCH_HUB_N", "20000"))
DEVICES = 200
PER_BATCH = 20
LAT_RATE = 500
LAT_SECONDS = 8
WORKERS = int(os.environ.get("SCANFLEET_BENCH_HUB_WORKERS", "2"))


def _exe() -> str:
    found = shutil.which("mosquitto") or shutil.which(
        "mosquitto", path=os.pathsep.join(MOSQUITTO_DIRS)
    )
    if found is None:
        raise RuntimeError("mosquitto is not installed")
    return found


def _chains() -> list[Chain]:
    chains = [Chain(f"site-{i % 20:02d}", f"bench-{i:04d}") for i in range(DEVICES)]
    for chain in chains:
        for _ in range(N // DEVICES):
            chain.add()
    return chains


def _copy_baseline(dsn: str, chains: list[Chain], *, binary: bool = False) -> float:
    """Rows/s of one COPY of every row into an unindexed table (text or binary format)."""
    rows = []
    for chain in chains:
        for first in range(1, chain.seq + 1, PER_BATCH):
            batch = chain.batch(first, min(chain.seq, first + PER_BATCH - 1))
            rows += [r.copy_tuple() for r in parse_scans(parse_topic(chain.topic), batch)]
    table = "copy_baseline_binary" if binary else "copy_baseline"
    statement = psycopg.sql.SQL("COPY {} ({}) FROM STDIN{}").format(
        psycopg.sql.Identifier(table),
        psycopg.sql.SQL(", ").join(psycopg.sql.Identifier(c) for c in COPY_COLUMNS),
        psycopg.sql.SQL(" (FORMAT BINARY)" if binary else ""),
    )
    with psycopg.connect(dsn) as conn:
        conn.execute(
            psycopg.sql.SQL("CREATE TABLE {} (LIKE records INCLUDING DEFAULTS)").format(
                psycopg.sql.Identifier(table)
            )
        )
        conn.commit()
        started = time.perf_counter()
        with conn.cursor() as cur, cur.copy(statement) as copy:
            if binary:
                copy.set_types(COPY_TYPES)
            for row in rows:
                copy.write_row(row)
        conn.commit()
        return len(rows) / (time.perf_counter() - started)


def _drained(dsn: str, total: int) -> float:
    """Seconds from the first stored row's transaction start until all *total* are committed.

    Polls the per-device counts the ingest commits with the rows (a 200-row table, every
    10 ms) instead of counting ``records`` (a scan of up to 100 000 rows, every 100 ms,
    which took CPU from the drain it measured and added up to 100 ms to its end).
    """
    with psycopg.connect(dsn, autocommit=True) as conn:
        deadline = time.monotonic() + 600
        while True:
            row = conn.execute(
                "SELECT coalesce(sum(records), 0) = %s,"
                " extract(epoch FROM clock_timestamp()) FROM devices",
                (total,),
            ).fetchone()
            assert row is not None
            if row[0]:
                break
            if time.monotonic() > deadline:
                raise AssertionError("timed out after 600 s waiting for the drain")
            time.sleep(0.01)
        (first,) = conn.execute(
            "SELECT extract(epoch FROM min(received_at)) FROM records"
        ).fetchone() or (None,)
        return float(row[1]) - float(first)


def _throughput(tmp: Path, pg: PostgresCluster) -> dict[str, Any]:
    dsn = pg.dsn(pg.create_database("bench"))
    with connect(dsn) as conn:
        upgrade(conn)
    broker = Mosquitto(_exe(), tmp / "broker")
    broker.start()
    try:
        url = f"mqtt://{broker.host}:{broker.port}"
        args = ("--no-repair", "--client-id", "bench-hub", "--workers", str(WORKERS))
        # Create the persistent session and its shared subscription, then go away.
        first = start_ingest(dsn, url, tmp, *args, name="session")
        wait_for(
            lambda: (tmp / "session.log").read_text().count("subscribed") >= WORKERS, 30, "sessions"
        )
        stop(first)
        chains = _chains()
        pub = Publisher(broker.host, broker.port, "bench-terminals")
        for chain in chains:
            for start in range(1, chain.seq + 1, PER_BATCH):
                pub.send(chain.topic, chain.batch(start, min(chain.seq, start + PER_BATCH - 1)))
        pub.close()
        total = sum(c.seq for c in chains)
        ingest = start_ingest(dsn, url, tmp, *args, name="drain")
        try:
            span = _drained(dsn, total)
        finally:
            stop(ingest)
        assert query(dsn, "SELECT count(*) FROM records")[0][0] == total
        rate = total / float(span)
        baseline = _copy_baseline(dsn, chains)
        binary = _copy_baseline(dsn, chains, binary=True)
        return {
            "records": total,
            "workers": WORKERS,
            "records_per_s": round(rate),
            "copy_records_per_s": round(baseline),
            "ratio": round(rate / baseline, 3),
            "target_ratio": 0.3,
            # The ingest COPYs in binary; the same COPY in binary, for comparison.
            "copy_binary_records_per_s": round(binary),
            "ratio_to_binary_copy": round(rate / binary, 3),
        }
    finally:
        broker.stop()


def _latency(tmp: Path, pg: PostgresCluster) -> dict[str, Any]:
    dsn = pg.dsn(pg.create_database("latency"))
    with connect(dsn) as conn:
        upgrade(conn)
    broker = Mosquitto(_exe(), tmp / "broker-lat")
    broker.start()
    chain = Chain("site-lat", "bench-lat")
    count = LAT_RATE * LAT_SECONDS
    for _ in range(count):
        chain.add()
    sent: dict[int, float] = {}
    seen: dict[int, float] = {}
    done = threading.Event()

    def poll() -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            top = 0
            while not done.is_set() and top < count:
                row = conn.execute(
                    "SELECT coalesce(max(seq), 0) FROM records WHERE device = 'bench-lat'"
                ).fetchone()
                now = time.perf_counter()
                new = int(row[0]) if row else 0
                for s in range(top + 1, new + 1):
                    seen[s] = now
                top = max(top, new)
                time.sleep(0.001)

    try:
        url = f"mqtt://{broker.host}:{broker.port}"
        ingest = start_ingest(dsn, url, tmp, "--no-repair", name="latency")
        wait_for(lambda: "subscribed" in (tmp / "latency.log").read_text(), 30, "subscribed")
        pub = Publisher(broker.host, broker.port, "bench-lat")
        poller = threading.Thread(target=poll)
        poller.start()
        started = time.perf_counter()
        for s in range(1, count + 1):
            due = started + (s - 1) / LAT_RATE
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            sent[s] = time.perf_counter()
            pub.client.publish(chain.topic, chain.batch(s, s), qos=1)
        wait_for(lambda: len(seen) >= count, 60, "every record committed")
        done.set()
        poller.join()
        pub.close()
        stop(ingest)
    finally:
        done.set()
        broker.stop()
    latencies = sorted((seen[s] - sent[s]) * 1000 for s in range(1, count + 1))
    return {
        "rate_per_s": LAT_RATE,
        "records": count,
        "p50_ms": round(statistics.median(latencies), 1),
        "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1], 1),
        "max_ms": round(latencies[-1], 1),
        "target_p99_ms": 50,
    }


def run() -> Iterator[dict[str, Any]]:
    """The throughput line, then the latency line."""
    bindir = find_pg_bin()
    if bindir is None:
        raise RuntimeError("PostgreSQL is not installed")
    tmp = Path(tempfile.mkdtemp(prefix="bench-hub-"))
    pg = PostgresCluster(bindir)
    try:
        pg.init()
        pg.start()
        yield {"case": "drain", **_throughput(tmp, pg)}
        # The drain and its COPY baselines leave up to ~150 MB of dirty pages; written out
        # now, not by a checkpoint in the middle of the latency run.
        with psycopg.connect(pg.dsn(), autocommit=True) as conn:
            conn.execute("CHECKPOINT")
        yield {"case": "latency", **_latency(tmp, pg)}
    finally:
        pg.destroy()
        shutil.rmtree(tmp, ignore_errors=True)
