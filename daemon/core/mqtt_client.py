"""The one way scanfleet makes and drives a paho-mqtt client.

Every MQTT connection of the daemon (publisher, control channel, enrollment) and of the
fleet tools (enrollment service, ``fleet config``/``cmd``/``health``/``ls``, the
broker's admin socket, the fleet simulator, the hub's ingest) is built here:

* :func:`make_client`: a paho client for MQTT 5 or 3.1.1 that never reconnects by
  itself (``reconnect_on_failure=False``), with TLS through :func:`tls_context`, whose
  sockets close when their handshake fails (paho 2.2 leaves them to the garbage
  collector otherwise);
* :func:`open_client`: connect and wait for the CONNACK, naming why a broker refused
  (:class:`~scanfleet.daemon.core.errors.BrokerRefusedError` with a stable ``cause``); with
  protocol ``auto`` an MQTT 5 refusal falls back to 3.1.1;
* :func:`step`: one ``select``/read/write/tick on the caller's thread. paho runs no
  thread of its own anywhere in scanfleet (no ``loop_start``, no ``loop_forever``);
* :class:`Session`: a short-lived connection driven by :func:`step`, with SUBACK and
  PUBACK waits and the request/response helpers (:meth:`Session.exchange`,
  :meth:`Session.request`: response topic and correlation data under MQTT 5, a
  ``request_id`` and a response topic of its own under 3.1.1);
* :func:`reconnect_backoff`: the capped, jittered backoff of every reconnect loop (each
  caller owns its loop, and makes a fresh client for every attempt).

It depends on nothing of scanfleet but the error classes and the backoff, so the fleet
tools (``scanfleet.provisioning``) can use it without the rest of the daemon.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import select
import socket
import ssl
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from scanfleet.daemon.core.backoff import Backoff
from scanfleet.daemon.core.errors import BrokerConnectionError, BrokerRefusedError

log = logging.getLogger(__name__)

MqttVersion = Literal["5", "3.1.1"]
"""A protocol version one connection speaks (the same values as ``[broker] protocol``)."""
BrokerProtocol = Literal["auto", "5", "3.1.1"]
"""What a caller asks for: a version, or ``auto`` (5, falling back to 3.1.1)."""

PAHO_PROTOCOL = {"5": MQTTProtocolVersion.MQTTv5, "3.1.1": MQTTProtocolVersion.MQTTv311}

CONNACK_CAUSES = {
    0x84: "protocol_version",
    0x85: "client_id",
    0x86: "bad_credentials",
    0x87: "not_authorized",
    0x8A: "not_authorized",  # banned
    0x8C: "bad_credentials",  # bad authentication method
}
"""CONNACK reason codes (paho maps 3.1.1 return codes onto them) and what they mean."""
TRANSIENT_CONNACK = frozenset({0x88, 0x89, 0x97, 0x9F})
"""Server unavailable, busy, quota exceeded, connection rate: retrying is the answer."""

RECONNECT_INITIAL = 0.5
RECONNECT_MAXIMUM = 30.0
"""Default reconnect backoff of the fleet tools, in seconds (the publisher's cap is its
own setting, ``publisher.reconnect_max_s``)."""
SUBSCRIBE_CHUNK = 100
"""Topic filters per SUBSCRIBE packet (a fleet of thousands must not make one huge one)."""
REQUEST_ID_KEY = "request_id"
"""Under MQTT 3.1.1 a request carries its id in this key of its JSON body."""


# -- building a client -----------------------------------------------------------------------


@dataclass(frozen=True)
class TlsFiles:
    """Where a TLS connection's trust and identity come from.

    ``ca_file`` None verifies the broker against the system CAs; ``cert_file`` (and
    ``key_file``, when the key is not in the certificate file) is the client identity.
    """

    ca_file: str | Path | None = None
    cert_file: str | Path | None = None
    key_file: str | Path | None = None


class _ClosingSSLSocket(ssl.SSLSocket):
    """An SSL socket that closes itself when its handshake fails.

    paho 2.2 does not close the socket when ``do_handshake`` raises (a broker
    certificate from another CA, say), so every failed attempt would leave an open
    socket to the garbage collector.
    """

    def do_handshake(self, block: bool = False) -> None:
        """Handshake; on failure close the socket and re-raise."""
        try:
            super().do_handshake(block)
        except BaseException:
            self.close()
            raise


def tls_context(files: TlsFiles) -> ssl.SSLContext:
    """Verify the broker (host name and chain) against ``ca_file`` or the system CAs;
    present the client certificate when there is one."""
    context = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH, cafile=str(files.ca_file) if files.ca_file else None
    )
    if files.cert_file is not None:
        context.load_cert_chain(
            str(files.cert_file), str(files.key_file) if files.key_file else None
        )
    context.sslsocket_class = _ClosingSSLSocket
    return context


def make_client(
    version: MqttVersion,
    client_id: str,
    *,
    tls: TlsFiles | None = None,
    username: str | None = None,
    password: str | None = None,
    clean_session: bool = True,
    manual_ack: bool = False,
    transport: Literal["tcp", "unix"] = "tcp",
    userdata: Any = None,
) -> mqtt.Client:
    """A paho client for *version*, which never reconnects by itself.

    *tls* None is a plain connection. *clean_session* applies to 3.1.1 only (MQTT 5
    takes ``clean_start`` at connect). With *manual_ack* a received QoS 1 message is
    acknowledged only by ``client.ack``. ``transport="unix"`` connects to the socket
    path given as the host (mosquitto's admin socket).
    """
    extra: dict[str, Any] = {} if version == "5" else {"clean_session": clean_session}
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=PAHO_PROTOCOL[version],
        transport=transport,
        reconnect_on_failure=False,
        manual_ack=manual_ack,
        userdata=userdata,
        **extra,
    )
    if username is not None:
        client.username_pw_set(username, password)
    if tls is not None:
        client.tls_set_context(tls_context(tls))
    return client


def reconnect_backoff(maximum: float = RECONNECT_MAXIMUM) -> Backoff:
    """The backoff between reconnect attempts: from 0.5 s, doubling, capped, jittered."""
    return Backoff(initial=min(RECONNECT_INITIAL, maximum), maximum=maximum)


# -- connecting ------------------------------------------------------------------------------


def connack_error(code: int, name: str) -> BrokerConnectionError:
    """The error for a failed CONNACK: a refusal with its cause, or a transient failure."""
    if code in TRANSIENT_CONNACK:
        return BrokerConnectionError(f"connection refused for now: {name}", code)
    cause = CONNACK_CAUSES.get(code, "refused")
    return BrokerRefusedError(cause, f"connection refused: {name} (CONNACK 0x{code:02x})", code)


def closed_before_connack() -> BrokerRefusedError:
    """What an MQTT 5 CONNECT closed without any CONNACK means (RabbitMQ 3.10 does this)."""
    return BrokerRefusedError(
        "protocol_version",
        "the broker closed the connection without a CONNACK to an MQTT 5 CONNECT "
        "(a broker that speaks only MQTT 3.1.1 does this)",
    )


def versions_to_try(protocol: BrokerProtocol) -> list[MqttVersion]:
    """The protocol versions one connection attempt tries, in order."""
    return ["5", "3.1.1"] if protocol == "auto" else [protocol]


def connect_client(
    client: mqtt.Client,
    host: str,
    port: int,
    *,
    keepalive: int,
    clean_start: bool = True,
    properties: Properties | None = None,
) -> None:
    """``client.connect``, with DNS and TLS failures raised as :class:`BrokerRefusedError`.

    Other socket errors (connection refused, unreachable, timeouts) stay ``OSError``:
    the broker may simply be down, which retrying fixes.
    """
    try:
        if client.protocol == MQTTProtocolVersion.MQTTv5:
            client.connect(
                host, port, keepalive=keepalive, clean_start=clean_start, properties=properties
            )
        else:
            client.connect(host, port, keepalive=keepalive)
    except socket.gaierror as err:
        raise BrokerRefusedError("dns", f"cannot resolve {host!r}: {err.strerror}") from err
    except ssl.SSLError as err:
        detail = err.reason or str(err)
        if isinstance(err, ssl.SSLCertVerificationError) and err.verify_message:
            detail = f"{detail} ({err.verify_message})"
        raise BrokerRefusedError(
            "tls", f"TLS handshake with {host}:{port} failed: {detail}"
        ) from err
    no_delay(client.socket())


def no_delay(sock: Any) -> None:
    """Turn Nagle's algorithm off on *sock* (paho leaves it on).

    With it on, a small packet written while an earlier one is unacknowledged waits for
    that ACK: a scan published right after a state message, or while the previous
    batch's PUBACK is outstanding, would leave a round trip late (and up to the peer's
    delayed-ACK timer, 40 ms on Linux, when the peer has nothing to answer with).
    """
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):  # not TCP (a unix socket, a socket pair)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def open_client(
    make: Callable[[MqttVersion], mqtt.Client],
    host: str,
    port: int,
    *,
    protocol: BrokerProtocol = "auto",
    keepalive: int = 30,
    timeout: float = 10.0,
) -> mqtt.Client:
    """Connect a client built by *make* for a protocol version and wait for CONNACK.

    With ``auto`` an MQTT 5 refusal falls back to 3.1.1 (a fresh client). Returns the
    connected client; its ``on_connect`` is not called for this first CONNACK. Raises
    :class:`BrokerRefusedError` naming the cause, :class:`BrokerConnectionError` for
    a transient failure, or ``OSError`` when the broker is unreachable.
    """
    versions = versions_to_try(protocol)
    for version in versions:
        client = make(version)
        try:
            _await_connack(client, host, port, keepalive, timeout)
        except BrokerRefusedError as err:
            if err.cause != "protocol_version" or version == versions[-1]:
                raise
            log.info("broker %s:%d refuses MQTT %s; trying MQTT 3.1.1", host, port, version)
            continue
        return client
    raise AssertionError("unreachable: the last version raises or returns")


def _await_connack(
    client: mqtt.Client, host: str, port: int, keepalive: int, timeout: float
) -> None:
    answers: list[ReasonCode] = []
    previous = client.on_connect
    client.on_connect = lambda c, u, f, rc, p: answers.append(rc)
    try:
        connect_client(client, host, port, keepalive=keepalive)
        deadline = time.monotonic() + timeout
        while not answers:
            rc = step(client, 0.1)
            if answers:
                break
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                close_client(client)
                if client.protocol == MQTTProtocolVersion.MQTTv5:
                    raise closed_before_connack()
                raise BrokerConnectionError(f"connection lost: {mqtt.error_string(rc)}")
            if time.monotonic() > deadline:
                close_client(client)
                raise BrokerConnectionError("no CONNACK in time")
    finally:
        client.on_connect = previous
    if answers[0].is_failure:
        close_client(client)
        raise connack_error(answers[0].value, answers[0].getName())


def close_client(client: mqtt.Client) -> None:
    """Close the client's socket without a DISCONNECT (nothing left to say)."""
    sock = client.socket()
    if sock is not None:
        try:
            sock.close()
        except OSError as err:
            log.debug("closing the MQTT socket: %s", err)


