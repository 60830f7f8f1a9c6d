"""Console page times with a province-sized hub database: 20 000 devices, 10 million records.

A private PostgreSQL cluster is filled with ``generate_series`` (the hub's schema, rows
shaped as ingest writes them), then the real console server renders each page several
times over HTTP. Reported per page: median and worst milliseconds, and the ratio to a
baseline measured in the same run (``/whoami``: one session lookup, no fleet query).
The goal is every page under 300 ms. ``SCANFLEET_BENCH_RECORDS`` scales the record
count down for a quick look.
"""

from __future__ import annotations

import http.cookiejar
import os
import statistics
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from scanfleet.hub.db import connect, upgrade
from scanfleet.provisioning.ca import FleetCA
from support.console import ConsoleServer, add_user
from support.postgres import PostgresCluster, find_pg_bin

DEVICES = 20_000
SITES = 200
RECORDS = int(os.environ.get("SCANFLEET_BENCH_RECORDS", "10000000"))
DAYS = 60
RUNS = 7
GOAL_MS = 300.0
PASSWORD = "bench password"  # noqa: S105 (throwaway account)

_SEED = """
INSERT INTO devices (device, site, online, last_seen, alarms, version, records, last_seq,
                     contiguous_seq, produced_seq, delivered_seq, updated_at)
SELECT 'sf-' || lpad(i::text, 12, '0'), format('site-%%s', i %% %(sites)s),
       i %% 20 <> 0,
       now() - CASE WHEN i %% 20 = 0 THEN interval '3 hours' ELSE interval '20 seconds' END,
       CASE WHEN i %% 33 = 0 THEN jsonb_build_array(jsonb_build_object(
            'code', 'journal_full', 'message', 'journal full', 'severity', 'critical',
            'since', '2026-12-01T08:00:00+00:00', 'details', '{}'::jsonb))
            WHEN i %% 17 = 0 THEN jsonb_build_array(jsonb_build_object(
            'code', 'clock_unsynced', 'message', 'clock', 'severity', 'warning',
            'since', '2026-12-01T08:00:00+00:00', 'details', '{}'::jsonb))
            ELSE '[]'::jsonb END,
       '0.1.0', %(per)s, %(per)s, %(per)s, %(per)s, %(per)s, now()
FROM generate_series(1, %(devices)s) AS i;

INSERT INTO health (device, site, time, payload)
SELECT d.device, d.site, now() - (k * interval '1 minute'),
       jsonb_build_object('journal', jsonb_build_object(
           'depth', k, 'last_seq', d.last_seq, 'delivered_seq', d.last_seq,
           'oldest_undelivered_age_s', k * 3.0, 'size_bytes', 1048576, 'budget_bytes', 67108864),
           'version', '0.1.0', 'clock', 'synced', 'config_version', 1,
           'cert_not_after', '2027-03-01T00:00:00+00:00')
FROM devices d, generate_series(0, 2) AS k;

INSERT INTO gaps (site, device, from_seq, to_seq, opened_at)
SELECT d.site, d.device, 10, 12, now() - interval '1 hour'
FROM devices d WHERE right(d.device, 3)::int %% 50 = 0;
"""

_RECORDS = """
INSERT INTO records (id, site, device, seq, type, kind, value, verdict, operation, time,
                     hash, prev_hash, hash_ok, payload)
SELECT d.device || ':' || s, d.site, d.device, s, 'scan', 'trace20',
       '8' || lpad((n * 7919 %% 10000000000000000000)::text, 19, '0'),
       CASE WHEN s %% 50 = 0 THEN 'refused' ELSE 'accepted' END, 'retail_sale',
       %(start)s::timestamptz + (s * %(step)s) * interval '1 second',
       md5(d.device || s) || md5(s::text || d.device), md5(d.device || (s - 1)),
       true, '\\x7b7d'::bytea
FROM (SELECT device, site, row_number() OVER (ORDER BY device) - 1 AS idx
      FROM devices) d,
     LATERAL generate_series(1, %(per)s) AS s,
     LATERAL (SELECT d.idx * %(per)s + s AS n) nn
WHERE d.idx >= %(lo)s AND d.idx < %(hi)s
"""


