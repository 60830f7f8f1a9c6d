"""The paho-mqtt adapter: one MQTT 5 or 3.1.1 connection driven from the caller's thread.

paho runs no thread of its own here and never reconnects by itself
(``reconnect_on_failure=False``): the publisher's loop owns the socket through
``select`` and decides when and how often to reconnect (anchors-style §4).
A fresh :class:`Connection` is made for every attempt, so nothing paho keeps in
memory outlives a connection; the journal is what gets resent.

A failed connect says why (:class:`~scanfleet.daemon.core.errors.BrokerRefusedError` with
a stable ``cause``): DNS, TLS, an unsupported protocol version, bad credentials or
not authorized, so the publisher can raise ``broker_refused`` at the first attempt
instead of waiting for ``broker_unreachable``.
"""

from __future__ import annotations

import logging
import select
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from scanfleet.daemon.core.config import BrokerConfig, BrokerProtocol, MqttVersion
from scanfleet.daemon.core.errors import BrokerConnectionError, BrokerRefusedError

log = logging.getLogger(__name__)

AckCallback = Callable[[int, int, str], None]
"""``(mid, reason code value, reason name)``, called from inside :meth:`Connection.pump`."""

MessageCallback = Callable[[str, bytes, Properties | None], None]
"""``(topic, payload, MQTT 5 properties)`` of a received message, called inside ``pump``."""

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


