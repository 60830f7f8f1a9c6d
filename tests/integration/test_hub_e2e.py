"""The hub's promise end to end, every part a real process:

a pty scanner → ``scanfleet run`` → mosquitto → ``scanfleet hub ingest --workers 2`` →
PostgreSQL, while one worker is killed with SIGKILL, the broker restarts and the
database crashes. Afterwards every record the terminal delivered is held exactly once
and the audit says 100 %; a row deleted behind the hub's back comes back through the
terminal's ``resend`` without anyone asking; a row altered in the database is a chain
break.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from scanfleet.daemon.journal.reader import open_readonly
from scanfleet.drivers.sim.serial_scanner import SerialScannerSimulator
from scanfleet.hub.db import connect, upgrade
from support.broker import Mosquitto
from support.daemon import DaemonProcess, write_config
from support.hub import hub_command, query, start_ingest, stop, wait_for
from support.postgres import PostgresCluster

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SITE, DEVICE = "site-hub", "dev-hub"
COUNT = 600
ALL_KINDS = (
    '["gs1", "trace20", "ean13", "drug_standard_code", "ma", "url", "trace_other", "unknown"]'
)


def _config(tmp_path: Path, broker: Mosquitto, link: Path) -> Path:
    return write_config(
        tmp_path / "scanfleet.toml",
        f"""
[identity]
site = "{SITE}"
device = "{DEVICE}"

[paths]
state_dir = "{tmp_path / "state"}"

[broker]
url = "{broker.url}"

[publisher]
health_interval_s = 5

[station]
operation = "receiving"
accept_kinds = {ALL_KINDS}

[[devices]]
name = "dock-scanner"
driver = "serial"
port = "{link}"
baudrate = 115200
framing = "cr"
aim_prefix = true
feedback = "honeywell"
""",
    )


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def _audit(dsn: str) -> tuple[int, list[dict[str, object]]]:
    result = subprocess.run(
        hub_command("audit", "--database", dsn, "--json"),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return result.returncode, [json.loads(line) for line in result.stdout.splitlines()]


def test_every_delivered_record_arrives_once_through_kill_restart_and_crash(
    tmp_path: Path,
    mosquitto: Mosquitto,
    hub_database: str,
    postgres_cluster: PostgresCluster,
) -> None:
    dsn = hub_database
    with connect(dsn) as conn:
        upgrade(conn)
    link = tmp_path / "scanner"
    sim = SerialScannerSimulator(framing="cr", aim=True, rate=50, count=COUNT, seed=17, link=link)
    daemon = DaemonProcess(_config(tmp_path, mosquitto, link), tmp_path / "daemon.log")
    url = f"mqtt://{mosquitto.host}:{mosquitto.port}"
    repair = ("--repair-after", "1", "--repair-interval", "2", "--sweep-interval", "2")
    ingest = start_ingest(dsn, url, tmp_path, "--workers", "2", *repair)
    held = lambda: int(query(dsn, "SELECT count(*) FROM records")[0][0])  # noqa: E731
    try:
        wait_for(lambda: len(_children(ingest.pid)) == 2, 30, "two workers")
        with sim:
            daemon.start()
            assert daemon.wait_log("ready:", 30), daemon.log()
            sim.start()
            wait_for(lambda: held() >= 100, 60, "the first 100 records")
            os.kill(_children(ingest.pid)[0], signal.SIGKILL)  # mid-batch, unacked
            wait_for(lambda: held() >= 250, 60, "250 records")
            mosquitto.restart()
            wait_for(lambda: held() >= 400, 90, "400 records")
            postgres_cluster.stop("immediate")
            postgres_cluster.start()
            assert sim.wait_done(120)
            journal = tmp_path / "state" / "journal.sqlite3"

            def journaled() -> int:
                with open_readonly(journal) as reader:
                    return int(reader.last_seq)

            wait_for(lambda: journaled() >= COUNT, 60, "every scan journaled")
            last = journaled()
            # Records lost to "no matching subscribers" while the hub re-subscribed come
            # back through automatic repair; wait for the device's figures to say so.
            wait_for(lambda: held() == last, 120, f"all {last} records")
            wait_for(
                lambda: query(dsn, "SELECT delivered_seq FROM devices")[0][0] == last,
                60,
                "the device's delivered_seq",
            )
            assert query(dsn, "SELECT count(*), count(DISTINCT id) FROM records") == [(last, last)]
            code, report = _audit(dsn)
            assert code == 0, report
            (dev,) = report
            assert dev["device"] == DEVICE
            assert dev["site"] == SITE
            assert dev["records"] == last
            assert dev["last_seq"] == last
            assert dev["contiguous_seq"] == last
            assert dev["gaps"] == []
            assert dev["completeness"] == 1.0
            assert dev["chain_breaks"] == 0

            # A row deleted behind the hub's back: found by the sweep, resent by the
            # terminal on the hub's request, stored again; nobody asked.
            (payload,) = query(dsn, "SELECT payload FROM records WHERE seq = 123")[0]
            query(dsn, "DELETE FROM records WHERE seq = 123")
            wait_for(
                lambda: query(dsn, "SELECT payload FROM records WHERE seq = 123") == [(payload,)],
                90,
                "seq 123 to come back by resend",
            )
            assert query(
                dsn,
                "SELECT status FROM resend_requests WHERE from_seq <= 123 AND to_seq >= 123"
                " ORDER BY requested_at DESC LIMIT 1",
            ) in ([("ok",)], [("sent",)])
            assert query(
                dsn,
                "SELECT count(*) > 0 FROM gaps WHERE status = 'repaired' AND from_seq = 123"
                " AND resends > 0",
            ) == [(True,)]
            code, report = _audit(dsn)
            assert code == 0
            assert report[0]["completeness"] == 1.0

            # A stored row altered in the database: a chain break, not a silent change.
            query(
                dsn,
                "UPDATE records SET payload = convert_to(replace(convert_from(payload, 'UTF8'),"
                ' \'"verdict":"accepted"\', \'"verdict":"refused"\'), \'UTF8\') WHERE seq = 200',
            )
            code, report = _audit(dsn)
            assert report[0]["chain_breaks"] == 1
            assert query(dsn, "SELECT kind, seq FROM chain_breaks") == [("stored_mismatch", 200)]
            assert daemon.stop() == 0
    finally:
        if daemon.alive():
            daemon.kill()
        assert stop(ingest, 60) == 0, (tmp_path / "ingest.log").read_text()[-5000:]
