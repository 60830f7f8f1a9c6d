"""The control channel: pushed config and commands over the publisher's MQTT connection.

The device keeps one MQTT connection, owned by the publisher; this module plugs into
it (:class:`~scanfleet.daemon.publish.publisher.ControlLink`). It subscribes to the retained
``scanfleet/v1/{site}/{device}/config`` and to ``…/cmd/+``. Received messages are
queued and handled on the channel's own thread (a resend or a certificate renewal
must not stall publishing); replies are queued back and published by the publisher.

Commands follow MQTT 5 request/response: the reply goes to the request's
``ResponseTopic`` when that is the device's own ``cmd/{name}/response`` (the only
response topic the broker lets it write), else to that topic anyway, and carries the
request's ``CorrelationData``. Every request gets exactly one reply: unknown commands,
malformed payloads, rate-limited and failed ones an error reply.

MQTT 3.1.1 has no correlation data: a request then carries ``"request_id"`` in its
JSON body (never passed to the command) and the reply goes to a response topic of
that request alone, ``cmd/{name}/response/{request_id}``, with the id in its body.
"""

from __future__ import annotations

import collections
import json
import logging
import queue
import re
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import BaseModel, ConfigDict, Field

from scanfleet.daemon.core.errors import ScanfleetError
from scanfleet.daemon.core.mqtt_client import REQUEST_ID_KEY
from scanfleet.daemon.publish.publisher import Outgoing

log = logging.getLogger(__name__)

RESPONSE_SCHEMA = "scanfleet.cmd-response/1"
MAX_REQUEST_BYTES = 64 * 1024
QUEUE_SIZE = 64
RATE_BURST = 10
"""Requests of one command accepted back to back …"""
RATE_PER_MINUTE = 30.0
"""… then refilled at this rate (a misbehaving fleet tool cannot keep the device busy)."""

REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

CommandHandler = Callable[[str, dict[str, Any]], dict[str, Any]]
"""``(name, args) → result``; raises :class:`CommandError` for a refusal."""


def device_prefix(site: str, device: str) -> str:
    """``scanfleet/v1/{site}/{device}``."""
    return f"scanfleet/v1/{site}/{device}"


class CommandError(ScanfleetError):
    """A command that cannot be carried out; ``code`` is machine-readable."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class ErrorInfo(BaseModel):
    """Why a command failed."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    code: str = Field(
        description="unknown_command, bad_request, rate_limited, busy, failed, or a "
        "command-specific code."
    )
    message: str


class CommandResponse(BaseModel):
    """The reply on ``scanfleet/v1/{site}/{device}/cmd/{name}/response``."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    schema_: Literal["scanfleet.cmd-response/1"] = Field(
        default="scanfleet.cmd-response/1", alias="schema"
    )
    device: str
    command: str
    ok: bool
    result: dict[str, Any] | None = None
    error: ErrorInfo | None = None
    time: datetime
    request_id: str | None = Field(
        default=None,
        description="The request's request_id (MQTT 3.1.1 requests, which have no "
        "correlation data); the reply then goes to cmd/{name}/response/{request_id}.",
    )


class RateLimiter:
    """A token bucket per command name."""

    def __init__(self, burst: int = RATE_BURST, per_minute: float = RATE_PER_MINUTE) -> None:
        self.burst = burst
        self.rate = per_minute / 60.0
        self._buckets: dict[str, tuple[float, float]] = {}

    def allow(self, name: str, now: float | None = None) -> bool:
        """Take one token for *name*; False when none is left."""
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.get(name, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        if tokens < 1.0:
            self._buckets[name] = (tokens, now)
            return False
        self._buckets[name] = (tokens - 1.0, now)
        return True


def parse_args(payload: bytes) -> dict[str, Any]:
    """A request body: empty or a JSON object; raise CommandError otherwise."""
    if len(payload) > MAX_REQUEST_BYTES:
        raise CommandError("bad_request", f"request larger than {MAX_REQUEST_BYTES} bytes")
    if not payload.strip():
        return {}
    try:
        args = json.loads(payload)
    except (ValueError, RecursionError) as err:
        raise CommandError("bad_request", f"not JSON: {err}") from err
    if not isinstance(args, dict):
        raise CommandError("bad_request", "the request must be a JSON object")
    return args


def take_request_id(args: dict[str, Any]) -> str | None:
    """Remove and return the request's ``request_id`` (MQTT 3.1.1 requests)."""
    value = args.pop(REQUEST_ID_KEY, None)
    if value is None:
        return None
    if not isinstance(value, str) or not REQUEST_ID_RE.match(value):
        raise CommandError("bad_request", "request_id must be 1-64 of A-Z a-z 0-9 _ -")
    return value


