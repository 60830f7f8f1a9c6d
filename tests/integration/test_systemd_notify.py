"""sd_notify end to end: ``scanfleet run`` as a real process talking to a real AF_UNIX
datagram socket given as NOTIFY_SOCKET, the way systemd receives it, with a pty scanner
and a real mosquitto."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from scanfleet.drivers.sim.serial_scanner import SerialScannerSimulator
from support.broker import Mosquitto
from support.daemon import DaemonProcess, write_config
from support.prereq import missing

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WATCHDOG_USEC = 2_000_000
"""The test's WatchdogSec: 2 s, so the notifier checks (and pings) every second."""


class NotifySocket:
    """What systemd's end of NOTIFY_SOCKET receives: one message per datagram."""

    def __init__(self) -> None:
        # sun_path is limited to 108 bytes: pytest's tmp_path can be longer.
        self.dir = Path(tempfile.mkdtemp(prefix="sfnotify-"))
        self.path = self.dir / "notify"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, dict[str, str]]] = []
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            with self._cond:
                self.messages.append((time.monotonic(), fields))
                self._cond.notify_all()

    def with_field(self, key: str, value: str | None = None) -> list[dict[str, str]]:
        """Messages that carry *key* (equal to *value* when given)."""
        with self._cond:
            return [m for _, m in self.messages if key in m and (value is None or m[key] == value)]

    def wait_for(
        self, predicate: Callable[[dict[str, str]], bool], timeout: float, start: int = 0
    ) -> int:
        """Index of the first message at or after *start* matching, or -1 after *timeout*."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for i in range(start, len(self.messages)):
                    if predicate(self.messages[i][1]):
                        return i
                left = deadline - time.monotonic()
                if left <= 0:
                    return -1
                self._cond.wait(left)

    def count(self) -> int:
        """Messages received so far."""
        with self._cond:
            return len(self.messages)

    def since(self, index: int) -> list[dict[str, str]]:
        """Messages received after position *index*."""
        with self._cond:
            return [m for _, m in self.messages[index:]]

    def close(self) -> None:
        """Stop listening and remove the socket."""
        self._stop.set()
        self.sock.close()
        self._thread.join(5)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def notify_socket(monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifySocket]:
    pytest.importorskip("systemd.daemon", reason="systemd-python (scanfleet[systemd])")
    ns = NotifySocket()
    # DaemonProcess inherits this process's environment.
    monkeypatch.setenv("NOTIFY_SOCKET", str(ns.path))
    monkeypatch.setenv("WATCHDOG_USEC", str(WATCHDOG_USEC))
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    yield ns
    ns.close()


@pytest.fixture(autouse=True)
def _systemd_python() -> None:
    try:
        import systemd.daemon  # noqa: F401
    except ImportError:
        missing("systemd-python is not installed (pip install -e '.[dev]')")


def _config(tmp_path: Path, broker: Mosquitto, port: Path) -> Path:
    return write_config(
        tmp_path / "scanfleet.toml",
        f"""
[identity]
site = "site-sd"
device = "dev-sd"

[paths]
state_dir = "{tmp_path / "state"}"

[broker]
url = "{broker.url}"

[station]
name = "counter-1"
operation = "retail_sale"

