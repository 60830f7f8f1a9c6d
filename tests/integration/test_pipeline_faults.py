"""The read path fails safe: junk GS1 is refused, a broken station index or a failing
read never stops the pipeline, a dead pipeline thread is replaced (issue 15)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from scanfleet.daemon.core.alarms import Severity
from scanfleet.daemon.core.config import Config
from scanfleet.daemon.remote.control import CommandError
from scanfleet.daemon.runner import Daemon, build_daemon
from scanfleet.drivers import virtual
from scanfleet.drivers.base import Signal

pytestmark = pytest.mark.integration

JUNK = [b"37000", b"10ABC", b"99x", b"91internal", b"1111111111111111"]
DATAMATRIX = b"]d2010950110102091717270630101234A\x1d21SN0001"


def _wait(predicate: Callable[[], object], timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


@pytest.fixture
def daemon(tmp_path: Path, channel: str) -> Iterator[Daemon]:
    config = Config.model_validate(
        {
            "identity": {"site": "site-f", "device": "dev-f"},
            "paths": {"state_dir": str(tmp_path / "state")},
            # Nothing listens there: the publisher backs off, the read path is what counts.
            "broker": {"url": "mqtt://127.0.0.1:9"},
            "station": {"name": "counter", "operation": "retail_sale"},
            "devices": [{"name": "scanner", "driver": "virtual", "channel": channel}],
        }
    )
    d = build_daemon(config)
    d.start()
    assert d.ready.wait(15)
    yield d
    d.shutdown()


def read(daemon: Daemon, channel: str, data: bytes) -> tuple[dict[str, Any] | None, Signal]:
    """Inject one read; return the record it made (None if none) and its signal."""
    before_seq = daemon.journal.last_seq
    before = len(virtual.signals(channel))
    virtual.inject(channel, data + b"\r")
    assert _wait(lambda: len(virtual.signals(channel)) > before), "no signal"
    signal = virtual.signals(channel)[before]
    if daemon.journal.last_seq == before_seq:
        return None, signal
    (record,) = daemon.journal.read_after(before_seq, limit=1, max_bytes=1 << 20)
    return record.as_dict(), signal


def test_junk_that_parses_as_gs1_is_refused_and_a_real_datamatrix_accepted(
    daemon: Daemon, channel: str
) -> None:
    for junk in JUNK:
        record, signal = read(daemon, channel, junk)
        assert record is not None
        assert (record["verdict"], signal) == ("refused", Signal.BAD_READ), record
        assert record["reason"].startswith("not a trace code"), record["reason"]
    record, signal = read(daemon, channel, DATAMATRIX)
    assert record is not None
    assert (record["kind"], record["verdict"], signal) == ("gs1", "accepted", Signal.GOOD_READ)
    assert set(record["fields"]["elements"]) == {"01", "17", "10", "21"}


def test_a_broken_station_index_never_stops_reads_and_catches_up(
    daemon: Daemon, channel: str
) -> None:
    index = daemon.station.index
    assert index is not None
    path = index.path
    index._db.close()  # every later index call fails, as on a damaged or full disk
    record, signal = read(daemon, channel, DATAMATRIX)
    assert record is not None
    assert (record["verdict"], signal) == ("accepted", Signal.GOOD_READ)
    assert "duplicate check unavailable" in record["problems"]
    assert "station_index" in daemon.alarms
    index._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    again, signal = read(daemon, channel, DATAMATRIX)
    assert again is not None
    # The index caught up with the read it missed: the same code again is a duplicate.
    assert (again["duplicate_of"], signal) == (record["seq"], Signal.BAD_READ)
    assert "station_index" not in daemon.alarms


# The thread is killed on purpose here; pytest reports that as a warning.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_an_unexpected_failure_costs_one_read_and_a_dead_thread_is_replaced(
    daemon: Daemon, channel: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipeline = daemon.pipeline
    original = pipeline.handle
    failures: list[BaseException] = [RuntimeError("a bug"), SystemExit("thread killer")]

    def flaky(incoming: Any) -> Any:
        if failures:
            raise failures.pop(0)
        return original(incoming)

    monkeypatch.setattr(pipeline, "handle", flaky)
    record, signal = read(daemon, channel, DATAMATRIX)
    assert (record, signal) == (None, Signal.BAD_READ)
    assert "pipeline_error" in daemon.alarms
    virtual.inject(channel, DATAMATRIX + b"\r")  # this one kills the thread
    assert _wait(lambda: not pipeline.running)
    assert pipeline.ensure_running()  # what the supervisor's loop does every few seconds
    assert "thread_died" in daemon.alarms
    record, signal = read(daemon, channel, b"]d2010950110102091717270630101234A\x1d21SN0002")
    assert record is not None
    assert (record["verdict"], signal) == ("accepted", Signal.GOOD_READ)
    assert "pipeline_error" not in daemon.alarms


class _DeadEnd:
    def put(self, item: object, *args: object, **kwargs: object) -> None:
        raise SystemExit("device thread killer")


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_device_worker_that_dies_is_noticed_and_rebound(
    daemon: Daemon, channel: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = daemon.workers["scanner"]
    monkeypatch.setattr(worker, "_out", _DeadEnd())
    virtual.inject(channel, DATAMATRIX + b"\r")
    assert _wait(lambda: worker.died)
    daemon.supervise()  # what serve() does every few seconds
    assert "thread_died" in daemon.alarms
    assert daemon.workers["scanner"] is not worker
    assert _wait(lambda: str(daemon.workers["scanner"].state) == "bound")
    record, signal = read(daemon, channel, b"]d2010950110102091717270630101234A\x1d21SN0003")
    assert record is not None
    assert (record["verdict"], signal) == ("accepted", Signal.GOOD_READ)


def test_the_ack_remote_command_ends_a_sticky_alarm(daemon: Daemon) -> None:
    daemon.alarms.raise_("journal_quarantined", "set aside", Severity.CRITICAL)
    assert daemon.commands.run("ack", {"code": "journal_quarantined"}) == {
        "acknowledged": "journal_quarantined"
    }
    assert "journal_quarantined" not in daemon.alarms
    with pytest.raises(CommandError) as refused:
        daemon.commands.run("ack", {"code": "journal_quarantined"})
    assert refused.value.code == "not_found"
