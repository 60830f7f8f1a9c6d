"""The local POS interface: a Unix socket and a localhost WebSocket stream every record
with its verdict to concurrent clients, accept station changes, and refuse clients without
the token. The daemon runs in-process with a virtual scanner and a real mosquitto."""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from scanfleet.daemon.core.config import Config
from scanfleet.daemon.runner import Daemon, build_daemon
from scanfleet.drivers import virtual
from support.broker import Mosquitto

pytestmark = pytest.mark.integration

TOKEN = "pos-token-0123456789abcdef"  # noqa: S105 - a test token
CODES = ["83711700200000000031", "6901234567892", "83711700200000000032", "83711700200000000031"]


class UnixClient:
    """A line-JSON client of the Unix socket."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(15)
        self.sock.connect(str(path))
        self.file = self.sock.makefile("rwb")

    def send(self, message: dict[str, Any]) -> None:
        self.file.write(json.dumps(message).encode() + b"\n")
        self.file.flush()

    def recv(self) -> dict[str, Any] | None:
        line = self.file.readline()
        return json.loads(line) if line else None

    def close(self) -> None:
        self.file.close()
        self.sock.close()


class WsClient:
    """A client of the WebSocket."""

    def __init__(self, port: int) -> None:
        self._stack = contextlib.ExitStack()
        self.ws: ClientConnection = self._stack.enter_context(
            connect(f"ws://127.0.0.1:{port}", open_timeout=15)
        )

    def send(self, message: dict[str, Any]) -> None:
        self.ws.send(json.dumps(message))

    def recv(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.ws.recv(timeout=15))
        except (ConnectionClosed, TimeoutError):
            return None

    def close(self) -> None:
        self._stack.close()


@pytest.fixture
def daemon(tmp_path: Path, mosquitto: Mosquitto, channel: str) -> Iterator[Daemon]:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n", encoding="utf-8")
    config = Config.model_validate(
        {
            "identity": {"site": "site-a", "device": "dev-1"},
            "paths": {"state_dir": str(tmp_path / "state")},
            "broker": {"url": mosquitto.url},
            "station": {"name": "counter-1", "operation": "retail_sale"},
            "local_api": {"enabled": True, "websocket_port": 0, "token_file": str(token_file)},
            "devices": [{"name": "counter", "driver": "virtual", "channel": channel}],
        }
    )
    d = build_daemon(config)
    d.start()
    assert d.ready.wait(15)
    yield d
    d.shutdown()


def _records(client: UnixClient | WsClient, count: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    while len(out) < count:
        message = client.recv()
        assert message is not None, f"connection ended after {len(out)} records"
        if message["type"] == "record":
            out.append(message["record"])
    return out


def _hello(client: UnixClient | WsClient) -> dict[str, Any]:
    client.send({"op": "hello", "token": TOKEN})
    reply = client.recv()
    assert reply is not None
    assert reply["type"] == "hello"
    return reply


def test_two_concurrent_clients_receive_every_scan_with_its_verdict(
    daemon: Daemon, channel: str
) -> None:
    assert daemon.local_api is not None
    assert daemon.local_api.websocket_port
    unix = UnixClient(daemon.local_api.socket_path)
    ws = WsClient(daemon.local_api.websocket_port)
    try:
        assert _hello(unix)["status"]["station"]["operation"] == "retail_sale"
        _hello(ws)
        for code in CODES:
            virtual.inject(channel, code.encode() + b"\r")
        seen = [_records(c, len(CODES)) for c in (unix, ws)]
    finally:
        unix.close()
        ws.close()
    assert seen[0] == seen[1]
    assert [(r["value"], r["kind"], r["verdict"]) for r in seen[0]] == [
        (CODES[0], "trace20", "accepted"),
        (CODES[1], "ean13", "refused"),
        (CODES[2], "trace20", "accepted"),
        (CODES[3], "trace20", "refused"),
    ]
    assert seen[0][3]["duplicate_of"] == seen[0][0]["seq"]
    assert [r["seq"] for r in seen[0]] == [1, 2, 3, 4]


def test_a_client_changes_the_bill_and_records_an_exempt_entry(
    daemon: Daemon, channel: str
) -> None:
    assert daemon.local_api is not None
    assert daemon.local_api.websocket_port
    pos = WsClient(daemon.local_api.websocket_port)
    watcher = UnixClient(daemon.local_api.socket_path)
    try:
        _hello(pos)
        _hello(watcher)
        pos.send({"op": "set_bill", "bill": "SALE-77", "request_id": 1})
        pos.send(
            {
                "op": "manual_entry",
                "request_id": 2,
                "entry": {"category": "loose_injection", "product": "X", "quantity": 2},
            }
        )
        pos.send({"op": "set_operation", "operation": "teleport", "request_id": 3})
        replies: list[dict[str, Any]] = []
        while len(replies) < 3:
            message = pos.recv()
            assert message is not None
            if message["type"] != "record":
                replies.append(message)
        virtual.inject(channel, CODES[0].encode() + b"\r")
        records = _records(watcher, 3)
    finally:
        pos.close()
        watcher.close()
    assert [(r["request_id"], r["type"]) for r in replies] == [(1, "ok"), (2, "ok"), (3, "error")]
    assert "unknown operation" in replies[2]["error"]
    control, entry, scan = records
    assert (control["type"], control["action"], control["origin"]) == (
        "control",
        "bill",
        "local_api",
    )
    assert (entry["type"], entry["kind"], entry["category"]) == (
        "manual_entry",
        "exempt",
        "loose_injection",
    )
    assert (scan["type"], scan["bill"], scan["verdict"]) == ("scan", "SALE-77", "accepted")


def test_a_client_without_the_token_is_refused_and_gets_no_records(
    daemon: Daemon, channel: str
) -> None:
    assert daemon.local_api is not None
    assert daemon.local_api.websocket_port
    unix = UnixClient(daemon.local_api.socket_path)
    ws = WsClient(daemon.local_api.websocket_port)
    silent = UnixClient(daemon.local_api.socket_path)
    try:
        unix.send({"op": "hello", "token": "wrong-token-wrong-token"})
        ws.send({"op": "status"})
        silent.send({"op": "hello"})
        for client in (unix, ws, silent):
            assert client.recv() == {"type": "error", "error": "unauthorized"}
        virtual.inject(channel, CODES[0].encode() + b"\r")
        for client in (unix, ws, silent):
            assert client.recv() is None  # disconnected: no record reaches it
    finally:
        unix.close()
        ws.close()
        silent.close()
    assert daemon.journal.last_seq <= 1
