"""``scanfleet simulate fleet`` into the hub through a broker restart: nothing missing."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scanfleet.hub.db import connect, upgrade
from support.broker import Mosquitto
from support.hub import hub_command, query, start_ingest, stop, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_a_simulated_fleet_arrives_complete_across_a_broker_restart(
    tmp_path: Path, mosquitto: Mosquitto, hub_database: str
) -> None:
    dsn = hub_database
    with connect(dsn) as conn:
        upgrade(conn)
    url = f"mqtt://{mosquitto.host}:{mosquitto.port}"
    ingest = start_ingest(dsn, url, tmp_path, "--repair-after", "1", "--repair-interval", "2")
    try:
        wait_for(lambda: "subscribed" in (tmp_path / "ingest.log").read_text(), 30, "the hub")
        sim = subprocess.Popen(
            [
                *(sys.executable, "-m", "scanfleet.daemon", "simulate", "fleet", "--broker", url),
                *("--devices", "30", "--rate", "2", "--duration", "6", "--disconnect-every", "3"),
                # Stay to answer the hub's resend requests for what the restart lost.
                *("--linger", "120"),
            ],
            stdout=subprocess.PIPE,
        )
        time.sleep(3)
        mosquitto.restart()
        time.sleep(4)

        def complete() -> bool:
            audit = subprocess.run(
                hub_command("audit", "--database", dsn, "--json", "--no-verify"),
                capture_output=True,
                check=False,
            )
            return audit.returncode == 0

        wait_for(complete, 120, "the audit to pass")
        sim.terminate()
        out, _ = sim.communicate(timeout=60)
        summary = json.loads(out)
        assert summary["devices"] == 30
        assert summary["produced"] > 100
        assert summary["delivered"] == summary["produced"]
        produced = summary["produced"]
        wait_for(
            lambda: (
                query(dsn, "SELECT count(*), count(DISTINCT id) FROM records")
                == [(produced, produced)]
            ),
            60,
            "every produced record",
        )
        wait_for(complete, 60, "the audit to pass with the final states")
        assert query(dsn, "SELECT count(*) FROM devices") == [(30,)]
        assert query(dsn, "SELECT count(*) FROM chain_breaks") == [(0,)]
    finally:
        assert stop(ingest) == 0
