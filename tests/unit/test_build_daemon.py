"""build_daemon() does the start's I/O in order and unwinds it when a step fails;
the Daemon constructor itself only wires. Nothing here connects to a broker."""

from __future__ import annotations

import io
import logging
import threading
from pathlib import Path

import pytest

from scanfleet.daemon.core.config import Config
from scanfleet.daemon.journal.journal import Journal
from scanfleet.daemon.remote.commands import RecentLog
from scanfleet.daemon.runner import build_daemon, journal_path
from scanfleet.daemon.service.sdnotify import summary
from scanfleet.daemon.station.duplicates import INDEX_FILE
from scanfleet.daemon.ui.liveview import LiveView


def _config(tmp_path: Path) -> Config:
    return Config.model_validate(
        {
            "identity": {"site": "site-a", "device": "dev-1"},
            "paths": {"state_dir": str(tmp_path / "state")},
            "broker": {"url": "mqtt://127.0.0.1:1"},
            "station": {"name": "counter-1", "operation": "retail_sale"},
        }
    )


def _recent_logs() -> list[logging.Handler]:
    return [h for h in logging.getLogger().handlers if isinstance(h, RecentLog)]


def test_a_build_that_fails_late_closes_the_journal_it_opened(tmp_path: Path) -> None:
    config = _config(tmp_path)
    index = config.paths.state_dir / INDEX_FILE
    index.mkdir(parents=True)  # the duplicate index, the last step, cannot be opened
    handlers = _recent_logs()
    threads = {t.name for t in threading.enumerate()}
    with pytest.raises(Exception, match="unable to open database file"):
        build_daemon(config)
    assert _recent_logs() == handlers
    assert {t.name for t in threading.enumerate()} <= threads  # no checkpointer left running
    # The journal's writer lock was released: this process can open it again.
    with Journal.open(journal_path(config), "dev-1") as journal:
        assert journal.last_seq == 0
    index.rmdir()
    daemon = build_daemon(config)
    assert daemon.station.index is not None
    assert {t.name for t in threading.enumerate()} - threads == {
        f"journal-checkpoint:{journal_path(config).name}"
    }  # wired, not started: only the journal's checkpointer runs before start()
    daemon.start()
    daemon.shutdown()


def test_the_status_line_and_the_live_view_read_a_built_daemon(tmp_path: Path) -> None:
    daemon = build_daemon(_config(tmp_path))
    try:
        daemon.journal.append({"type": "scan", "value": "code-1"})
        assert summary(daemon) == ("0 devices; journal depth 1 (last seq 1); broker stopped")
        out = io.StringIO()
        view = LiveView(daemon, out=out)
        daemon.pipeline.add_listener(view.on_record)
        view.draw()
        screen = out.getvalue()
        assert "site site-a  device dev-1" in screen
        assert "journal: last seq 1, delivered 0, waiting 1" in screen
        assert "devices: none configured" in screen
    finally:
        daemon.detach()
        assert daemon.station.index is not None
        daemon.station.index.close()
        daemon.journal.close()
