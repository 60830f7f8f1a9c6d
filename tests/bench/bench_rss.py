"""Benchmark ``rss``: memory of a process holding an open journal and a connected publisher.

A child process (so the figure is not polluted by the benchmark runner) builds a
backlog of N scans through ``Journal.append``, drains it to a real mosquitto with
the publisher's default settings, and then, still connected with the journal
open, reports its resident set size (``VmRSS``) and peak (``VmHWM``) from
/proc/self/status. SCANFLEET_BENCH_RSS_N overrides N (default 100 000).

    python tests/bench/bench_rss.py --child DIR BROKER_URL N   # the child's own mode
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# bench_drain and support must import both under the runner and as a child script.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_drain import (
    DEVICE,
    SITE,
    build_backlog,
    mosquitto_executable,
)

from scanfleet.daemon.core.alarms import AlarmSet
from scanfleet.daemon.core.config import BrokerConfig
from scanfleet.daemon.core.identity import Identity
from scanfleet.daemon.journal.journal import Journal
from scanfleet.daemon.publish.publisher import Publisher
from support.broker import running_mosquitto

HERE = Path(__file__).resolve().parent
N = int(os.environ.get("SCANFLEET_BENCH_RSS_N", "100000"))


def _proc_status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def child(directory: Path, url: str, count: int) -> dict[str, Any]:
    """Build, drain, measure; runs in the child process."""
    alarms = AlarmSet()
    with Journal(directory / "journal.sqlite3", DEVICE, max_bytes=4 << 30, alarms=alarms) as j:
        baseline_mb = _proc_status_mb("VmRSS")
        build_backlog(j, count)
        publisher = Publisher(j, BrokerConfig(url=url), Identity(SITE, DEVICE), alarms)
        publisher.start()
        try:
            if not publisher.wait_delivered(count, 600):
                raise RuntimeError("drain incomplete")
            time.sleep(1.0)  # let the state message and status file settle
            if not publisher.connected:
                raise RuntimeError("publisher not connected after the drain")
            return {
                "scans": count,
                "rss_mb": round(_proc_status_mb("VmRSS"), 1),
                "peak_rss_mb": round(_proc_status_mb("VmHWM"), 1),
                "rss_after_open_mb": round(baseline_mb, 1),
            }
        finally:
            publisher.stop(10)


def run() -> Iterator[dict[str, Any]]:
    """One JSON line with the child's figures."""
    with tempfile.TemporaryDirectory(prefix="scanfleet-bench-rss-") as tmp:
        workdir = Path(tmp)
        with running_mosquitto(mosquitto_executable(), workdir / "broker") as broker:
            out = subprocess.run(
                [sys.executable, str(Path(__file__).resolve()), "--child", tmp, broker.url, str(N)],
                capture_output=True,
                text=True,
                timeout=1200,
                check=False,
            )
    if out.returncode != 0:
        raise RuntimeError(f"rss child failed ({out.returncode}): {out.stderr[-2000:]}")
    yield json.loads(out.stdout)


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        result = child(Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]))
        sys.stdout.write(json.dumps(result) + "\n")
        sys.exit(0)
    sys.exit(f"usage: {sys.argv[0]} --child DIR BROKER_URL N")