# -- driving it ------------------------------------------------------------------------------


def step(
    client: mqtt.Client, timeout: float, wake_fd: socket.socket | None = None
) -> MQTTErrorCode:
    """Wait up to *timeout* for the client's socket (or *wake_fd*), then read, write, tick.

    The caller's own ``select`` loop instead of paho's ``loop()``, which would also
    create a wake-up socket pair that a later ``loop_start()`` overwrites unclosed.
    """
    sock = client.socket()
    if sock is None:
        return MQTTErrorCode.MQTT_ERR_NO_CONN
    # TLS may hold decrypted bytes that select() cannot see.
    pending = sock.pending() if isinstance(sock, ssl.SSLSocket) else 0
    rlist: list[Any] = [sock] if wake_fd is None else [sock, wake_fd]
    wlist: list[Any] = [sock] if client.want_write() else []
    readable, writable, _ = select.select(rlist, wlist, [], 0 if pending else timeout)
    if wake_fd is not None and wake_fd in readable:
        drain_wake(wake_fd)
    rc = MQTTErrorCode.MQTT_ERR_SUCCESS
    if sock in readable or pending:
        rc = client.loop_read()
    if rc == MQTTErrorCode.MQTT_ERR_SUCCESS and (sock in writable or client.want_write()):
        rc = client.loop_write()
    if rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
        rc = client.loop_misc()
    return rc


