"""``scanfleet local`` (the reference client, a real subprocess) against the daemon's
Unix socket: it changes the operation, records an entry, watches scans, and without the
token it is refused."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from scanfleet.daemon.core.config import Config
from scanfleet.daemon.runner import Daemon, build_daemon
from scanfleet.drivers import virtual
from support.broker import Mosquitto

pytestmark = pytest.mark.integration

_CLI = [sys.executable, "-m", "scanfleet.daemon", "local"]
TOKEN = "client-token-0123456789"  # noqa: S105 - a test token


@pytest.fixture
def daemon(tmp_path: Path, mosquitto: Mosquitto, channel: str) -> Iterator[Daemon]:
    config = Config.model_validate(
        {
            "identity": {"site": "site-a", "device": "dev-1"},
            "paths": {"state_dir": str(tmp_path / "state")},
            "broker": {"url": mosquitto.url},
            "local_api": {"enabled": True, "token": TOKEN},
            "devices": [{"name": "counter", "driver": "virtual", "channel": channel}],
        }
    )
    d = build_daemon(config)
    d.start()
    assert d.ready.wait(15)
    yield d
    d.shutdown()


def _local(daemon: Daemon, *args: str, token: str = TOKEN) -> subprocess.CompletedProcess[str]:
    assert daemon.local_api is not None
    env = {**os.environ, "SCANFLEET_LOCAL_TOKEN": token}
    return subprocess.run(
        [*_CLI, "--socket", str(daemon.local_api.socket_path), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_the_reference_client_sets_the_operation_and_records_an_entry(daemon: Daemon) -> None:
    done = _local(daemon, "op", "dispense")
    assert done.returncode == 0, done.stderr
    assert '"operation": "dispense"' in done.stdout
    assert daemon.station.operation == "dispense"
    entry = _local(daemon, "manual", "granules;batch=G1;qty=5")
    assert entry.returncode == 0, entry.stderr
    assert '"kind": "exempt"' in entry.stdout
    bad = _local(daemon, "op", "teleport")
    assert bad.returncode == 1
    assert "unknown operation" in bad.stdout


def test_the_reference_client_watches_scans(daemon: Daemon, channel: str) -> None:
    api = daemon.local_api
    assert api is not None
    env = {**os.environ, "SCANFLEET_LOCAL_TOKEN": TOKEN}
    cmd = [*_CLI, "--socket", str(api.socket_path), "--json", "watch", "-n", "2"]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env) as proc:
        assert _wait(lambda: api.client_count == 1)
        virtual.inject(channel, b"83711700200000000061\r")
        virtual.inject(channel, b"83711700200000000061\r")
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert out.count('"type": "record"') == 2
    assert '"verdict": "accepted"' in out
    assert '"duplicate_of": 1' in out


def test_the_reference_client_without_the_token_is_refused(daemon: Daemon) -> None:
    done = _local(daemon, "status", token="not-the-token-at-all")  # noqa: S106 - a wrong token
    assert done.returncode == 1
    assert "refused: unauthorized" in done.stderr


def _wait(predicate: Callable[[], object], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False
