"""A small hub database for the console's browser tests.

Rows are written as the hub's ingest writes them (schema v1 tables): two sites, one
online terminal, one offline terminal with a critical alarm, records, a gap.
"""

from __future__ import annotations

import json
from pathlib import Path

from scanfleet.hub.db import connect

OFFLINE_DEVICE = "sf-00000000off1"
ONLINE_DEVICE = "sf-000000000on1"
OTHER_SITE_DEVICE = "sf-00000000s9d1"


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
    with connect(dsn) as conn:
        conn.execute(
            "INSERT INTO devices (device, site, online, last_seen, alarms, version, records,"
            " last_seq, contiguous_seq, produced_seq, delivered_seq) VALUES"
            " (%s, 'store-1', false, now() - interval '2 hours', %s, '0.1.0', 3, 5, 3, 9, 5),"
            " (%s, 'store-1', true, now(), '[]', '0.1.0', 5, 5, 5, 5, 5),"
            " (%s, 'store-9', true, now(), '[]', '0.1.0', 0, 0, 0, 0, 0)",
            (OFFLINE_DEVICE, json.dumps([alarm]), ONLINE_DEVICE, OTHER_SITE_DEVICE),
        )
        conn.execute(
            "INSERT INTO gaps (site, device, from_seq, to_seq) VALUES ('store-1', %s, 4, 4)",
            (OFFLINE_DEVICE,),
        )
