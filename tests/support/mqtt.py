"""A real MQTT subscriber for tests: collects messages from a real broker."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties


class Collector:
    """Subscribes (MQTT 5 or 3.1.1, QoS 1, persistent session) and keeps every message.

    paho reconnects by itself (its network thread), so the collector outlives a
    broker restart; with a persistent session the broker keeps what arrives meanwhile.
    """

    def __init__(
        self,
        host: str,
        port: int,
        topic: str,
        *,
        client_id: str = "test-collector",
        persistent: bool = True,
        protocol: str = "5",
    ) -> None:
        self.topic = topic
        self.messages: list[tuple[str, bytes, bool]] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        if protocol == "5":
            self.client = mqtt.Client(
                CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
            )
        else:
            # 3.1.1: a persistent session is clean_session=False (no expiry to set).
            self.client = mqtt.Client(
                CallbackAPIVersion.VERSION2,
                client_id=client_id,
                protocol=mqtt.MQTTv311,
                clean_session=not persistent,
            )
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        if protocol == "5":
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 3600 if persistent else 0
            self.client.connect(
                host, port, keepalive=30, clean_start=not persistent, properties=props
            )
        else:
            self.client.connect(host, port, keepalive=30)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise TimeoutError(f"no SUBACK for {topic}")

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any
    ) -> None:
        client.subscribe(self.topic, qos=1)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 30.0) -> bool:
        """Wait until *predicate* (called under the lock) is true."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.2))
            return True

    def scans(self) -> list[dict[str, Any]]:
        """Every scan record received in batch envelopes, in arrival order."""
        with self._cond:
            payloads = [p for t, p, _ in self.messages if t.endswith("/scans")]
        out: list[dict[str, Any]] = []
        for payload in payloads:
            out.extend(json.loads(payload)["scans"])
        return out

    def ordered(self) -> list[dict[str, Any]]:
        """The in-order stream as a consumer rebuilds it: the last copy of each ``id``.

        A live scan may arrive early (the live lane) and again in order, and a resend
        repeats records; the last copy of every id is the one of the ordered stream, so
        these must come in ascending seq.
        """
        last: dict[str, int] = {}
        scans = self.scans()
        for index, scan in enumerate(scans):
            last[scan["id"]] = index
        return [scans[i] for i in sorted(last.values())]

    def unique_ids(self) -> set[str]:
        """Every record id received at least once."""
        return {scan["id"] for scan in self.scans()}

    def last_json(self, suffix: str) -> dict[str, Any] | None:
        """The newest message whose topic ends with *suffix*, parsed."""
        with self._cond:
            for topic, payload, _ in reversed(self.messages):
                if topic.endswith(suffix):
                    result: dict[str, Any] = json.loads(payload)
                    return result
        return None

    def close(self) -> None:
        """Disconnect."""
        self.client.disconnect()
        self.client.loop_stop()
