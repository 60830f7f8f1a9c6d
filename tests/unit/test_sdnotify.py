"""The notifier and watchdog logic, against a real AF_UNIX datagram socket."""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from scanfleet.daemon.core import journald
from scanfleet.daemon.service.sdnotify import (
    Liveness,
    Notifier,
    Watchdog,
    stalled,
    watchdog_interval,
)


class Socket:
    """A bound datagram socket, as systemd's end of NOTIFY_SOCKET."""

    def __init__(self) -> None:
        self.dir = tempfile.TemporaryDirectory(prefix="sfn-")
        self.path = str(Path(self.dir.name) / "s")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)

    def received(self) -> list[dict[str, str]]:
        out: list[dict[str, str]] = []
        while True:
            try:
                data = self.sock.recv(65536).decode()
            except TimeoutError:
                return out
            out.append(dict(line.split("=", 1) for line in data.splitlines()))


@pytest.fixture
def notify_socket(monkeypatch: pytest.MonkeyPatch) -> Iterator[Socket]:
    pytest.importorskip("systemd.daemon", reason="systemd-python (scanfleet[systemd])")
    s = Socket()
    monkeypatch.setenv("NOTIFY_SOCKET", s.path)
    monkeypatch.setenv("WATCHDOG_USEC", "4000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    yield s
    s.sock.close()
    s.dir.cleanup()


def test_without_notify_socket_every_message_is_a_no_op() -> None:
    notifier = Notifier({})
    assert not notifier.enabled
    assert notifier.ready("x") is False
    assert notifier.watchdog() is False
    watchdog = Watchdog(notifier, [], lambda: "ok")
    watchdog.start()
    assert watchdog._thread is None  # nothing runs when nobody listens


def test_watchdog_usec_for_another_pid_or_zero_means_no_watchdog() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 30.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())})
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}) is None


def test_ready_status_reloading_and_stopping_reach_the_socket(notify_socket: Socket) -> None:
    notifier = Notifier()
    assert notifier.enabled
    assert notifier.watchdog_s == 4.0
    assert notifier.ready("1 device\n(1 bound)")
    assert notifier.reloading()
    assert notifier.stopping()
    ready, reloading, stopping = notify_socket.received()
    assert ready == {"READY": "1", "STATUS": "1 device (1 bound)"}  # one line
    assert reloading["RELOADING"] == "1"
    assert int(reloading["MONOTONIC_USEC"]) <= time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    assert stopping["STOPPING"] == "1"


def test_a_loop_past_its_allowance_is_stalled_and_only_that_one() -> None:
    now = 1000.0
    checks = [Liveness("pipeline", lambda: 999.0, 2.0), Liveness("publisher", lambda: 990.0, 5.0)]
    assert stalled(checks, now) == [("publisher", 10.0)]
    assert stalled(checks, 991.0) == []


def test_pings_stop_while_a_loop_is_stalled_and_resume_when_it_turns(
    notify_socket: Socket, caplog: pytest.LogCaptureFixture
) -> None:
    progress = {"publisher": time.monotonic()}
    watchdog = Watchdog(
        Notifier(),
        [Liveness("publisher", lambda: progress["publisher"], 1.0)],
        lambda: "all fine",
    )
    watchdog.tick()
    assert notify_socket.received() == [{"WATCHDOG": "1"}, {"STATUS": "all fine"}]
    progress["publisher"] -= 60
    with caplog.at_level(logging.WARNING):
        watchdog.tick()
        watchdog.tick()
    assert notify_socket.received() == [{"STATUS": "stalled: publisher for 60 s"}]
    assert "publisher made no progress" in caplog.text
    progress["publisher"] = time.monotonic()
    watchdog.tick()
    assert notify_socket.received() == [{"WATCHDOG": "1"}, {"STATUS": "all fine"}]
    assert watchdog.pings == 2


def test_journal_fields_come_from_the_allow_list_and_device_threads_only() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "m %s", ("arg",), None)
    record.threadName = "device-dock"
    record.scanfleet_seq = 7
    record.id_number = "11010519491231002X"  # an extra outside the list goes nowhere
    assert journald.journal_fields(record) == {"SCANFLEET_DEVICE": "dock", "SCANFLEET_SEQ": "7"}


def test_under_systemd_needs_journal_stream_to_name_our_stderr_or_an_invocation_id() -> None:
    assert journald.under_systemd({"INVOCATION_ID": "abc"})
    assert not journald.under_systemd({})
    assert not journald.under_systemd({"JOURNAL_STREAM": "1:1"})
