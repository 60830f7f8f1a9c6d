"""Benchmark ``hub_fleet``: ``simulate fleet`` with 1 000 terminals and a broker restart.

1 000 simulated terminals (one MQTT client each, one process) publish 0.5 records/s
each for ``DURATION`` s into a private mosquitto; ``scanfleet hub ingest --workers 2``
stores them into a private PostgreSQL with automatic repair. A third of the way in
the broker restarts: every terminal reconnects at once (the storm), and mosquitto
2.0.11 forgets the hub's shared subscriptions until the workers re-subscribe, so
records published meanwhile are "delivered" to nobody and must come back by resend.

Reported: records, completeness after the storm (``scanfleet hub audit``: 1.0 is
every delivered record held), ``drain_s`` = seconds from the last record produced to
the audit passing, the resends the repair needed, and the peak RSS of the hub's
processes (supervisor + workers, sampled every 0.2 s).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from scanfleet.hub.db import connect, upgrade
from support.broker import MOSQUITTO_DIRS, Mosquitto
from support.hub import hub_command, query, start_ingest, stop, wait_for
from support.postgres import PostgresCluster, find_pg_bin

DEVICES = int(os.environ.get("SCANFLEET_BENCH_FLEET_DEVICES", "1000"))
RATE = 0.5
DURATION = 30.0


def _rss(pid: int) -> int:
    total = 0
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


def _complete(dsn: str) -> tuple[bool, list[dict[str, Any]]]:
    result = subprocess.run(
        hub_command("audit", "--database", dsn, "--json", "--no-verify"),
        capture_output=True,
        text=True,
        check=False,
    )
    return result.returncode == 0, [json.loads(x) for x in result.stdout.splitlines()]


def run() -> Iterator[dict[str, Any]]:
    """One JSON line."""
    bindir = find_pg_bin()
    exe = shutil.which("mosquitto") or shutil.which(
        "mosquitto", path=os.pathsep.join(MOSQUITTO_DIRS)
    )
    if bindir is None or exe is None:
        raise RuntimeError("PostgreSQL and mosquitto are needed")
    tmp = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    pg = PostgresCluster(bindir)
    broker = Mosquitto(exe, tmp / "broker")
    peak = 0
    sampling = threading.Event()
    try:
        pg.init()
        pg.start()
        dsn = pg.dsn(pg.create_database("fleet"))
        with connect(dsn) as conn:
            upgrade(conn)
        broker.start()
        url = f"mqtt://{broker.host}:{broker.port}"
        repair = ("--repair-after", "2", "--repair-interval", "5", "--sweep-interval", "10")
        ingest = start_ingest(dsn, url, tmp, "--workers", "2", *repair)

        def sample() -> None:
            nonlocal peak
            while not sampling.wait(0.2):
                peak = max(peak, _rss(ingest.pid))

        sampler = threading.Thread(target=sample)
        sampler.start()
        wait_for(lambda: (tmp / "ingest.log").read_text().count("subscribed") >= 2, 30, "hub")
        sim = subprocess.Popen(
            [
                *(sys.executable, "-m", "scanfleet.daemon", "simulate", "fleet", "--broker", url),
                *("--devices", str(DEVICES), "--rate", str(RATE), "--duration", str(DURATION)),
                *("--linger", "300"),
            ],
            stdout=subprocess.PIPE,
        )
        started = time.monotonic()
        time.sleep(DURATION / 3)
        broker.restart()
        time.sleep(max(0.0, started + DURATION - time.monotonic()))
        produced_at = time.monotonic()
        ok, report = False, list[dict[str, Any]]()
        while time.monotonic() - produced_at < 300:
            ok, report = _complete(dsn)
            if ok and len(report) == DEVICES:
                break
            time.sleep(1.0)
        drain = time.monotonic() - produced_at
        sim.terminate()
        out, _ = sim.communicate(timeout=120)
        summary = json.loads(out)
        (held,) = query(dsn, "SELECT count(*) FROM records")[0]
        (resends,) = query(dsn, "SELECT count(*) FROM resend_requests")[0]
        sampling.set()
        sampler.join()
        stop(ingest, 60)
        completeness = min((d["completeness"] for d in report), default=0.0)
        yield {
            "devices": DEVICES,
            "records": int(held),
            "produced": summary["produced"],
            "delivered": summary["delivered"],
            "completeness": completeness,
            "complete": ok,
            "drain_s": round(drain, 1),
            "resend_requests": int(resends),
            "records_resent": summary["resent"],
            "reconnects": summary["connects"] - DEVICES,
            "peak_hub_rss_mb": round(peak / 2**20, 1),
        }
    finally:
        sampling.set()
        broker.stop()
        pg.destroy()
        shutil.rmtree(tmp, ignore_errors=True)