class ControlChannel:
    """Config and command topics of one device, on the publisher's connection.

    Args:
        site, device: the device's identity (topics).
        commands: runs a command (see :data:`CommandHandler`).
        on_config: handles a message from the ``config`` topic (may be empty).
        wake: makes the publisher look at the outbox now.
        on_connection: told when the broker connection comes up or goes away.
    """

    def __init__(
        self,
        site: str,
        device: str,
        *,
        commands: CommandHandler,
        on_config: Callable[[bytes], None],
        wake: Callable[[], None],
        on_connection: Callable[[bool], None] | None = None,
    ) -> None:
        self.device = device
        self.prefix = device_prefix(site, device)
        self._commands = commands
        self._on_config = on_config
        self._wake = wake
        self._on_connection = on_connection
        self._inbox: queue.Queue[tuple[str, bytes, Properties | None] | None] = queue.Queue(
            QUEUE_SIZE
        )
        self._outbox: collections.deque[Outgoing] = collections.deque()
        self._out_lock = threading.Lock()
        self._limiter = RateLimiter()
        self._thread: threading.Thread | None = None
        self.connected = False
        self.handled = 0

    # -- ControlLink (publisher thread) -----------------------------------------------------

    def topics(self) -> list[str]:
        """The retained desired config and every command."""
        return [f"{self.prefix}/config", f"{self.prefix}/cmd/+"]

    def deliver(self, topic: str, payload: bytes, properties: Properties | None) -> None:
        """Queue a received message; a full queue answers ``busy`` at once."""
        try:
            self._inbox.put_nowait((topic, payload, properties))
        except queue.Full:
            name = self._command_name(topic)
            if name is not None:
                self._reply(name, properties, None, CommandError("busy", "too many requests"))
            else:
                log.warning("control queue full: dropping a message on %s", topic)

    def take_outgoing(self) -> list[Outgoing]:
        """Everything waiting to be published."""
        with self._out_lock:
            out = list(self._outbox)
            self._outbox.clear()
        return out

    def connection_changed(self, connected: bool) -> None:
        """Remember the connection state and pass it on (probation watches it)."""
        self.connected = connected
        if self._on_connection is not None:
            self._on_connection(connected)

    # -- the channel thread -----------------------------------------------------------------

    def start(self) -> None:
        """Start handling received messages."""
        self._thread = threading.Thread(target=self._run, name="control", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop after the message being handled."""
        if self._thread is None:
            return
        try:
            self._inbox.put(None, timeout=timeout)
        except queue.Full:
            log.warning("control queue full at stop")
        self._thread.join(timeout)

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        retain: bool = False,
        properties: Properties | None = None,
    ) -> None:
        """Queue a message for the publisher (dropped if the connection is down)."""
        with self._out_lock:
            self._outbox.append((topic, payload, retain, properties))
        self._wake()

    def _run(self) -> None:
        while True:
            item = self._inbox.get()
            if item is None:
                return
            topic, payload, properties = item
            try:
                self.handle(topic, payload, properties)
            except Exception:
                # The channel must outlive any one message; handle() answers errors
                # itself, so this is a bug worth a traceback, not a reason to stop.
                log.exception("control message on %s", topic)
            self.handled += 1

    def _command_name(self, topic: str) -> str | None:
        head = f"{self.prefix}/cmd/"
        if topic.startswith(head) and "/" not in topic[len(head) :]:
            return topic[len(head) :]
        return None

    def handle(self, topic: str, payload: bytes, properties: Properties | None) -> None:
        """Handle one message (called on the channel thread, or directly by tests)."""
        if topic == f"{self.prefix}/config":
            self._on_config(payload)
            return
        name = self._command_name(topic)
        if name is None:
            log.warning("control message on an unexpected topic %s", topic)
            return
        result: dict[str, Any] | None = None
        error: CommandError | None = None
        request_id: str | None = None
        try:
            args = parse_args(payload)
            request_id = take_request_id(args)
            self._check_rate(name)
            result = self._commands(name, args)
        except CommandError as err:
            error = err
        except Exception as err:
            # A command that fails unexpectedly still answers (and the daemon runs on).
            log.exception("command %s failed", name)
            error = CommandError("failed", f"{type(err).__name__}: {err}")
        self._reply(name, properties, result, error, request_id)

    def _check_rate(self, name: str) -> None:
        if not self._limiter.allow(name):
            raise CommandError("rate_limited", f"more than {RATE_BURST} {name!r} requests")

    def response(
        self,
        name: str,
        result: dict[str, Any] | None,
        error: CommandError | None,
        request_id: str | None = None,
    ) -> CommandResponse:
        """The reply document."""
        return CommandResponse(
            device=self.device,
            command=name,
            ok=error is None,
            result=result if error is None else None,
            error=ErrorInfo(code=error.code, message=error.message) if error else None,
            time=datetime.now(UTC),
            request_id=request_id,
        )

    def _reply(
        self,
        name: str,
        request: Properties | None,
        result: dict[str, Any] | None,
        error: CommandError | None,
        request_id: str | None = None,
    ) -> None:
        topic = f"{self.prefix}/cmd/{name}/response"
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        correlation = getattr(request, "CorrelationData", None) if request else None
        if isinstance(correlation, bytes | bytearray):
            props.CorrelationData = bytes(correlation)
        elif request_id is not None:
            topic = f"{topic}/{request_id}"
        body = self.response(name, result, error, request_id).model_dump_json(by_alias=True)
        self.publish(topic, body.encode(), properties=props)