[[devices]]
name = "counter-scanner"
driver = "serial"
port = "{port}"
baudrate = 115200
framing = "cr"
aim_prefix = true
feedback = "honeywell"
""",
    )


def _wait(predicate: Callable[[], object], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def _ready(m: dict[str, str]) -> bool:
    return m.get("READY") == "1"


def test_ready_comes_only_after_the_device_is_bound_and_journal_and_publisher_run(
    tmp_path: Path, mosquitto: Mosquitto, notify_socket: NotifySocket
) -> None:
    link = tmp_path / "scanner"
    sim = SerialScannerSimulator(framing="cr", aim=True, auto=False, link=link)
    daemon = DaemonProcess(_config(tmp_path, mosquitto, link), tmp_path / "daemon.log")
    with sim:
        sim.start()
        daemon.start()
        try:
            assert notify_socket.wait_for(_ready, 30) >= 0, daemon.log()
            # The daemon logs that it told systemd after the datagram left: wait for it.
            assert daemon.wait_log("told systemd READY=1", 10), daemon.log()
            log = daemon.log()
            ready = notify_socket.with_field("READY", "1")[0]
            # READY's own STATUS line tells what was set up when it was sent.
            assert "1 device (1 bound)" in ready["STATUS"]
            assert "journal depth 0" in ready["STATUS"]
            assert (tmp_path / "state" / "journal.sqlite3").exists()
            # The log shows the order: device bound, then readiness, then READY=1.
            bound = log.index("counter-scanner: bound")
            assert bound < log.index("ready:") < log.index("told systemd READY=1")
            # Nothing before READY said WATCHDOG=1: the watchdog starts with readiness.
            first_ready = notify_socket.wait_for(_ready, 0)
            assert not any("WATCHDOG" in m for m in notify_socket.since(0)[:first_ready])
        finally:
            daemon.stop()


def test_ready_reports_an_absent_device_instead_of_waiting_for_it(
    tmp_path: Path, mosquitto: Mosquitto, notify_socket: NotifySocket
) -> None:
    daemon = DaemonProcess(
        _config(tmp_path, mosquitto, tmp_path / "no-such-scanner"), tmp_path / "daemon.log"
    )
    daemon.start()
    try:
        assert notify_socket.wait_for(_ready, 30) >= 0, daemon.log()
        assert "1 device (1 absent)" in notify_socket.with_field("READY", "1")[0]["STATUS"]
    finally:
        daemon.stop()


def test_stopping_is_sent_on_sigterm_and_a_scan_shows_in_status(
    tmp_path: Path, mosquitto: Mosquitto, notify_socket: NotifySocket
) -> None:
    link = tmp_path / "scanner"
    sim = SerialScannerSimulator(framing="cr", aim=True, auto=False, link=link)
    daemon = DaemonProcess(_config(tmp_path, mosquitto, link), tmp_path / "daemon.log")
    with sim:
        sim.start()
        daemon.start()
        try:
            assert notify_socket.wait_for(_ready, 30) >= 0, daemon.log()
            sim.send(b"81234567890123456789")
            seen = notify_socket.wait_for(lambda m: "last seq 1" in m.get("STATUS", ""), 30)
            assert seen >= 0, daemon.log()
            assert notify_socket.with_field("STOPPING") == []
            daemon.signal(signal.SIGTERM)
            assert daemon.proc is not None
            assert daemon.proc.wait(30) == 0
        finally:
            if daemon.alive():
                daemon.kill()
    assert notify_socket.with_field("STOPPING", "1"), notify_socket.since(0)
    # After STOPPING nothing pings the watchdog any more.
    stopping = notify_socket.wait_for(lambda m: m.get("STOPPING") == "1", 0)
    assert not any("WATCHDOG" in m for m in notify_socket.since(stopping))


def test_sighup_reload_is_framed_by_reloading_and_ready(
    tmp_path: Path, mosquitto: Mosquitto, notify_socket: NotifySocket
) -> None:
    link = tmp_path / "scanner"
    sim = SerialScannerSimulator(framing="cr", aim=True, auto=False, link=link)
    daemon = DaemonProcess(_config(tmp_path, mosquitto, link), tmp_path / "daemon.log")
    with sim:
        sim.start()
        daemon.start()
        try:
            assert notify_socket.wait_for(_ready, 30) >= 0, daemon.log()
            before = notify_socket.count()
            daemon.signal(signal.SIGHUP)
            assert daemon.wait_log("reload: configuration from", 30), daemon.log()
            reloading = notify_socket.wait_for(lambda m: m.get("RELOADING") == "1", 10)
            assert reloading >= before
            message = notify_socket.since(reloading)[0]
            # MONOTONIC_USEC: CLOCK_MONOTONIC of this machine, shared with this process.
            now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
            assert 0 < int(message["MONOTONIC_USEC"]) <= now_usec
            assert notify_socket.wait_for(_ready, 10, start=reloading + 1) > reloading
        finally:
            daemon.stop()


def _wedge_status_write(state_dir: Path, pid: int) -> Path:
    """Put a FIFO where the publisher writes its next status file.

    open(2) of a FIFO for writing blocks until a reader comes: the publisher thread
    hangs in a real system call on the state directory, as on storage that stops
    answering, while every other thread (pipeline, devices, notifier) goes on.
    """
    fifo = state_dir / f".status.json.{pid}.tmp"
    os.mkfifo(fifo)
    return fifo


def test_watchdog_pings_stop_while_the_publisher_thread_is_wedged_and_resume_after(
    tmp_path: Path, mosquitto: Mosquitto, notify_socket: NotifySocket
) -> None:
    link = tmp_path / "scanner"
    sim = SerialScannerSimulator(framing="cr", aim=True, auto=False, link=link)
    daemon = DaemonProcess(_config(tmp_path, mosquitto, link), tmp_path / "daemon.log")
    with sim:
        sim.start()
        daemon.start()
        reader = -1
        try:
            assert notify_socket.wait_for(_ready, 30) >= 0, daemon.log()
            assert notify_socket.wait_for(lambda m: m.get("WATCHDOG") == "1", 30) >= 0
            fifo = _wedge_status_write(tmp_path / "state", daemon.pid)
            stalled = notify_socket.wait_for(
                lambda m: m.get("STATUS", "").startswith("stalled: publisher"), 60
            )
            assert stalled >= 0, daemon.log()
            # Scans still go through the pipeline while the publisher hangs.
            sim.send(b"81234567890123456789")
            # (the good-read beep comes only after the journal committed it)
            assert _wait(lambda: len(sim.events("good_read")) == 1, 30), daemon.log()
            time.sleep(4 * WATCHDOG_USEC / 1e6)  # four watchdog periods without a ping
            wedged = notify_socket.since(stalled)
            assert daemon.alive()
            assert not any("WATCHDOG" in m for m in wedged), wedged
            assert "publisher made no progress" in daemon.log()
            assert "pipeline made no progress" not in daemon.log()

            # Unwedge: a reader on the FIFO lets the blocked open() return.
            resumed_from = notify_socket.count()
            reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
            again = notify_socket.wait_for(lambda m: m.get("WATCHDOG") == "1", 30, resumed_from)
            assert again >= 0, daemon.log()
            assert daemon.wait_log("publisher turns again", 10)
        finally:
            if reader >= 0:
                os.close(reader)
            assert daemon.stop() == 0


@pytest.fixture
def freezable_dir(tmp_path: Path) -> Iterator[Path]:
    """An ext4 file system of its own (a loop device) that the test can ``fsfreeze``."""
    tools = [shutil.which(t) for t in ("mkfs.ext4", "mount", "umount", "fsfreeze")]
    if os.geteuid() != 0 or None in tools or not Path("/dev/loop-control").exists():
        missing("needs root, loop devices, mkfs.ext4 and fsfreeze (util-linux, e2fsprogs)")
    image = tmp_path / "state.img"
    mnt = tmp_path / "state"
    mnt.mkdir()
    with image.open("wb") as f:
        f.truncate(64 * 1024 * 1024)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True, capture_output=True)
    mounted = subprocess.run(
        ["mount", "-o", "loop", str(image), str(mnt)], capture_output=True, text=True, check=False
    )
    if mounted.returncode != 0:
        missing(f"cannot loop-mount an image here: {mounted.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["fsfreeze", "--unfreeze", str(mnt)], capture_output=True, check=False)
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, check=False)


def test_watchdog_pings_stop_while_the_journal_storage_hangs_and_resume_after(
    tmp_path: Path, mosquitto: Mosquitto, notify_socket: NotifySocket, freezable_dir: Path
) -> None:
    link = tmp_path / "scanner"
    sim = SerialScannerSimulator(framing="cr", aim=True, auto=False, link=link)
    # The state directory (journal) is the frozen file system: a scan's commit blocks in
    # the kernel, as on an SD card that stops answering.
    daemon = DaemonProcess(_config(tmp_path, mosquitto, link), tmp_path / "daemon.log")
    with sim:
        sim.start()
        daemon.start()
        frozen = False
        try:
            assert notify_socket.wait_for(_ready, 30) >= 0, daemon.log()
            assert notify_socket.wait_for(lambda m: m.get("WATCHDOG") == "1", 30) >= 0
            subprocess.run(["fsfreeze", "--freeze", str(freezable_dir)], check=True)
            frozen = True
            sim.send(b"81234567890123456789")
            stalled = notify_socket.wait_for(
                lambda m: m.get("STATUS", "").startswith("stalled: pipeline"), 60
            )
            assert stalled >= 0, daemon.log()
            time.sleep(4 * WATCHDOG_USEC / 1e6)
            assert not any("WATCHDOG" in m for m in notify_socket.since(stalled))
            assert sim.events("good_read") == []  # no beep for a scan not yet durable
            assert daemon.alive()

            resumed_from = notify_socket.count()
            subprocess.run(["fsfreeze", "--unfreeze", str(freezable_dir)], check=True)
            frozen = False
            assert notify_socket.wait_for(lambda m: m.get("WATCHDOG") == "1", 30, resumed_from) >= 0
            assert _wait(lambda: len(sim.events("good_read")) == 1, 30), daemon.log()
            assert "pipeline made no progress" in daemon.log()
        finally:
            if frozen:
                subprocess.run(["fsfreeze", "--unfreeze", str(freezable_dir)], check=False)
            assert daemon.stop() == 0
