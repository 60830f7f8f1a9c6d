"""Benchmark ``hub_ingest``: broker queue → PostgreSQL with ack-after-commit, against COPY.

Throughput: N records of 200 devices (20 records per envelope, as a terminal's backlog
drain sends them) are queued in a private mosquitto for the hub's persistent session
while no worker runs; ``scanfleet hub ingest --workers 2`` then drains the queue into a
private PostgreSQL. Time = first row's transaction start to the moment the last row is
visible. Baseline, same run, same cluster: one raw ``COPY`` of the same rows (the same
columns, bytes included) into an unindexed table. ``ratio`` = ingest / COPY; target
>= 0.3.

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
from scanfleet.hub.records import COPY_COLUMNS, parse_scans, parse_topic
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


def _copy_baseline(dsn: str, chains: list[Chain]) -> float:
    rows = []
    for chain in chains:
        for first in range(1, chain.seq + 1, PER_BATCH):
            batch = chain.batch(first, min(chain.seq, first + PER_BATCH - 1))
            rows += [r.copy_tuple() for r in parse_scans(parse_topic(chain.topic), batch)]
    with psycopg.connect(dsn) as conn:
        conn.execute("CREATE TABLE copy_baseline (LIKE records INCLUDING DEFAULTS)")
        conn.commit()
        started = time.perf_counter()
        with (
            conn.cursor() as cur,
            cur.copy(
                psycopg.sql.SQL("COPY copy_baseline ({}) FROM STDIN").format(
                    psycopg.sql.SQL(", ").join(psycopg.sql.Identifier(c) for c in COPY_COLUMNS)
                )
            ) as copy,
        ):
            for row in rows:
                copy.write_row(row)
        conn.commit()
        return len(rows) / (time.perf_counter() - started)


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
            wait_for(
                lambda: query(dsn, "SELECT count(*) FROM records")[0][0] == total, 600, "drain"
            )
            (span,) = query(
                dsn, "SELECT extract(epoch FROM clock_timestamp() - min(received_at)) FROM records"
            )[0]
        finally:
            stop(ingest)
        rate = total / float(span)
        baseline = _copy_baseline(dsn, chains)
        return {
            "records": total,
            "workers": WORKERS,
            "records_per_s": round(rate),
            "copy_records_per_s": round(baseline),
            "ratio": round(rate / baseline, 3),
            "target_ratio": 0.3,
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
        yield {"case": "latency", **_latency(tmp, pg)}
    finally:
        pg.destroy()
        shutil.rmtree(tmp, ignore_errors=True)
