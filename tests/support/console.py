"""The fleet console as a real server process, and Debian's Chromium driven by Playwright.

Playwright's own browser downloads are never used: the browser is ``/usr/bin/chromium``
from the Debian package, launched headless.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from support.broker import free_port
from support.prereq import missing

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def chromium_path() -> str:
    """Debian's Chromium, or skip/fail when it is not installed."""
    for candidate in ("/usr/bin/chromium", shutil.which("chromium") or ""):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return missing("chromium is not installed (the Debian package; .ci/sysdeps installs it)")


class ConsoleServer:
    """``scanfleet hub console`` in a subprocess on a free loopback port."""

    def __init__(self, database: str, workdir: Path, *extra: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "console.log"
        self.args = [
            sys.executable,
            "-m",
            "scanfleet.daemon",
            "--log-level",
            "info",
            "hub",
            "console",
            "--database",
            database,
            "--listen",
            f"127.0.0.1:{self.port}",
            *extra,
        ]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> ConsoleServer:
        """Start and wait until the port accepts connections."""
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"console exited: {self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"console did not listen: {self.log()}")

    def log(self) -> str:
        """What the server logged."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self) -> None:
        """SIGTERM and wait."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def add_user(database: str, name: str, password: str, role: str, *sites: str) -> None:
    """``scanfleet hub user add`` through the real CLI."""
    args = [sys.executable, "-m", "scanfleet.daemon", "hub", "user", "add", name]
    args += ["--database", database, "--role", role, "--password-stdin"]
    for site in sites:
        args += ["--site", site]
    subprocess.run(args, input=password + "\n", text=True, check=True, capture_output=True)


def browser() -> Iterator[Any]:
    """A headless Debian Chromium under Playwright (a generator for fixtures)."""
    executable = chromium_path()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("playwright is not installed (pip install -e '.[dev]')")
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()
