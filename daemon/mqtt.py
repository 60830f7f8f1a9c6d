"""The paho-mqtt adapter: one MQTT 5 connection driven from the caller's thread, and backoff.

paho runs no thread of its own here and never reconnects by itself
(``reconnect_on_failure=False``): the publisher's loop owns the socket through
``select`` and decides when and how often to reconnect (anchors-style §4).
A fresh :class:`Connection` is made for every attempt, so nothing paho keeps in
memory outlives a connection; the journal is what gets resent.
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

from scanfleet.daemon.config import BrokerConfig
from scanfleet.daemon.errors import BrokerConnectionError

log = logging.getLogger(__name__)

AckCallback = Callable[[int, int, str], None]
"""``(mid, reason code value, reason name)``, called from inside :meth:`Connection.pump`."""

MessageCallback = Callable[[str, bytes, Properties | None], None]
"""``(topic, payload, MQTT 5 properties)`` of a received message, called inside ``pump``."""


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
    """One MQTT 5 connection, QoS 1 publishes, acks reported through *on_ack*.

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
    ) -> None:
        self.broker = broker
        self._on_ack = on_ack
        self._on_message = on_message
        self._on_raw_message = on_raw_message
        # A consumer (the hub) resumes its persistent session and acknowledges a message
        # only after storing it; the daemon always starts clean and lets paho ack.
        self._clean_start = clean_start
        self._connect_properties = connect_properties
        self._connack: ReasonCode | None = None
        self._lost: str | None = None
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=MQTTProtocolVersion.MQTTv5,
            reconnect_on_failure=False,
            manual_ack=manual_ack,
        )
        # Must precede connect(); it also keeps paho from queueing behind our window.
        client.max_inflight_messages_set(inflight)
        if will is not None:
            client.will_set(will[0], will[1], qos=1, retain=True)
        if broker.username is not None:
            client.username_pw_set(broker.username, broker.password)
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
        """Connect and wait for a successful CONNACK; raise otherwise."""
        self._client.connect(
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
            self.pump(min(remaining, 0.5))
        if self._connack.is_failure:
            self.abort()
            raise BrokerConnectionError(
                f"connection refused: {self._connack.getName()}", self._connack.value
            )

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
        """Hand one QoS 1 message to paho; return its message id."""
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
        sock = self._client.socket()
        if sock is None or self._lost is not None:
            raise BrokerConnectionError(f"connection lost: {self._lost or 'socket closed'}")
        # TLS may hold decrypted bytes that select() cannot see.
        pending = sock.pending() if isinstance(sock, ssl.SSLSocket) else 0
        rlist: list[Any] = [sock] if wake_fd is None else [sock, wake_fd]
        wlist: list[Any] = [sock] if self._client.want_write() else []
        readable, writable, _ = select.select(rlist, wlist, [], 0 if pending else timeout)
        if wake_fd is not None and wake_fd in readable:
            drain_wake(wake_fd)
        rc = MQTTErrorCode.MQTT_ERR_SUCCESS
        if sock in readable or pending:
            rc = self._client.loop_read()
        if rc == MQTTErrorCode.MQTT_ERR_SUCCESS and (sock in writable or self._client.want_write()):
            rc = self._client.loop_write()
        if rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            rc = self._client.loop_misc()
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
