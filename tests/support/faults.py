"""Shared pieces of the fault tests (issue 15): waiting, the CLI, a pty-scanner daemon."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from support.broker import Mosquitto
from support.daemon import write_config

ALL_KINDS = '["gs1", "trace20", "ean13", "drug_standard_code", "ma", "url", "trace_other"]'


def wait_for(predicate: Callable[[], object], timeout: float) -> bool:
    """Poll *predicate* until it is true (True) or *timeout* seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def scanfleet(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``scanfleet ARGS`` as a real process; output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "scanfleet.daemon", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def serial_daemon_config(
    path: Path,
    *,
    site: str,
    device: str,
    state: Path,
    broker: Mosquitto,
    link: Path,
    extra: str = "",
) -> Path:
    """A daemon config: one pty serial scanner at *link* (CR framing, AIM, Honeywell
    feedback), every kind accepted as a trace code, receiving; *extra* is appended to
    the ``[[devices]]`` table."""
    return write_config(
        path,
        f"""
[identity]
site = "{site}"
device = "{device}"

[paths]
state_dir = "{state}"

[broker]
url = "{broker.url}"

[station]
operation = "receiving"
accept_kinds = {ALL_KINDS}

[[devices]]
name = "scanner"
driver = "serial"
port = "{link}"
baudrate = 115200
framing = "cr"
aim_prefix = true
feedback = "honeywell"
{extra}
""",
    )
