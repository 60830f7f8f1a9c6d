"""A hub database filled the way production fills it, for the console's tests and screenshots.

A private mosquitto, ``scanfleet hub ingest`` into the test's database, and
``scanfleet simulate fleet`` (12 terminals in 3 sites, staying connected). Two more
terminals are played by this module with the daemon's own record sealing and message
models: one online at ``store-1`` with ID-card records and identity references and a
health message, one that reported a full journal (a critical alarm), lost a record
on the way (a gap) and then went offline.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

from scanfleet.daemon.publish.envelope import AlarmInfo, DeviceState, JournalSummary, state_payload
from scanfleet.daemon.publish.envelope import state_topic as _state_topic
from scanfleet.daemon.remote.health import health_topic
from support.broker import MOSQUITTO_DIRS, running_mosquitto
from support.hub import Chain, Publisher, query, start_ingest, stop, wait_for
from support.prereq import require_executable

SITE = "store-1"
OFFLINE_DEVICE = "sf-00000000off1"
ONLINE_DEVICE = "sf-000000000on1"
SIM_DEVICES = 12
SIM_SITES = ("sim-site-000", "sim-site-001", "sim-site-002")
ALARM_SINCE = datetime(2026, 12, 7, 8, 0, tzinfo=UTC)


def _state(device: str, *, online: bool, last: int, delivered: int, alarms: bool) -> bytes:
    alarm = AlarmInfo(
        code="journal_full",
        message="journal full: new scans are refused",
        severity="critical",
        since=ALARM_SINCE,
    )
    journal = JournalSummary(
        depth=last - delivered,
        last_seq=last,
        delivered_seq=delivered,
        oldest_undelivered_age_s=600.0 if last > delivered else None,
    )
    return state_payload(
        DeviceState(
            device=device,
            site=SITE,
            online=online,
            version="0.1.0",
            boot_id=None,
            journal=journal if online else None,
            alarms=[alarm] if alarms else [],
            time=datetime.now(UTC),
        )
    )


def _health(device: str, last: int) -> bytes:
    return json.dumps(
        {
            "schema": "scanfleet.health/1",
            "device": device,
            "site": SITE,
            "version": "0.1.0",
            "time": datetime.now(UTC).isoformat(),
            "journal": {
                "depth": 0,
                "last_seq": last,
                "delivered_seq": last,
                "oldest_undelivered_age_s": None,
                "size_bytes": 2_400_000,
                "budget_bytes": 64 * 1024 * 1024,
            },
            "scans_per_min": {"accepted": 4},
            "devices": {"counter": "bound"},
            "alarms": [],
            "clock": "synced",
            "disk_free_bytes": 10_000_000_000,
            "process": {"cpu_percent": 1.0, "rss_bytes": 40_000_000, "uptime_s": 3600.0},
            "cert_not_after": "2027-03-01T00:00:00+00:00",
            "config_version": 3,
        }
    ).encode()


def _play_terminals(publisher: Publisher) -> None:
    now = datetime.now(UTC)
    online = Chain(SITE, ONLINE_DEVICE, start=now - timedelta(minutes=41))
    for seq in range(1, 41):
        body: dict[str, object] = {"value": f"8{seq * 7919:019d}"}
        if seq % 10 == 0:
            body = {"type": "idcard", "kind": None, "value": f"sealed:{seq:08x}"}
        if seq % 5 == 1:
            body["identity_ref"] = f"idref-{seq:08x}"
        online.add(**body)
    publisher.send(online.topic, online.batch(1, 40))
    publisher.send(
        _state_topic(SITE, ONLINE_DEVICE),
        _state(ONLINE_DEVICE, online=True, last=40, delivered=40, alarms=False),
        retain=True,
    )
    publisher.send(health_topic(SITE, ONLINE_DEVICE), _health(ONLINE_DEVICE, 40))

    offline = Chain(SITE, OFFLINE_DEVICE, start=now - timedelta(hours=3))
    for _ in range(9):
        offline.add()
    publisher.send(offline.topic, offline.batch(1, 3))
    publisher.send(offline.topic, offline.batch(5, 5))  # seq 4 never arrives: a gap
    publisher.send(
        _state_topic(SITE, OFFLINE_DEVICE),
        _state(OFFLINE_DEVICE, online=True, last=9, delivered=5, alarms=True),
        retain=True,
    )
    # What the broker's will says when the terminal disappears.
    publisher.send(
        _state_topic(SITE, OFFLINE_DEVICE),
        _state(OFFLINE_DEVICE, online=False, last=9, delivered=5, alarms=False),
        retain=True,
    )


@contextmanager
def seeded_hub(dsn: str, work: Path) -> Iterator[None]:
    """Fill *dsn* (already upgraded) through the broker and ingest; keep the fleet running."""
    executable = require_executable("mosquitto", *MOSQUITTO_DIRS)
    with running_mosquitto(executable, work / "seed-broker") as broker:
        url = f"mqtt://{broker.host}:{broker.port}"
        ingest = start_ingest(dsn, url, work, "--no-repair", name="seed-ingest")
        sim: subprocess.Popen[bytes] | None = None
        try:
            wait_for(lambda: "subscribed" in (work / "seed-ingest.log").read_text(), 60, "ingest")
            with (work / "simulate.log").open("ab") as log:
                sim = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "scanfleet.daemon",
                        "simulate",
                        "fleet",
                        "--broker",
                        url,
                        "--devices",
                        str(SIM_DEVICES),
                        "--sites",
                        str(len(SIM_SITES)),
                        "--rate",
                        "2",
                        "--duration",
                        "3",
                        "--linger",
                        "3600",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            publisher = Publisher(broker.host, broker.port)
            try:
                _play_terminals(publisher)
            finally:
                publisher.close()

            def complete() -> bool:
                rows = query(
                    dsn,
                    "SELECT count(*), count(*) FILTER (WHERE device = %s AND NOT online),"
                    " (SELECT count(*) FROM gaps WHERE device = %s AND status = 'open')"
                    " FROM devices",
                    (OFFLINE_DEVICE, OFFLINE_DEVICE),
                )
                return rows == [(SIM_DEVICES + 2, 1, 1)]

            wait_for(complete, 60, "the seeded fleet in the hub")
            yield
        finally:
            if sim is not None:
                stop(sim)
            stop(ingest)
