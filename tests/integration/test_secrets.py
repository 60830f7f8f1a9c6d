"""Secrets never leave in clear, and state files are private whatever the umask: a real
daemon process at trace level, started with umask 022, its log and files inspected."""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

import pytest
from websockets.sync.client import connect

from support.broker import Mosquitto
from support.daemon import DaemonProcess, write_config

pytestmark = pytest.mark.integration

TOKEN = "local-api-token-5f0c9a7e1d"  # noqa: S105 - test secret
PASSWORD = "broker-password-8e2b7c41"  # noqa: S105 - test secret


def test_trace_log_has_no_secret_and_no_state_file_is_world_readable(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    state = tmp_path / "state"
    config = write_config(
        tmp_path / "scanfleet.toml",
        f"""
[identity]
site = "s1"
device = "dev-1"
[paths]
state_dir = "{state}"
[broker]
url = "{mosquitto.url}"
username = "dev-1"
password = "{PASSWORD}"
[local_api]
enabled = true
websocket_port = 0
token = "{TOKEN}"
[[devices]]
name = "scanner"
driver = "virtual"
channel = "test-secrets"
""",
    )
    daemon = DaemonProcess(config, tmp_path / "daemon.log", log_level="trace")
    old = os.umask(0o022)
    try:
        daemon.start()
    finally:
        os.umask(old)
    try:
        assert daemon.wait_log("local API on"), daemon.log()
        port = int(re.findall(r"ws://127\.0\.0\.1:(\d+)", daemon.log())[0])
        with connect(f"ws://127.0.0.1:{port}") as ws:
            ws.send(json.dumps({"op": "hello", "token": TOKEN}))
            assert json.loads(ws.recv(timeout=10))["type"] == "hello"
            ws.send(json.dumps({"op": "status", "request_id": "r1"}))
            ws.recv(timeout=10)
        with connect(f"ws://127.0.0.1:{port}") as ws:
            ws.send(json.dumps({"op": "hello", "token": "wrong-" + TOKEN}))
            assert json.loads(ws.recv(timeout=10)) == {"type": "error", "error": "unauthorized"}
        assert daemon.wait_log("refused (no or wrong token)")
    finally:
        daemon.stop()

    log = daemon.log()
    assert "TRACE" in log or "DEBUG" in log, "not a trace-level run"
    assert "websockets" in log, "the frame logging that leaked the token did not run"
    for secret in (TOKEN, PASSWORD):
        assert secret not in log
    for path in [state, *state.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o007 == 0, f"{path} is {mode:o}"