def drain_wake(wake_fd: socket.socket) -> None:
    """Empty a non-blocking wake-up socket."""
    try:
        while wake_fd.recv(4096):
            pass
    except BlockingIOError:
        pass


@dataclass(frozen=True)
class Message:
    """One received message."""

    topic: str
    payload: bytes
    properties: Properties | None
    """MQTT 5 properties (None under 3.1.1)."""


MessageHandler = Callable[["Session", Message], None]


class Session:
    """A connected client driven from the caller's thread (fleet tools, enrollment).

    Received messages are kept in :attr:`messages`, or handed to *on_message* (called
    inside :meth:`pump`) when one is given, for long-running sessions that must not
    accumulate them. Not thread-safe: one thread uses a session.
    """

    def __init__(self, client: mqtt.Client, on_message: MessageHandler | None = None) -> None:
        self.client = client
        self.mqtt5 = client.protocol == MQTTProtocolVersion.MQTTv5
        self.messages: list[Message] = []
        self._handler = on_message
        self._subacks = 0
        self._lost: str | None = None
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.on_disconnect = self._on_disconnect

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        message = Message(msg.topic, bytes(msg.payload), getattr(msg, "properties", None))
        if self._handler is not None:
            self._handler(self, message)
        else:
            self.messages.append(message)

    def _on_subscribe(self, *args: Any) -> None:
        self._subacks += 1

    def _on_disconnect(self, *args: Any) -> None:
        self._lost = self._lost or "disconnected"

    @property
    def connected(self) -> bool:
        """True until the connection is lost or closed."""
        return self._lost is None and self.client.is_connected()

    def pump(self, timeout: float) -> None:
        """Wait up to *timeout* for traffic and process it; raise when the connection is lost."""
        if self._lost is None:
            rc = step(self.client, timeout)
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                self._lost = mqtt.error_string(rc)
        if self._lost is not None:
            raise BrokerConnectionError(f"connection lost: {self._lost}")

    def wait(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Pump until *predicate* holds (True) or *timeout* seconds pass (False)."""
        deadline = time.monotonic() + timeout
        while not predicate():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.pump(min(left, 0.1))
        return True

    def subscribe(self, topics: str | Iterable[str], timeout: float = 10.0) -> None:
        """QoS 1 subscribe (at most :data:`SUBSCRIBE_CHUNK` filters a packet); wait for
        every SUBACK, raise ``TimeoutError`` when one does not come."""
        filters = [topics] if isinstance(topics, str) else list(topics)
        chunks = [filters[i : i + SUBSCRIBE_CHUNK] for i in range(0, len(filters), SUBSCRIBE_CHUNK)]
        expected = self._subacks + len(chunks)
        for chunk in chunks:
            result, _ = self.client.subscribe([(t, 1) for t in chunk])
            if result != MQTTErrorCode.MQTT_ERR_SUCCESS:
                raise BrokerConnectionError(f"subscribe failed: {mqtt.error_string(result)}")
        if not self.wait(lambda: self._subacks >= expected, timeout):
            raise TimeoutError(f"no SUBACK for {', '.join(filters[:3])}")

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        retain: bool = False,
        properties: Properties | None = None,
        timeout: float | None = 10.0,
    ) -> None:
        """QoS 1 publish; wait up to *timeout* for the PUBACK (None: do not wait).

        Under 3.1.1 *properties* are dropped (the protocol has none).
        """
        info = self.client.publish(
            topic, payload, qos=1, retain=retain, properties=properties if self.mqtt5 else None
        )
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise BrokerConnectionError(f"publish failed: {mqtt.error_string(info.rc)}", info.rc)
        if timeout is not None:
            self.wait(info.is_published, timeout)

    def exchange(
        self,
        topic: str,
        payload: bytes,
        response_topic: str,
        match: Callable[[Message], bool],
        timeout: float,
        *,
        properties: Properties | None = None,
        resend_every: float | None = None,
    ) -> Message | None:
        """Subscribe to *response_topic*, publish the request, wait for a reply.

        The reply is the first message on *response_topic* that *match* accepts; None
        when none comes within *timeout*. With *resend_every* the request is published
        again at that interval (a service that is restarting does not queue requests).
        """
        deadline = time.monotonic() + timeout
        self.subscribe(response_topic, timeout)
        seen = len(self.messages)

        def reply() -> Message | None:
            for message in self.messages[seen:]:
                if message.topic == response_topic and match(message):
                    return message
            return None

        while True:
            self.publish(topic, payload, properties=properties, timeout=None)
            sent_at = time.monotonic()
            until = deadline if resend_every is None else min(deadline, sent_at + resend_every)
            self.wait(lambda: reply() is not None, max(0.0, until - time.monotonic()))
            found = reply()
            if found is not None or time.monotonic() >= deadline:
                return found

    def request(self, topic: str, body: Mapping[str, Any], timeout: float) -> dict[str, Any] | None:
        """Send a JSON request to *topic* and return the JSON reply meant for it (or None).

        MQTT 5: the reply comes on ``{topic}/response`` with our correlation data.
        MQTT 3.1.1 (no properties): the body carries ``request_id`` and the reply comes
        on ``{topic}/response/{request_id}``. The daemon's control channel answers both.
        """
        correlation = secrets.token_bytes(8)
        properties: Properties | None = None
        if self.mqtt5:
            response_topic = f"{topic}/response"
            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            properties.ResponseTopic = response_topic
            properties.CorrelationData = correlation
        else:
            response_topic = f"{topic}/response/{correlation.hex()}"
            body = {**body, REQUEST_ID_KEY: correlation.hex()}

        def ours(message: Message) -> bool:
            if self.mqtt5:
                return getattr(message.properties, "CorrelationData", None) == correlation
            return True

        found = self.exchange(
            topic, json.dumps(body).encode(), response_topic, ours, timeout, properties=properties
        )
        if found is None:
            return None
        value: dict[str, Any] = json.loads(found.payload)
        return value

    def close(self, timeout: float = 2.0) -> None:
        """Clean DISCONNECT (the broker discards the will), then close the socket."""
        if self.client.socket() is not None and self._lost is None:
            self.client.disconnect()
            deadline = time.monotonic() + timeout
            while self.client.want_write() and time.monotonic() < deadline:
                if step(self.client, 0.05) != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    break
        close_client(self.client)
        self._lost = self._lost or "closed"


def open_session(
    host: str,
    port: int,
    *,
    client_id: str,
    protocol: BrokerProtocol = "auto",
    tls: TlsFiles | None = None,
    username: str | None = None,
    password: str | None = None,
    transport: Literal["tcp", "unix"] = "tcp",
    keepalive: int = 30,
    timeout: float = 10.0,
    on_message: MessageHandler | None = None,
) -> Session:
    """Connect (see :func:`open_client`) and return the :class:`Session`."""

    def make(version: MqttVersion) -> mqtt.Client:
        return make_client(
            version,
            client_id,
            tls=tls,
            username=username,
            password=password,
            transport=transport,
        )

    client = open_client(make, host, port, protocol=protocol, keepalive=keepalive, timeout=timeout)
    return Session(client, on_message)