def open_client(
    make: Callable[[MqttVersion], mqtt.Client],
    host: str,
    port: int,
    *,
    protocol: BrokerProtocol = "auto",
    keepalive: int = 30,
    timeout: float = 10.0,
) -> mqtt.Client:
    """Connect a short-lived client (fleet CLI, enrollment, service) and wait for CONNACK.

    *make* builds a fresh client for a protocol version (TLS, callbacks set). With
    ``auto`` an MQTT 5 refusal falls back to 3.1.1. Returns the connected client,
    whose loop the caller then runs (``loop`` or ``loop_start``); its ``on_connect``
    is not called for this first CONNACK. Raises
    :class:`BrokerRefusedError` naming the cause, or ``OSError`` when unreachable.
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
                client.disconnect()
                if client.protocol == MQTTProtocolVersion.MQTTv5:
                    raise closed_before_connack()
                raise BrokerConnectionError(f"connection lost: {mqtt.error_string(rc)}")
            if time.monotonic() > deadline:
                client.disconnect()
                raise BrokerConnectionError("no CONNACK in time")
    finally:
        client.on_connect = previous
    if answers[0].is_failure:
        client.disconnect()
        raise connack_error(answers[0].value, answers[0].getName())


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


def paho_client(
    client_id: str, protocol: MqttVersion, *, clean_session: bool = True, manual_ack: bool = False
) -> mqtt.Client:
    """A paho client for *protocol*, which never reconnects by itself.

    *clean_session* applies to 3.1.1 only (MQTT 5 takes ``clean_start`` at connect).
    With *manual_ack* a received QoS 1 message is acknowledged only by ``client.ack``.
    """
    extra: dict[str, Any] = {} if protocol == "5" else {"clean_session": clean_session}
    return mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=PAHO_PROTOCOL[protocol],
        reconnect_on_failure=False,
        manual_ack=manual_ack,
        **extra,
    )


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


def tls_context(broker: BrokerConfig) -> ssl.SSLContext:
    """Verify the broker against ``ca_file`` (or the system CAs); present the client cert."""
    context = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH, cafile=str(broker.ca_file) if broker.ca_file else None
    )
    if broker.cert_file is not None:
        context.load_cert_chain(
            str(broker.cert_file), str(broker.key_file) if broker.key_file else None
        )
    context.sslsocket_class = _ClosingSSLSocket
    return context


class Connection:
    """One MQTT connection (version 5 or 3.1.1), QoS 1 publishes, acks through *on_ack*.

    Under 3.1.1 a PUBACK carries no reason code: every ack reports success, and
    properties (correlation data) are neither sent nor received.

    Not thread-safe: every method is called from the publisher's thread, and the
    callbacks run inside :meth:`pump` on that same thread.
    """

    def __init__(
        self,
        broker: BrokerConfig,
        client_id: str,
        *,
        inflight: int,
        will: tuple[str, bytes] | None,
        on_ack: AckCallback,
        on_message: MessageCallback | None = None,
        on_raw_message: Callable[[mqtt.MQTTMessage], None] | None = None,
        clean_start: bool = True,
        connect_properties: Properties | None = None,
        manual_ack: bool = False,
        protocol: MqttVersion = "5",
    ) -> None:
        self.broker = broker
        self.protocol: MqttVersion = protocol
        self._on_ack = on_ack
        self._on_message = on_message
        self._on_raw_message = on_raw_message
        # A consumer (the hub) resumes its persistent session and acknowledges a message
        # only after storing it; the daemon always starts clean and lets paho ack.
        self._clean_start = clean_start
        self._connect_properties = connect_properties
        self._connack: ReasonCode | None = None
        self._lost: str | None = None
        client = paho_client(client_id, protocol, clean_session=clean_start, manual_ack=manual_ack)
        # Must precede connect(); it also keeps paho from queueing behind our window.
        client.max_inflight_messages_set(inflight)
        if will is not None:
            client.will_set(will[0], will[1], qos=1, retain=True)
        username, password = broker.credentials()
        if username is not None:
            client.username_pw_set(username, password)
        if broker.tls:
            client.tls_set_context(tls_context(broker))
        client.on_connect = self._handle_connect
        client.on_disconnect = self._handle_disconnect
        client.on_publish = self._handle_publish
        client.on_message = self._handle_message
        self._client = client

    # -- paho callbacks -------------------------------------------------------------------

    def _handle_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, rc: ReasonCode, props: Any
    ) -> None:
        self._connack = rc

    def _handle_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, rc: ReasonCode, props: Any
    ) -> None:
        self._lost = str(rc)

    def _handle_publish(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        rc: ReasonCode,
        props: Properties | None,
    ) -> None:
        self._on_ack(mid, rc.value, rc.getName())

    def _handle_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if self._on_raw_message is not None:
            self._on_raw_message(msg)
        if self._on_message is not None:
            props = getattr(msg, "properties", None)
            self._on_message(msg.topic, bytes(msg.payload), props)

    # -- the connection -------------------------------------------------------------------

    def open(self, timeout: float) -> None:
        """Connect and wait for a successful CONNACK; raise otherwise.

        Raises :class:`BrokerRefusedError` naming the cause for DNS and TLS failures,
        a refusing CONNACK, and an MQTT 5 CONNECT the broker closed without any CONNACK
        (what RabbitMQ 3.10 does: it speaks only 3.1.1).
        """
        connect_client(
            self._client,
            self.broker.host,
            self.broker.port,
            keepalive=self.broker.keepalive,
            clean_start=self._clean_start,
            properties=self._connect_properties,
        )
        deadline = time.monotonic() + timeout
        while self._connack is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.abort()
                raise BrokerConnectionError("no CONNACK in time")
            try:
                self.pump(min(remaining, 0.5))
            except BrokerConnectionError:
                # paho reports a refusing CONNACK as a lost connection in the same
                # read: the CONNACK, when there was one, is what says why.
                if self.connack_received:
                    break
                self.abort()
                if self.protocol == "5":
                    raise closed_before_connack() from None
                raise
        connack = self._connack
        if connack is not None and connack.is_failure:  # the loop ends only with one
            self.abort()
            raise connack_error(connack.value, connack.getName())

    @property
    def connack_received(self) -> bool:
        """True once the broker answered the CONNECT (success or refusal)."""
        return self._connack is not None

    @property
    def connected(self) -> bool:
        """True between a successful CONNACK and the loss of the connection."""
        return self._lost is None and self._client.is_connected()

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        retain: bool = False,
        properties: Properties | None = None,
    ) -> int:
        """Hand one QoS 1 message to paho; return its message id.

        Under 3.1.1 *properties* are dropped (the protocol has none).
        """
        if self.protocol != "5":
            properties = None
        info = self._client.publish(topic, payload, qos=1, retain=retain, properties=properties)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._lost = self._lost or mqtt.error_string(info.rc)
            raise BrokerConnectionError(f"publish failed: {mqtt.error_string(info.rc)}", info.rc)
        return info.mid

    def ack(self, mid: int, qos: int) -> None:
        """Acknowledge a received message (only with ``manual_ack``)."""
        rc = self._client.ack(mid, qos)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._lost = self._lost or mqtt.error_string(rc)
            raise BrokerConnectionError(f"ack failed: {mqtt.error_string(rc)}", rc)

    def subscribe(self, topics: list[str]) -> None:
        """Subscribe to *topics* at QoS 1 (the SUBACK is processed by :meth:`pump`)."""
        if topics:
            result, _ = self._client.subscribe([(t, 1) for t in topics])
            if result != MQTTErrorCode.MQTT_ERR_SUCCESS:
                raise BrokerConnectionError(f"subscribe failed: {mqtt.error_string(result)}")

    def pump(self, timeout: float, wake_fd: socket.socket | None = None) -> None:
        """Wait up to *timeout* for socket activity (or *wake_fd*) and process it."""
        if self._client.socket() is None or self._lost is not None:
            raise BrokerConnectionError(f"connection lost: {self._lost or 'socket closed'}")
        rc = step(self._client, timeout, wake_fd)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._lost = self._lost or mqtt.error_string(rc)
        if self._lost is not None:
            raise BrokerConnectionError(f"connection lost: {self._lost}")

    def disconnect(self, timeout: float = 2.0) -> None:
        """Clean DISCONNECT (the broker discards the will), then close the socket."""
        if self._client.socket() is not None and self._lost is None:
            self._client.disconnect()
            deadline = time.monotonic() + timeout
            while self._client.want_write() and time.monotonic() < deadline:
                try:
                    self.pump(0.05)
                except BrokerConnectionError:
                    break
        self.abort()

    def abort(self) -> None:
        """Drop the socket without a DISCONNECT (the broker will publish the will)."""
        sock = self._client.socket()
        if sock is not None:
            try:
                sock.close()
            except OSError as err:
                log.debug("closing the MQTT socket: %s", err)
        self._lost = self._lost or "closed"


def drain_wake(wake_fd: socket.socket) -> None:
    """Empty a non-blocking wake-up socket."""
    try:
        while wake_fd.recv(4096):
            pass
    except BlockingIOError:
        pass
