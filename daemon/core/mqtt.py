"""The publisher's (and the hub's) MQTT 5 or 3.1.1 connection, driven from the caller's thread.

Built on :mod:`scanfleet.daemon.core.mqtt_client`, the one client factory (TLS, the
socket-leak fix, CONNACK causes, the ``select`` step); this module adds what a
long-lived publishing connection needs: the broker configuration, the will, the
in-flight window and acks reported by message id.

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
import socket
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from scanfleet.daemon.core.config import BrokerConfig, MqttVersion
from scanfleet.daemon.core.errors import BrokerConnectionError
from scanfleet.daemon.core.mqtt_client import (
    TlsFiles,
    close_client,
    closed_before_connack,
    connack_error,
    connect_client,
    make_client,
    step,
)

log = logging.getLogger(__name__)

AckCallback = Callable[[int, int, str], None]
"""``(mid, reason code value, reason name)``, called from inside :meth:`Connection.pump`."""

MessageCallback = Callable[[str, bytes, Properties | None], None]
"""``(topic, payload, MQTT 5 properties)`` of a received message, called inside ``pump``."""


def broker_tls(broker: BrokerConfig) -> TlsFiles | None:
    """The TLS files of *broker* (None for a plain connection)."""
    if not broker.tls:
        return None
    return TlsFiles(broker.ca_file, broker.cert_file, broker.key_file)


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
        username, password = broker.credentials()
        client = make_client(
            protocol,
            client_id,
            tls=broker_tls(broker),
            username=username,
            password=password,
            clean_session=clean_start,
            manual_ack=manual_ack,
        )
        # Must precede connect(); it also keeps paho from queueing behind our window.
        client.max_inflight_messages_set(inflight)
        if will is not None:
            client.will_set(will[0], will[1], qos=1, retain=True)
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
        close_client(self._client)
        self._lost = self._lost or "closed"
