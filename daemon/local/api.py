"""The local interface for POS/HIS software on the terminal (docs/local-api.md).

A Unix socket (one JSON object per line) and, optionally, a WebSocket on 127.0.0.1 (one
JSON object per text message) speak the same protocol. Off by default. A client first
sends ``{"op": "hello", "token": …}``; without the right token it is refused and
disconnected. Then it receives every committed journal record (scans with kind, verdict,
reason, ``duplicate_of``, ``expected``; control, manual-entry and bill-summary records) as
``{"type": "record", "record": …}`` and may change operation, bill and operator or record
manual entries. The POS can so print the trace code on the receipt and refuse settlement
without a scan.

The pipeline never waits for a client: records are queued per client, and a client that
falls too far behind is disconnected (it reconnects and reads the journal's tail by seq).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
import stat
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from scanfleet.daemon.core.config import LocalApiConfig
from scanfleet.daemon.core.errors import ConfigError, ConfigProblem, JournalError
from scanfleet.daemon.station.manual import EntryRequest
from scanfleet.daemon.station.receiving import Manifest
from scanfleet.daemon.station.station import Station, StationError

log = logging.getLogger(__name__)

SOCKET_FILE = "local.sock"
HELLO_TIMEOUT = 10.0
CLIENT_QUEUE = 1000
MAX_LINE = 1 << 20


def read_token(config: LocalApiConfig) -> str:
    """The configured token (from ``token_file`` when given)."""
    if config.token_file is not None:
        try:
            token = config.token_file.read_text(encoding="utf-8").strip()
        except OSError as err:
            raise ConfigError(
                str(config.token_file), [ConfigProblem("local_api.token_file", str(err))]
            ) from err
        if len(token) < 16:
            raise ConfigError(
                str(config.token_file),
                [ConfigProblem("local_api.token_file", "token shorter than 16 characters")],
            )
        return token
    if config.token is None:
        raise ConfigError("<config>", [ConfigProblem("local_api.token", "no token configured")])
    return config.token


class _Client:
    """One connected client, whichever transport."""

    def __init__(
        self,
        name: str,
        send: Callable[[str], Awaitable[None]],
        close: Callable[[], Awaitable[None]],
    ) -> None:
        self.name = name
        self.queue: asyncio.Queue[str | None] = asyncio.Queue(CLIENT_QUEUE)
        self._send = send
        self._close = close

    def offer(self, text: str) -> bool:
        """Queue *text*; False when the client is too far behind."""
        try:
            self.queue.put_nowait(text)
        except asyncio.QueueFull:
            return False
        return True

    async def pump(self) -> None:
        """Send queued messages until the client is closed."""
        while (text := await self.queue.get()) is not None:
            await self._send(text)

    async def close(self) -> None:
        """Close the connection."""
        await self._close()


class LocalApi:
    """Serves the local protocol on a thread of its own (asyncio)."""

    def __init__(
        self,
        station: Station,
        config: LocalApiConfig,
        state_dir: Path,
        *,
        token: str,
        status: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        """Set up (no I/O: *token* is :func:`read_token`'s; :meth:`start` binds)."""
        self.station = station
        self.config = config
        self.socket_path = config.socket or state_dir / SOCKET_FILE
        self.websocket_port: int | None = None
        """The WebSocket's bound port once started (config 0: any free port)."""
        self._token = token
        self._status = status or dict
        self._clients: set[_Client] = set()
        self._closing: set[asyncio.Future[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = threading.Event()
        self._stopped: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="local-api", daemon=True)

    @property
    def client_count(self) -> int:
        """Clients connected and past hello."""
        return len(self._clients)

    # -- life cycle (called from other threads) -----------------------------------

    def start(self, timeout: float = 10.0) -> None:
        """Bind the socket (and WebSocket) and serve; raises when binding fails."""
        self._thread.start()
        self._started.wait(timeout)
        if self._error is not None:
            raise self._error

    def stop(self, timeout: float = 5.0) -> None:
        """Disconnect every client and stop serving."""
        loop, stopped = self._loop, self._stopped
        if loop is not None and stopped is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # loop already finished
                loop.call_soon_threadsafe(stopped.set)
        self._thread.join(timeout)

    def update_config(self, config: LocalApiConfig) -> list[str]:
        """Apply a new ``local_api`` section; return the settings only a restart applies.

        A new token takes effect at once: the old one is refused from now on, and every
        open session (all of them authenticated with the old token) is closed.
        Raises ConfigError when the new token cannot be read (nothing changes then).
        """
        restart = [
            f"local_api.{name}"
            for name in ("enabled", "socket", "websocket_port")
            if getattr(config, name) != getattr(self.config, name)
        ]
        token = read_token(config)
        self.config = self.config.model_copy(
            update={"token": config.token, "token_file": config.token_file}
        )
        if not hmac.compare_digest(token.encode(), self._token.encode()):
            self._token = token
            log.info("local API: token changed; closing %d session(s)", len(self._clients))
            loop = self._loop
            if loop is not None and not loop.is_closed():
                with contextlib.suppress(RuntimeError):  # loop closed meanwhile
                    loop.call_soon_threadsafe(self._drop_all)
        return restart

    def on_record(self, record: dict[str, Any]) -> None:
        """Pipeline listener: stream *record* to every client (never blocks)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        text = json.dumps({"type": "record", "record": record}, ensure_ascii=False)
        with contextlib.suppress(RuntimeError):  # loop closed between the check and the call
            loop.call_soon_threadsafe(self._broadcast, text)

    # -- the loop -------------------------------------------------------------------

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except OSError as err:
            self._error = err
            self._started.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        if self.socket_path.exists() and stat.S_ISSOCK(self.socket_path.stat().st_mode):
            self.socket_path.unlink()  # left by an earlier run that did not stop cleanly
        unix = await asyncio.start_unix_server(
            self._serve_unix, path=self.socket_path, limit=MAX_LINE
        )
        # Owner and group: the POS user is put in the daemon's group to connect.
        os.chmod(self.socket_path, 0o660)
        ws: Server | None = None
        if self.config.websocket_port is not None:
            ws = await serve(
                self._serve_websocket, "127.0.0.1", self.config.websocket_port, max_size=MAX_LINE
            )
            self.websocket_port = next(iter(ws.sockets)).getsockname()[1]
        log.info(
            "local API on %s%s",
            self.socket_path,
            f" and ws://127.0.0.1:{self.websocket_port}" if ws else "",
        )
        self._started.set()
        await self._stopped.wait()
        unix.close()
        if ws is not None:
            ws.close()
        for client in list(self._clients):
            await client.close()
        await unix.wait_closed()
        if ws is not None:
            await ws.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()

    def _broadcast(self, text: str) -> None:
        for client in list(self._clients):
            if not client.offer(text):
                log.warning("local API client %s too far behind: disconnected", client.name)
                self._drop(client)

    def _drop(self, client: _Client) -> None:
        self._clients.discard(client)
        task = asyncio.ensure_future(client.close())
        self._closing.add(task)  # keep a reference until done
        task.add_done_callback(self._closing.discard)

    def _drop_all(self) -> None:
        for client in list(self._clients):
            self._drop(client)

    async def _serve_unix(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async def send(text: str) -> None:
            writer.write(text.encode() + b"\n")
            await writer.drain()

        async def recv() -> str | None:
            line = await reader.readline()
            return line.decode("utf-8", "replace") if line else None

        async def close() -> None:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

        try:
            await self._session("unix", send, recv, close)
        except (ConnectionError, asyncio.IncompleteReadError, ValueError) as err:
            log.info("local API unix client gone: %s", err)
        finally:
            await close()

    async def _serve_websocket(self, ws: ServerConnection) -> None:
        async def recv() -> str | None:
            try:
                message = await ws.recv()
            except ConnectionClosed:
                return None
            return message if isinstance(message, str) else message.decode("utf-8", "replace")

        async def close() -> None:
            await ws.close()

        try:
            await self._session(f"ws {ws.remote_address}", ws.send, recv, close)
        except ConnectionClosed:
            log.info("local API websocket client gone")

    async def _session(
        self,
        name: str,
        send: Callable[[str], Awaitable[None]],
        recv: Callable[[], Awaitable[str | None]],
        close: Callable[[], Awaitable[None]],
    ) -> None:
        try:
            first = await asyncio.wait_for(recv(), HELLO_TIMEOUT)
        except TimeoutError:
            first = None
        hello = _parse(first)
        token = hello.get("token") if hello and hello.get("op") == "hello" else None
        if not isinstance(token, str) or not hmac.compare_digest(
            token.encode(), self._token.encode()
        ):
            log.warning("local API: %s refused (no or wrong token)", name)
            await send(json.dumps({"type": "error", "error": "unauthorized"}))
            return
        client = _Client(name, send, close)
        await send(json.dumps({"type": "hello", "status": self._full_status()}, ensure_ascii=False))
        self._clients.add(client)
        pump = asyncio.ensure_future(client.pump())
        try:
            while (text := await recv()) is not None:
                reply = await self._request(_parse(text))
                client.offer(json.dumps(reply, ensure_ascii=False))
        finally:
            self._clients.discard(client)
            if client.queue.full():
                pump.cancel()
            else:
                client.queue.put_nowait(None)  # the pump sends what is queued, then ends
            with contextlib.suppress(asyncio.CancelledError, ConnectionError, ConnectionClosed):
                await pump

    def _full_status(self) -> dict[str, Any]:
        return {**self._status(), "station": self.station.status()}

    async def _request(self, message: dict[str, Any] | None) -> dict[str, Any]:
        if message is None:
            return {"type": "error", "error": "not a JSON object"}
        reply: dict[str, Any] = {"request_id": message.get("request_id")}
        try:
            records = await asyncio.to_thread(self._apply, message)
        except (StationError, ValidationError, ValueError) as err:
            return {**reply, "type": "error", "error": str(err)}
        except JournalError as err:
            return {**reply, "type": "error", "error": f"not recorded: {err}"}
        if records is None:
            return {**reply, "type": "status", "status": self._full_status()}
        return {**reply, "type": "ok", "records": records}

    def _apply(self, message: dict[str, Any]) -> list[dict[str, Any]] | None:
        """Carry out one request (in a worker thread: journaling blocks)."""
        op = message.get("op")
        station = self.station
        if op == "status":
            return None
        if op == "set_operation":
            return [station.set_operation(str(message.get("operation")), origin="local_api")]
        if op == "set_bill":
            return station.set_bill(str(message.get("bill")), origin="local_api")
        if op == "end_bill":
            return station.end_bill(origin="local_api")
        if op == "set_operator":
            operator = message.get("operator")
            return [station.set_operator(str(operator) if operator else None, origin="local_api")]
        if op == "manual_entry":
            entry = EntryRequest.model_validate(message.get("entry"))
            return [station.manual_entry(entry, origin="local_api")]
        if op == "manifest":
            station.load_manifest(Manifest.model_validate(message.get("manifest")))
            return []
        raise StationError(f"unknown op {op!r}")


def _parse(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