def _seed(dsn: str) -> float:
    per = max(1, RECORDS // DEVICES)
    started = time.monotonic()
    with connect(dsn) as conn:
        upgrade(conn)
        conn.execute("SET synchronous_commit = off")
        params = {"sites": SITES, "devices": DEVICES, "per": per}
        for statement in _SEED.split(";\n"):
            if statement.strip():
                conn.execute(statement.encode(), params)
        now = datetime.now(UTC)
        start = now.timestamp() - DAYS * 86400
        first = datetime.fromtimestamp(start, UTC)
        for index in range(first.year * 12 + first.month - 1, now.year * 12 + now.month):
            month = datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)
            conn.execute("SELECT hub_ensure_partition(%s)", (month,))
        conn.commit()
        step = DAYS * 86400 / per
        chunk = 1000
        for lo in range(0, DEVICES, chunk):
            conn.execute(
                _RECORDS.encode(),
                {
                    "start": datetime.fromtimestamp(start, UTC),
                    "step": step,
                    "per": per,
                    "lo": lo,
                    "hi": lo + chunk,
                },
            )
            conn.commit()
    with connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
    return time.monotonic() - started


class _Browser:
    """A cookie-keeping HTTP client, signed in."""

    def __init__(self, url: str, username: str) -> None:
        self.url = url
        jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
        form = urllib.parse.urlencode({"username": username, "password": PASSWORD}).encode()
        self.opener.open(f"{url}/login", data=form, timeout=60).read()

    def get_ms(self, path: str) -> tuple[float, int]:
        started = time.perf_counter()
        with self.opener.open(f"{self.url}{path}", timeout=60) as answer:
            body = answer.read()
        return (time.perf_counter() - started) * 1000, len(body)


def _pages(day: str) -> list[str]:
    return [
        "/",
        "/?site=site-7",
        "/?status=offline",
        "/?alarm=critical",
        "/?q=sf-0000000123",
        "/?page=50",
        "/fragment/overview",
        "/devices/sf-000000012345",
        "/audit",
        "/audit?site=site-7",
        f"/audit?site=site-7&day={day}",
        f"/audit?site=site-7&day={day}&format=csv",
        "/enrollment",
        "/people",
        "/auditlog",
    ]


def _cluster_settings(cluster: PostgresCluster) -> None:
    # A hub database server gets more than the tests' 32 MB of buffers.
    with (cluster.datadir / "postgresql.conf").open("a", encoding="utf-8") as conf:
        conf.write("shared_buffers = 512MB\nwork_mem = 16MB\nmaintenance_work_mem = 256MB\n")


def run() -> Iterator[dict[str, Any]]:
    """One JSON line for the seeding, one per page."""
    bindir = find_pg_bin()
    if bindir is None:
        raise RuntimeError("PostgreSQL is not installed")
    cluster = PostgresCluster(bindir)
    work = Path(tempfile.mkdtemp(prefix="scanfleet-bench-console-"))
    try:
        cluster.init()
        _cluster_settings(cluster)
        cluster.start()
        dsn = cluster.dsn(cluster.create_database("bench"))
        seed_s = _seed(dsn)
        yield {"what": "seed", "devices": DEVICES, "records": RECORDS, "seconds": round(seed_s, 1)}
        add_user(dsn, "admin", PASSWORD, "admin")
        ca = FleetCA.init(work / "fleet")
        server = ConsoleServer(dsn, work, "--fleet-dir", str(ca.paths.root)).start()
        try:
            client = _Browser(server.url, "admin")
            day = datetime.now(UTC).date().isoformat()
            baseline = [client.get_ms("/whoami")[0] for _ in range(RUNS)]
            base_ms = statistics.median(baseline)
            for path in _pages(day):
                client.get_ms(path)  # warm the caches once, as a help desk's second look
                times = [client.get_ms(path) for _ in range(RUNS)]
                ms = [t for t, _ in times]
                yield {
                    "page": path,
                    "median_ms": round(statistics.median(ms), 1),
                    "max_ms": round(max(ms), 1),
                    "bytes": times[-1][1],
                    "baseline_ms": round(base_ms, 1),
                    "ratio": round(statistics.median(ms) / base_ms, 1),
                    "under_goal": max(ms) < GOAL_MS,
                }
        finally:
            server.stop()
    finally:
        cluster.destroy()
