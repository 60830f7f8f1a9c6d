"""Benchmark ``idle``: how often an idle daemon wakes up.

Starts the real daemon (``python -m scanfleet.daemon run``) with one serial scanner
bound on a pseudo-terminal (the simulator, which sends nothing) and a private
mosquitto, waits until it is ready and has settled, then counts for
SCANFLEET_BENCH_IDLE_SECONDS (default 10) the voluntary + nonvoluntary context
switches of all its threads (``/proc/PID/task/*/status``): each one is a wakeup. When
strace is installed, a second window counts the system calls per second with
``strace -c -f``. Goal (issue 16): fewer than 2 wakeups/s.

The busiest threads are listed with their wakeups/s so a regression points at its
source (Python thread names are not visible in /proc; the list shows native ids).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_drain import mosquitto_executable

from scanfleet.drivers.sim.serial_scanner import SerialScannerSimulator
from support.broker import running_mosquitto
from support.daemon import DaemonProcess, write_config

SECONDS = float(os.environ.get("SCANFLEET_BENCH_IDLE_SECONDS", "10"))
SETTLE = 3.0
"""Seconds after readiness before counting: start-up work (status files, the retained
state message, the first health report) is not idle time."""


def switches(pid: int) -> dict[int, int]:
    """Voluntary + nonvoluntary context switches of every thread of *pid*, by native id."""
    out: dict[int, int] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            text = (task / "status").read_text(encoding="ascii")
        except OSError:
            continue  # a thread that ended between the listing and the read
        total = 0
        for line in text.splitlines():
            if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")):
                total += int(line.split()[1])
        out[int(task.name)] = total
    return out


def wakeups(pid: int, seconds: float) -> tuple[float, list[tuple[int, float]]]:
    """Wakeups/s of the whole process over *seconds*, and per thread (busiest first)."""
    before = switches(pid)
    time.sleep(seconds)
    after = switches(pid)
    per = {tid: (after[tid] - before.get(tid, 0)) / seconds for tid in after}
    busiest = sorted(per.items(), key=lambda item: -item[1])
    return sum(per.values()), [(tid, round(rate, 2)) for tid, rate in busiest[:5] if rate]


def syscalls_per_second(pid: int, seconds: float) -> float | None:
    """System calls/s of *pid* (all threads) under ``strace -c -f``, or None without strace."""
    strace = shutil.which("strace")
    if strace is None:
        return None
    proc = subprocess.Popen(
        [strace, "-c", "-f", "-p", str(pid)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(seconds)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    for line in err.splitlines():
        fields = line.split()
        if fields and fields[-1] == "total":
            # "100.00  0.000123  4  31  2  total": calls is the 4th column (errors optional)
            numbers = [f for f in fields[:-1] if f.replace(".", "", 1).isdigit()]
            return round(int(numbers[3]) / seconds, 1)
    if "Operation not permitted" in err:
        return None  # ptrace is not allowed here (container, yama)
    return 0.0


def run() -> Iterator[dict[str, Any]]:
    """One JSON line: wakeups/s, the busiest threads, syscalls/s."""
    with tempfile.TemporaryDirectory(prefix="scanfleet-bench-idle-") as tmp:
        workdir = Path(tmp)
        link = workdir / "scanner"
        with (
            running_mosquitto(mosquitto_executable(), workdir / "broker") as broker,
            SerialScannerSimulator(framing="cr", link=link),
        ):
            config = write_config(
                workdir / "scanfleet.toml",
                f"""
[identity]
site = "site-idle"
device = "dev-idle"

[paths]
state_dir = "{workdir / "state"}"

[broker]
url = "{broker.url}"

[[devices]]
name = "idle-scanner"
driver = "serial"
port = "{link}"
framing = "cr"
""",
            )
            daemon = DaemonProcess(config, workdir / "daemon.log", log_level="info").start()
            try:
                if not daemon.wait_log("ready:", 60) or "bound" not in daemon.run_log():
                    raise RuntimeError(f"daemon not ready: {daemon.run_log()[-2000:]}")
                time.sleep(SETTLE)
                rate, busiest = wakeups(daemon.pid, SECONDS)
                syscalls = syscalls_per_second(daemon.pid, SECONDS)
                threads = len(os.listdir(f"/proc/{daemon.pid}/task"))
                if not daemon.alive():
                    raise RuntimeError(f"daemon died: {daemon.run_log()[-2000:]}")
            finally:
                daemon.stop()
    yield {
        "seconds": SECONDS,
        "threads": threads,
        "wakeups_per_s": round(rate, 2),
        "busiest_threads_per_s": busiest,
        "syscalls_per_s": syscalls,
        "goal_wakeups_per_s": 2.0,
    }
