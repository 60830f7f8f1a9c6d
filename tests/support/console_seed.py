"""A small hub database for the console's browser tests and screenshots.

Rows are written as the hub's ingest writes them (schema v1 tables): three sites, online
terminals with health figures and records, one offline terminal with a critical alarm
and an open gap.
"""

from __future__ import annotations

import json
from pathlib import Path

from scanfleet.hub.db import connect

OFFLINE_DEVICE = "sf-00000000off1"
ONLINE_DEVICE = "sf-000000000on1"
OTHER_SITE_DEVICE = "sf-00000000s9d1"

_HEALTH = {
    "journal": {
        "depth": 0,
        "last_seq": 40,
        "delivered_seq": 40,
        "oldest_undelivered_age_s": None,
        "size_bytes": 2_400_000,
        "budget_bytes": 64 * 1024 * 1024,
    },
    "version": "0.1.0",
    "clock": "synced",
    "config_version": 3,
    "cert_not_after": "2027-03-01T00:00:00+00:00",
}


def seed_fleet(dsn: str, work: Path) -> None:
    """Fill *dsn* (already upgraded) with the test fleet."""
    del work
    alarm = {
        "code": "journal_full",
        "message": "journal full: new scans are refused",
        "severity": "critical",
        "since": "2026-12-07T08:00:00+00:00",
        "details": {},
    }
    warning = {
        **alarm,
        "code": "clock_unsynced",
        "message": "clock not synced",
        "severity": "warning",
    }
    with connect(dsn) as conn:
        conn.execute(
            "INSERT INTO devices (device, site, online, last_seen, alarms, version, records,"
            " last_seq, contiguous_seq, produced_seq, delivered_seq) VALUES"
            " (%s, 'store-1', false, now() - interval '2 hours', %s, '0.1.0', 3, 5, 3, 9, 5),"
            " (%s, 'store-1', true, now(), '[]', '0.1.0', 40, 40, 40, 40, 40),"
            " (%s, 'store-9', true, now(), '[]', '0.1.0', 0, 0, 0, 0, 0)",
            (OFFLINE_DEVICE, json.dumps([alarm]), ONLINE_DEVICE, OTHER_SITE_DEVICE),
        )
        # More terminals of store-1 and store-12, online, one with a warning.
        for i in range(2, 12):
            site = "store-1" if i < 7 else "store-12"
            conn.execute(
                "INSERT INTO devices (device, site, online, last_seen, alarms, version, records,"
                " last_seq, contiguous_seq, produced_seq, delivered_seq)"
                " VALUES (%s, %s, true, now() - interval '10 seconds', %s, '0.1.0', 0, 0, 0, 0, 0)",
                (f"sf-0000000000{i:02d}", site, json.dumps([warning] if i == 8 else [])),
            )
        conn.execute(
            "INSERT INTO health (device, site, time, payload)"
            " SELECT device, site, now(), %s FROM devices WHERE online",
            (json.dumps(_HEALTH),),
        )
        conn.execute(
            "INSERT INTO gaps (site, device, from_seq, to_seq) VALUES ('store-1', %s, 4, 4)",
            (OFFLINE_DEVICE,),
        )
        conn.execute("SELECT hub_ensure_partition(now())")
        conn.execute(
            "INSERT INTO records (id, site, device, seq, type, kind, value, verdict, operation,"
            " time, identity_ref, hash, prev_hash, hash_ok, payload)"
            " SELECT %(d)s || ':' || s, 'store-1', %(d)s, s,"
            "  CASE WHEN s %% 10 = 0 THEN 'idcard' ELSE 'scan' END,"
            "  CASE WHEN s %% 10 = 0 THEN NULL ELSE 'trace20' END,"
            "  CASE WHEN s %% 10 = 0 THEN 'sealed:' || md5(s::text)"
            "       ELSE '8' || lpad((s * 7919)::text, 19, '0') END,"
            "  'accepted', 'retail_sale', now() - (40 - s) * interval '1 minute',"
            "  CASE WHEN s %% 5 = 1 THEN 'idref-' || md5(s::text) END,"
            "  md5(s::text), md5((s - 1)::text), true, '\\x7b7d'::bytea"
            " FROM generate_series(1, 40) AS s",
            {"d": ONLINE_DEVICE},
        )
