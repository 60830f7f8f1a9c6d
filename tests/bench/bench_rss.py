"""Benchmark ``rss``: resident memory of the daemon, of ``scanfleet --help``, after a drain.

``daemon`` (the issue's figure, goal <= 50 MB): a real ``scanfleet run`` process with
one device of every driver configured (virtual; serial and idcard_serial on
pseudo-terminals; evdev on a FIFO; usbhid and idcard_usb by a vid:pid that is absent,
so their workers wait for it) and a private mosquitto. ``rss_mb`` is its ``VmRSS``
from /proc/PID/status SETTLE seconds after it logged ``ready:``; ``rss_after_scans_mb``
after SCANS reads of the simulator's counter mix (GS1 among them, so biip is then
loaded) went through the serial pty, were journaled and delivered.

``help``: ``scanfleet --help`` run HELP_RUNS times; median wall time and its peak
RSS (``ru_maxrss`` of the child from wait4).

``drain``: a child process builds a backlog of N scans through ``Journal.append``,
drains it to a real mosquitto with the publisher's default settings and, still
connected with the journal open, reports ``VmRSS`` and ``VmHWM``.
SCANFLEET_BENCH_RSS_N overrides N (default 100 000).

    python tests/bench/bench_rss.py --child DIR BROKER_URL N   # the drain child's own mode
"""

from __future__ import annotations

import json
import os
import random
import statistics
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
from scanfleet.daemon.journal.reader import open_readonly
from scanfleet.daemon.publish.publisher import Publisher
from scanfleet.drivers.sim.codes import generate_code
from support.broker import Mosquitto, running_mosquitto

HERE = Path(__file__).resolve().parent
N = int(os.environ.get("SCANFLEET_BENCH_RSS_N", "100000"))
SETTLE = 3.0
SCANS = 200
HELP_RUNS = 5


def _proc_status_mb(field: str, pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


def _daemon_config(workdir: Path, broker: Mosquitto, serial_tty: str, idcard_tty: str) -> Path:
    fifo = workdir / "keyboard.fifo"
    os.mkfifo(fifo)
    config = workdir / "scanfleet.toml"
    config.write_text(
        f"""[identity]
site = "bench"

[paths]
state_dir = "{workdir / "state"}"

[broker]
url = "{broker.url}"

[[devices]]
name = "virtual"
driver = "virtual"

[[devices]]
name = "serial"
driver = "serial"
port = "{serial_tty}"
framing = "cr"

[[devices]]
name = "idcard"
driver = "idcard_serial"
port = "{idcard_tty}"

[[devices]]
name = "idcard-usb"
driver = "idcard_usb"
usb = "10c4:0007"

[[devices]]
name = "wedge"
driver = "evdev"
path = "{fifo}"

[[devices]]
name = "usbhid"
driver = "usbhid"
usb = "0c2e:0b61"
""",
        encoding="utf-8",
    )
    return config


def _wait_for(what: str, predicate: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


def daemon_rss(workdir: Path, broker: Mosquitto) -> dict[str, Any]:
    """RSS of ``scanfleet run`` with every driver, after start and after SCANS reads."""
    serial_master, serial_slave = os.openpty()
    idcard_master, idcard_slave = os.openpty()
    config = _daemon_config(workdir, broker, os.ttyname(serial_slave), os.ttyname(idcard_slave))
    log_path = workdir / "daemon.log"
    argv = [sys.executable, "-m", "scanfleet.daemon", "run", "--config", str(config)]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [*argv, "--view", "off"], stdin=subprocess.DEVNULL, stdout=log, stderr=log
        )
    try:
        _wait_for("ready:", lambda: b"ready:" in log_path.read_bytes() or proc.poll(), 60)
        if proc.poll() is not None:
            raise RuntimeError(f"daemon exited: {log_path.read_text()[-2000:]}")
        time.sleep(SETTLE)
        started = {
            "rss_mb": round(_proc_status_mb("VmRSS", proc.pid), 1),
            "peak_rss_mb": round(_proc_status_mb("VmHWM", proc.pid), 1),
            "threads": int(_proc_status_mb("Threads", proc.pid) * 1024),
        }
        rng = random.Random(7)
        for _ in range(SCANS):
            os.write(serial_master, generate_code(rng) + b"\r")
            time.sleep(0.01)
        journal = workdir / "state" / "journal.sqlite3"

        def scans_journaled() -> bool:
            with open_readonly(journal) as reader:
                return reader.last_seq >= SCANS

        _wait_for("the scans in the journal", scans_journaled, 60)
        time.sleep(SETTLE)
        return {
            **started,
            "drivers": 6,
            "rss_after_scans_mb": round(_proc_status_mb("VmRSS", proc.pid), 1),
            "scans": SCANS,
        }
    finally:
        proc.terminate()
        proc.wait(30)
        for fd in (serial_master, serial_slave, idcard_master, idcard_slave):
            os.close(fd)


HELP_PEAK_PROBE = (
    "import atexit, sys\n"
    "atexit.register(lambda: sys.stderr.write(open('/proc/self/status').read()))\n"
    "from scanfleet.daemon.cli import main\n"
    "sys.exit(main(['--help']))"
)
"""``scanfleet --help`` reporting its own VmHWM at exit (a child's ``ru_maxrss`` would
include the pages of the benchmark process it was forked from)."""


def help_cost() -> dict[str, Any]:
    """Median wall time and peak RSS of ``scanfleet --help`` over HELP_RUNS runs."""
    seconds, peaks = [], []
    for _ in range(HELP_RUNS):
        began = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "scanfleet.daemon", "--help"],
            stdout=subprocess.DEVNULL,
            check=True,
        )
        seconds.append(time.perf_counter() - began)
        probe = subprocess.run(
            [sys.executable, "-c", HELP_PEAK_PROBE], capture_output=True, text=True, check=True
        )
        hwm = next(line for line in probe.stderr.splitlines() if line.startswith("VmHWM:"))
        peaks.append(int(hwm.split()[1]) / 1024)
    return {
        "runs": HELP_RUNS,
        "help_s": round(statistics.median(seconds), 3),
        "help_peak_rss_mb": round(statistics.median(peaks), 1),
    }


def child(directory: Path, url: str, count: int) -> dict[str, Any]:
    """Build, drain, measure; runs in the child process."""
    alarms = AlarmSet()
    with Journal.open(directory / "journal.sqlite3", DEVICE, max_bytes=4 << 30, alarms=alarms) as j:
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
    """Three JSON lines: the daemon with every driver, ``--help``, the drain child."""
    with tempfile.TemporaryDirectory(prefix="scanfleet-bench-rss-") as tmp:
        workdir = Path(tmp)
        with running_mosquitto(mosquitto_executable(), workdir / "broker") as broker:
            daemon = daemon_rss(workdir, broker)
    yield {"case": "daemon", **daemon}
    yield {"case": "help", **help_cost()}
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
    yield {"case": "drain", **json.loads(out.stdout)}


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        result = child(Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]))
        sys.stdout.write(json.dumps(result) + "\n")
        sys.exit(0)
    sys.exit(f"usage: {sys.argv[0]} --child DIR BROKER_URL N")
