"""Logging to journald: ``scanfleet run`` as a real process, in a mount namespace whose
/run/systemd/journal/socket is a real AF_UNIX datagram socket of this test, so the
daemon's native journal entries (the protocol journald reads) arrive here."""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from scanfleet.drivers.sim.serial_scanner import SerialScannerSimulator
from support.broker import Mosquitto
from support.daemon import write_config
from support.prereq import missing

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CODE = b"81234567890123456789"


def parse_entry(data: bytes) -> dict[str, str]:
    """One native-protocol datagram: ``KEY=value\\n`` or ``KEY\\n<le64 size><value>\\n``."""
    fields: dict[str, str] = {}
    i = 0
    while i < len(data):
        nl = data.index(b"\n", i)
        line = data[i:nl]
        if b"=" in line:
            key, value = line.split(b"=", 1)
            i = nl + 1
        else:
            key = line
            (size,) = struct.unpack_from("<Q", data, nl + 1)
            start = nl + 1 + 8
            value = data[start : start + size]
            i = start + size + 1
        fields[key.decode()] = value.decode("utf-8", "replace")
    return fields


class FakeJournald:
    """The receiving end of /run/systemd/journal/socket (bound into the daemon's namespace)."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="sfjournal-"))
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.dir / "socket"))
        self.sock.settimeout(0.1)
        self.entries: list[dict[str, str]] = []

    def drain(self) -> list[dict[str, str]]:
        """Every entry received so far."""
        while True:
            try:
                self.entries.append(parse_entry(self.sock.recv(1 << 20)))
            except TimeoutError:
                return self.entries

    def wait(self, predicate: Callable[[dict[str, str]], bool], timeout: float) -> bool:
        """Wait for an entry matching *predicate*."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(predicate(e) for e in self.drain()):
                return True
        return False

    def close(self) -> None:
        """Close and remove the socket."""
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def journald() -> Iterator[FakeJournald]:
    try:
        import systemd.journal  # noqa: F401
    except ImportError:
        missing("systemd-python is not installed (pip install -e '.[dev]')")
    unshare = shutil.which("unshare")
    if os.geteuid() != 0 or unshare is None:
        missing("needs root and unshare(1) for a private mount namespace")
    j = FakeJournald()
    yield j
    j.close()


def _start(
    tmp_path: Path, broker: Mosquitto, link: Path, journald: FakeJournald
) -> subprocess.Popen[bytes]:
    config = write_config(
        tmp_path / "scanfleet.toml",
        f"""
[identity]
site = "site-j"
device = "dev-j"

[paths]
state_dir = "{tmp_path / "state"}"

[broker]
url = "{broker.url}"

[[devices]]
name = "counter-scanner"
driver = "serial"
port = "{link}"
framing = "cr"
aim_prefix = true
feedback = "honeywell"
""",
    )
    # A private /run in a private mount namespace: the host's /run is untouched.
    script = (
        "set -e; mount -t tmpfs tmpfs /run; mkdir -p /run/systemd/journal; "
        f'mount --bind {journald.dir} /run/systemd/journal; exec "$@"'
    )
    env = {**os.environ, "INVOCATION_ID": uuid.uuid4().hex}
    env.pop("JOURNAL_STREAM", None)
    env.pop("NOTIFY_SOCKET", None)
    argv = [sys.executable, "-m", "scanfleet.daemon", "run", "--config", str(config)]
    with (tmp_path / "stderr.log").open("wb") as stderr:
        return subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *argv],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )


def test_under_systemd_log_entries_reach_journald_with_scanfleet_fields_and_no_code_value(
    tmp_path: Path, mosquitto: Mosquitto, journald: FakeJournald
) -> None:
    link = tmp_path / "scanner"
    sim = SerialScannerSimulator(framing="cr", aim=True, auto=False, link=link)
    with sim:
        sim.start()
        proc = _start(tmp_path, mosquitto, link, journald)
        try:
            assert journald.wait(
                lambda e: e["MESSAGE"].startswith("scanfleet.daemon.runner: ready"), 30
            ), (tmp_path / "stderr.log").read_text()
            sim.send(CODE)
            assert journald.wait(lambda e: e.get("SCANFLEET_SEQ") == "1", 30)
        finally:
            proc.terminate()
            proc.wait(30)
    entries = journald.drain()
    committed = next(e for e in entries if e.get("SCANFLEET_SEQ") == "1")
    assert committed["SCANFLEET_DEVICE"] == "counter-scanner"
    assert committed["SCANFLEET_KIND"] == "trace20"
    assert committed["SCANFLEET_VERDICT"] == "accepted"
    assert committed["SYSLOG_IDENTIFIER"] == "scanfleet"
    assert committed["PRIORITY"] == "6"  # info
    # Lines logged by a device worker carry its device without the caller saying so.
    bound = next(e for e in entries if "counter-scanner: bound" in e["MESSAGE"])
    assert bound["SCANFLEET_DEVICE"] == "counter-scanner"
    assert bound["THREAD_NAME"] == "device-counter-scanner"
    # Closed field set: no copy of the call's arguments, no stray record attributes.
    for entry in entries:
        assert "CODE_ARGS" not in entry
        assert not {"ARGS", "MSG", "EXC_INFO"} & set(entry)
        assert CODE.decode() not in "".join(entry.values())
    # Nothing went to stderr: the journal is the log.
    assert "committed seq" not in (tmp_path / "stderr.log").read_text()
