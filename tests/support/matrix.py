"""Helpers of the broker matrix and cluster tests: a daemon config, journal ids, waiting."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from scanfleet.daemon.journal.reader import open_readonly
from support.daemon import write_config


def wait(predicate: Any, timeout: float, step: float = 0.05) -> bool:
    """Poll *predicate* until true or *timeout* passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return bool(predicate())


def daemon_config(tmp_path: Path, site: str, device: str, urls: list[str], link: Path) -> Path:
    """A daemon config on a simulated serial scanner, publishing to *urls*."""
    url = f'"{urls[0]}"' if len(urls) == 1 else "[" + ", ".join(f'"{u}"' for u in urls) + "]"
    return write_config(
        tmp_path / "scanfleet.toml",
        f"""
[identity]
site = "{site}"
device = "{device}"

[paths]
state_dir = "{tmp_path / "state"}"

[broker]
url = {url}
keepalive = 5

[[devices]]
name = "scanner"
driver = "serial"
port = "{link}"
baudrate = 115200
framing = "cr"
aim_prefix = true
""",
    )


def journal_ids(tmp_path: Path) -> dict[str, int]:
    """Every record id in the daemon's journal, with its seq."""
    with open_readonly(tmp_path / "state" / "journal.sqlite3") as reader:
        records = reader.read_after(0, limit=1_000_000, max_bytes=1 << 40)
    return {r.as_dict()["id"]: r.seq for r in records}


def missing_report(expected: dict[str, int], got: set[str]) -> str:
    """Which seqs never arrived (for the failure message)."""
    lost = sorted(seq for rid, seq in expected.items() if rid not in got)
    return f"{len(lost)} of {len(expected)} records never arrived: seq {lost[:50]}"
